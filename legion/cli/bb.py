"""`legion bb`: the blackboard, through the running host's control socket."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

from legion.cli.common import (
    WIDE_HELP,
    State,
    cell,
    echo,
    emit_json,
    fail,
    fmt_time,
    host_errors,
    print_table,
    seconds_parser,
    subapp,
    table,
)
from legion.cli.inputs import InputError, parse_json_value
from legion.wire.fields import TTL_MAX_S

if TYPE_CHECKING:
    from legion.api.client import ControlClient

app = subapp("Read and write the blackboard (needs a running host).")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _client() -> ControlClient:

    return State.client()


@app.command("put")
def put(
    key: Annotated[str, typer.Argument(help="Key, e.g. shared/plan or teams/red/status.")],
    value: Annotated[
        str,
        typer.Argument(
            help='A JSON value: 42, "text", {"a": 1}, [1, 2]. A negative number goes after '
            "--: `legion bb put -- KEY -1`."
        ),
    ],
    ttl: Annotated[
        float | None,
        typer.Option(
            "--ttl",
            parser=seconds_parser("--ttl", 0.001, TTL_MAX_S),
            metavar="SECONDS",
            help=f"Expire after this many seconds (0.001 to {TTL_MAX_S}).",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write KEY = JSON value (bumps its version)."""
    try:
        parsed = parse_json_value(value)
    except InputError as exc:
        fail(f"VALUE: {exc}", 2)
    with host_errors(), _client() as client:
        entry = client.bb_put(key, parsed, ttl)
    if as_json:
        emit_json(entry.model_dump())
    else:
        echo(f"{entry.key} = version {entry.version}")


@app.command("get")
def get(key: str, as_json: JsonOpt = False) -> None:
    """Print the value of KEY (exit 1 when absent or expired)."""
    with host_errors(), _client() as client:
        entry = client.bb_get(key)
    if as_json:
        emit_json(entry.model_dump())
    else:
        # Readable (non-ASCII kept), but any control or invisible character an agent wrote
        # is shown as an escape; `--json` gives the exact value.
        echo(json.dumps(entry.value, indent=2, ensure_ascii=False), multiline=True)


@app.command("ls")
def ls(
    prefix: Annotated[
        str, typer.Argument(metavar="[PREFIX]", help="Only keys starting with this.")
    ] = "",
    as_json: JsonOpt = False,
    wide: Annotated[bool, typer.Option("--wide", help=WIDE_HELP)] = False,
) -> None:
    """List live keys (with version, writer and expiry)."""
    with host_errors(), _client() as client:
        listing = client.bb_list(prefix)
    entries = listing.entries
    if listing.truncated:  # on stderr, so --json stays the list it always was
        echo(
            f"only the first {len(entries):,} keys are shown (a listing is capped); "
            "list a longer prefix to see the rest",
            err=True,
        )
    if as_json:
        emit_json([e.model_dump() for e in entries])
        return
    if not entries:
        echo(f"no keys{' under ' + repr(prefix) if prefix else ''}", err=True)
        return
    out = table("key", "version", "writer", "updated", "expires")
    for e in entries:
        out.add_row(
            cell(e.key),
            str(e.version),
            cell(e.writer),
            fmt_time(e.updated_at),
            fmt_time(e.expires_at),
        )
    print_table(out, wide)


@app.command("rm")
def rm(key: str, as_json: JsonOpt = False) -> None:
    """Delete KEY."""
    with host_errors(), _client() as client:
        result = client.bb_delete(key)
    if as_json:
        emit_json(result.model_dump())
    elif result.deleted:
        echo(f"deleted {key}")
    else:
        fail(f"no blackboard key {key!r}", 1)
