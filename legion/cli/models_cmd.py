"""`legion models ls`: the model aliases, with provider, price, credential and cooldown."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from legion.cli.common import (
    WIDE_HELP,
    State,
    cell,
    emit_json,
    fail,
    print_table,
    subapp,
    table,
)

app = subapp("The model aliases: provider, price, credential and cooldown of each.")


def _rows() -> tuple[list[dict[str, Any]], bool]:
    """The rows and whether they come from a running host (with cooldowns)."""
    from legion.api.reach import HostError, HostNotRunning, get_json

    paths = State.paths()
    try:
        return list(get_json(paths, "/v1/llm/models")["models"]), True
    except HostNotRunning:
        pass
    except HostError as exc:
        fail(f"{exc} [{exc.code}, HTTP {exc.status}]", 1)
    from legion.config import load_config
    from legion.errors import ConfigError
    from legion.gateway.llm.catalog import model_rows, stored_credentials

    try:
        config = load_config(paths.config)
    except ConfigError as exc:
        fail(exc.render(), 2)
    stored, problem = stored_credentials(paths.vault_db)
    if problem:
        typer.echo(f"legion: {problem}", err=True)
    return [r.as_dict() for r in model_rows(config, stored, problem)], False


def _price(row: dict[str, Any]) -> str:
    if row["input_per_mtok"] is None:
        return "unknown (refused)"
    text = f"${row['input_per_mtok']:g} / ${row['output_per_mtok']:g}"
    return text + ("" if row["price_source"] == "litellm" else " (config)")


def _cooldown(row: dict[str, Any], live: bool) -> str:
    if not live:
        return "-"
    if row["cooldown_s"]:
        return f"{row['cooldown_s']:.0f}s ({row['last_failure']})"
    return "ready" if not row["failures"] else f"ready ({row['failures']} failures)"


@app.command("ls")
def ls(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    wide: Annotated[bool, typer.Option("--wide", help=WIDE_HELP)] = False,
) -> None:
    """List the model aliases: provider, price per million tokens, credential, cooldown.

    Credentials show as stored or missing, never their values. Cooldowns come from the
    running host; without one the list is read from legion.toml and vault.db.
    """
    rows, live = _rows()
    if as_json:
        emit_json({"host_running": live, "models": rows})
        return
    if not rows:
        typer.echo("no models defined: add [llm.models.<alias>] to legion.toml", err=True)
        return
    out = table(
        "alias", "provider", "model", "price in/out per Mtok", "credential", "cooldown", "used by"
    )
    for row in rows:
        credential = (
            "(none needed)"
            if row["credential"] is None
            else f"{row['credential']}: {row['credential_state']}"
        )
        out.add_row(
            cell(row["alias"]),
            cell(row["provider"]),
            cell(row["model"] + (f" @ {row['api_base']}" if row["api_base"] else "")),
            _price(row),
            cell(credential),
            _cooldown(row, live),
            cell(", ".join(row["used_by"]) or "-"),
        )
    print_table(out, wide)
    if not live:
        typer.echo("legion: no host is running: cooldowns are not shown", err=True)
    missing = sorted(
        {r["credential"] for r in rows if r["credential_state"] == "missing" and r["used_by"]}
    )
    for name in missing:
        typer.echo(
            f"legion: credential {name!r} is missing: `legion vault set {name} --tier system`",
            err=True,
        )
