"""`legion audit`: list and verify the hash-chained audit log (reads host.db directly)."""

from __future__ import annotations

from typing import Annotated

import typer

from legion.cli.common import State, cell, console, emit_json, fail, fmt_time, parse_since


def audit(
    agent: Annotated[str | None, typer.Option("--agent", help="Only this actor.")] = None,
    since: Annotated[
        str | None,
        typer.Option(
            "--since", help="Only records since T: 30m, 2h, 7d, an ISO time, or a Unix time."
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="Newest N records.", min=1)] = 100,
    verify: Annotated[
        bool,
        typer.Option("--verify", help="Check the hash chain; exit 1 naming the first bad record."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List audit records, or verify that none was edited, deleted or reordered."""
    from legion.mesh import audit as audit_log
    from legion.store import connect

    paths = State.paths()
    if not paths.host_db.exists():
        fail(f"no host database at {paths.host_db}; start the host once with `legion daemon`", 1)
    db = connect(paths.host_db, readonly=True)
    try:
        conn = db.connection()  # type: ignore[no-untyped-call]
        if verify:
            result = audit_log.verify(conn)
            if as_json:
                emit_json(result.__dict__)
            elif result.ok:
                typer.echo(f"audit log ok: {result.checked} records, head {result.head_hash}")
            else:
                typer.echo(
                    f"audit log BROKEN at seq {result.bad_seq}: {result.reason} "
                    f"({result.checked} records before it are intact)",
                    err=True,
                )
            raise typer.Exit(0 if result.ok else 1)
        since_ts = parse_since(since) if since else None
        records = audit_log.query(conn, actor=agent, since=since_ts, limit=limit)
    finally:
        db.close()
    if as_json:
        emit_json([r.as_dict() for r in records])
        return
    from rich.table import Table

    # Actor, target and details carry agent-chosen text (keys, URLs, reasons): literal cells.
    table = Table("seq", "time", "actor", "action", "target", "decision", "reason", box=None)
    for r in records:
        style = "red" if r.decision == "deny" else ""
        table.add_row(
            str(r.seq),
            fmt_time(r.ts),
            cell(r.actor),
            cell(r.action),
            cell(r.target),
            cell(r.decision),
            cell(r.detail.get("reason", "")),
            style=style,
        )
    console().print(table)
