"""`legion audit`: list and verify the hash-chained audit log (reads host.db directly)."""

from __future__ import annotations

from typing import Annotated

import typer

from legion.cli.common import SINCE_HELP, State, emit_json, fail, fmt_time, since_parser


def audit(
    agent: Annotated[str | None, typer.Option("--agent", help="Only this actor.")] = None,
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
        records = audit_log.query(conn, actor=agent, since=since, limit=limit)
    finally:
        db.close()
    if as_json:
        emit_json([r.as_dict() for r in records])
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("seq", "time", "actor", "action", "target", "decision", "reason", box=None)
    for r in records:
        style = "red" if r.decision == "deny" else ""
        table.add_row(
            str(r.seq),
            fmt_time(r.ts),
            r.actor,
            r.action,
            r.target,
            r.decision,
            str(r.detail.get("reason", "")),
            style=style,
        )
    Console().print(table)
