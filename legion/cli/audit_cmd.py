"""`legion audit`: list and verify the hash-chained audit log (reads host.db directly)."""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer

from legion.cli.common import (
    SINCE_HELP,
    WIDE_HELP,
    State,
    cell,
    emit_json,
    fail,
    fmt_time,
    print_table,
    since_parser,
    table,
)


def audit(
    agent: Annotated[
        str | None,
        typer.Option(
            "--agent",
            metavar="NAME",
            help="Only records made by this actor: an agent (also a removed one: the log "
            "keeps its records), operator or host. A name found nowhere is an error.",
        ),
    ] = None,
    since: Annotated[
        float | None,
        typer.Option(
            "--since",
            parser=since_parser,
            metavar="TIME",
            help=f"Only records since: {SINCE_HELP}.",
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", help="Newest N records.", min=1, max=1_000_000)
    ] = 100,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Check the hash chain, its signed checkpoints and the anchor; exit 1 naming "
            "what is broken, 2 when the signatures could not be checked.",
        ),
    ] = False,
    expect_head: Annotated[
        str | None,
        typer.Option(
            "--expect-head",
            help="With --verify: a head hash printed by an earlier --verify (16+ hex digits); "
            "exit 1 if it is no longer in the chain.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    wide: Annotated[bool, typer.Option("--wide", help=WIDE_HELP)] = False,
) -> None:
    """List audit records, or verify that none was edited, deleted, reordered or cut off."""
    from legion.mesh import audit as audit_log
    from legion.store import connect

    paths = State.paths()
    if expect_head is not None and not verify:
        fail("--expect-head goes with --verify", 2)
    if expect_head is not None and not re.fullmatch(r"[0-9a-fA-F]{16,64}", expect_head):
        fail(
            "--expect-head takes a head hash as `legion audit --verify` prints it (at least "
            "its first 16 hex digits)",
            2,
        )
    if not paths.host_db.exists():
        fail(f"no host database at {paths.host_db}; start the host once with `legion daemon`", 1)
    try:
        db = connect(paths.host_db, readonly=True)
    except Exception as exc:  # unreadable for this user, or not a database
        fail(f"cannot open {paths.host_db} ({exc}); run as the user the host runs as", 2)
    try:
        conn = db.connection()  # type: ignore[no-untyped-call]
        if verify:
            _verify(conn, expect_head, as_json)
        records = audit_log.query(conn, actor=agent, since=since, limit=limit)
        if agent is not None and not records:
            _unknown_actor(conn, agent)
    finally:
        db.close()
    if as_json:
        emit_json([r.as_dict() for r in records])
        return
    # Actor, target and details carry agent-chosen text (keys, URLs, reasons): literal cells.
    out = table("seq", "time", "actor", "action", "target", "decision", "reason")
    for r in records:
        style = "red" if r.decision == "deny" else ""
        out.add_row(
            str(r.seq),
            fmt_time(r.ts),
            cell(r.actor),
            cell(r.action),
            cell(r.target),
            cell(r.decision),
            cell(r.detail.get("reason", "")),
            style=style,
        )
    print_table(out, wide)


def _unknown_actor(conn: Any, actor: str) -> None:
    """`--agent NAME` found nothing: a name that is neither configured, nor a principal of
    the host's, nor in the log at all is a typo (exit 1); a configured agent or a removed
    one with older records just has none in this window (a note on stderr)."""
    from legion.config import load_config
    from legion.errors import ConfigError
    from legion.wire.rules import RESERVED_NAMES

    paths = State.paths()
    try:
        configured = set(load_config(paths.config).agents)
    except ConfigError:
        configured = set()
    if actor in configured or actor in RESERVED_NAMES:
        return
    seen = conn.execute("SELECT 1 FROM audit WHERE actor = ? LIMIT 1", (actor,)).fetchone()
    if seen is None:
        known = ", ".join(sorted(configured)) or "none"
        fail(
            f"no agent named {actor!r}: not in {paths.config} (agents: {known}) and no audit "
            "record was made by it",
            1,
        )
    typer.echo(
        f"legion: {actor!r} is not a configured agent (removed?); none of its records match",
        err=True,
    )


def _verify(conn: Any, expect_head: str | None, as_json: bool) -> None:
    """`legion audit --verify`: exit 0 intact and signed, 1 broken, 2 not verifiable."""
    from legion.gateway.vault import read_audit_key
    from legion.mesh import audit as audit_log
    from legion.retention import archive_dir

    paths = State.paths()
    lookup = read_audit_key(paths.vault_db, paths.vault_key)
    signing = audit_log.Signing(lookup.key, lookup.present, lookup.problem)
    result = audit_log.verify(
        conn,
        signing=signing,
        anchor_path=paths.audit_anchor,
        expect_head=expect_head,
        archive_dir=archive_dir(paths.home),
    )
    if as_json:
        emit_json(result.as_dict())
    elif result.status == "ok":
        signed = (
            f"signed through seq {result.signed_seq}"
            + (f" ({result.unsigned} newer not yet)" if result.unsigned else "")
            if result.signed_seq
            else "nothing to sign yet"
        )
        typer.echo(
            f"audit log ok: {result.checked} records, head {result.head_hash}; {signed}; "
            f"anchored at seq {result.anchor_seq}"
        )
        if result.sealed_seq:
            missing = (
                f"; {len(result.archives_missing)} removed ({', '.join(result.archives_missing)})"
                if result.archives_missing
                else ""
            )
            typer.echo(
                f"records 1..{result.sealed_seq} were archived: every seal verifies; "
                f"{result.archives_checked} archive files checked against them{missing}"
            )
        if result.expect_head_seq is not None:
            typer.echo(f"the head you expected is record {result.expect_head_seq}: still there")
    elif result.status == "unverified":
        typer.echo(f"audit log NOT VERIFIED: {result.reason}", err=True)
    else:
        where = f" at seq {result.bad_seq}" if result.bad_seq is not None else ""
        typer.echo(
            f"audit log BROKEN{where}: {result.reason} "
            f"({result.checked} records before it are intact)",
            err=True,
        )
    raise typer.Exit({"ok": 0, "broken": 1}.get(result.status, 2))
