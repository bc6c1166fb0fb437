"""`legion db`: host.db's sizes, retention (archive, rollup, vacuum) and archive checks."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from legion.cli.common import (
    State,
    console,
    echo,
    emit_json,
    fail,
    fmt_time,
    host_errors,
    subapp,
)

app = subapp("host.db: sizes, retention (the retention section of legion.toml) and audit archives.")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _mb(n: int | float) -> str:
    return f"{n / 1e6:,.1f} MB"


STATS_HELP = (
    "Sizes of host.db, and what the next retention pass will do.\n\n"
    "Per table and index; the audit log (records kept, sealed, archived) and the ledger "
    "(rows, daily rollups). Asks the running host; with the host stopped, reads host.db "
    "itself (read-only)."
)


@app.command("stats", help=STATS_HELP)
def stats(as_json: JsonOpt = False) -> None:
    """Sizes of host.db, and what the next retention pass will do (`STATS_HELP`)."""
    from legion.api.client import ControlClient

    with ControlClient(State.paths()) as client:
        running = client.running()
        if running:
            with host_errors():
                result = client.db_stats()
    if not running:
        result = _offline_stats()
    if as_json:
        emit_json(result.model_dump())
        return
    _print_stats(result)


def _offline_stats() -> Any:
    from legion.config import load_config
    from legion.errors import ConfigError
    from legion.retention import archive_dir, measure

    paths = State.paths()
    try:
        config = load_config(paths.config)
    except ConfigError as exc:
        fail(exc.render(), 2)
    if not paths.host_db.exists():
        fail(f"no host database at {paths.host_db}; start the host once with `legion daemon`")
    try:
        return measure(paths.host_db, config.retention, time.time(), archive_dir(paths.home), None)
    except Exception as exc:  # unreadable for this user, or not a database
        fail(f"cannot read {paths.host_db} ({exc}); run as the user the host runs as", 2)


def _print_stats(s: Any) -> None:
    from rich.table import Table

    typer.echo(
        f"{s.path}: {_mb(s.bytes)} ({s.pages} pages of {s.page_size} B, {s.free_pages} free; "
        f"file {_mb(s.file_bytes)}, WAL {_mb(s.wal_bytes)}), auto_vacuum {s.auto_vacuum}"
    )
    table = Table("table / index", "size", "rows", box=None)
    for t in s.tables:
        table.add_row(t.name, _mb(t.bytes), "" if t.rows is None else f"{t.rows:,}")
    console().print(table)
    a, ledger, p = s.audit, s.ledger, s.plan
    oldest = fmt_time(a.oldest_ts) if a.oldest_ts else "-"
    typer.echo(
        f"audit: {a.records:,} records in host.db (seq {a.first_seq or '-'}..{a.head_seq}, "
        f"oldest {oldest}), {_mb(a.bytes)}; archived and sealed through seq {a.sealed_seq} "
        f"({a.seals} seals; {a.archives} archive files, {_mb(a.archive_bytes)})"
    )
    typer.echo(
        f"ledger: {ledger.rows:,} rows, {ledger.rollup_rows:,} daily rollups over "
        f"{ledger.rollup_days} days, {_mb(ledger.bytes)}"
    )
    state = "on" if p.enabled else "off ([retention] enabled = false; `legion db prune` still runs)"
    typer.echo(f"retention is {state}; the next pass would:")
    if p.audit_archive_through is not None:
        typer.echo(
            f"  archive and delete {p.audit_records:,} audit records through seq "
            f"{p.audit_archive_through} ({p.audit_reason})"
        )
    else:
        typer.echo(f"  archive no audit records ({p.audit_reason})")
    days = ", ".join(p.ledger_days[:5]) + (" ..." if len(p.ledger_days) > 5 else "")
    typer.echo(f"  roll up {p.ledger_rows:,} ledger rows" + (f" ({days})" if p.ledger_rows else ""))
    typer.echo(f"  give back {p.free_pages:,} free pages ({_mb(p.free_pages * s.page_size)})")


PRUNE_HELP = (
    "Run a retention pass now (needs the running host).\n\n"
    "Rolls up old ledger rows, archives and deletes old audit records, gives free pages "
    "back to the file system; --dry-run only shows what it would do."
)


@app.command("prune", help=PRUNE_HELP)
def prune(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only show what a pass would do.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run a retention pass now (`PRUNE_HELP`)."""
    from legion.api.client import ControlClient

    with host_errors(), ControlClient(State.paths()) as client:
        result = client.db_prune(dry_run=dry_run)
    if as_json:
        emit_json(result.model_dump())
        return
    p = result.plan
    if dry_run:
        what = (
            f"{p.audit_records:,} audit records through seq {p.audit_archive_through}"
            if p.audit_archive_through is not None
            else f"no audit records ({p.audit_reason})"
        )
        typer.echo(
            f"would archive {what}; roll up {p.ledger_rows:,} ledger rows; give back "
            f"{p.free_pages:,} free pages"
        )
        return
    for seg in result.archived:
        typer.echo(
            f"archived records {seg.first}..{seg.last} to {seg.file} ({_mb(seg.bytes)}, "
            f"sha256 {seg.sha256[:16]}...)"
        )
    typer.echo(
        f"deleted {result.audit_records_deleted:,} audit records, rolled up "
        f"{result.ledger_rows_rolled_up:,} ledger rows, gave back {result.pages_vacuumed:,} "
        f"pages: host.db {_mb(result.bytes_before)} -> {_mb(result.bytes_after)} "
        f"in {result.took_s:.1f} s"
    )


VERIFY_HELP = (
    "Check audit archives on their own, wherever they are.\n\n"
    "Each file's hash chain, its line hash and its seal (signed with the vault's audit key; "
    "without the key, the chain only). Exit 0 all ok, 1 one is broken, 2 a seal could not "
    "be checked."
)


@app.command("verify-archive", help=VERIFY_HELP)
def verify_archive_cmd(
    files: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Archive files (default: every one in LEGION_HOME/archive).", show_default=False
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check audit archives on their own (`VERIFY_HELP`)."""
    from legion.gateway.vault import read_audit_key
    from legion.mesh.audit_archive import verify_archive
    from legion.retention import archive_dir

    paths = State.paths()
    chosen = list(files or [])
    if not chosen:
        folder = archive_dir(paths.home)
        chosen = sorted(folder.glob("audit-*-*.jsonl.gz")) if folder.is_dir() else []
        if not chosen:
            fail(f"no archives in {folder} (retention has not archived anything yet)", 1)
    lookup = read_audit_key(paths.vault_db, paths.vault_key)
    results = [verify_archive(path, lookup.key) for path in chosen]
    if as_json:
        emit_json([r.as_dict() for r in results])
    else:
        for r in results:
            span = f"records {r.first}..{r.last}" if r.first is not None else "no records"
            if r.status == "ok":
                echo(f"{r.file}: ok, {span}, head {r.hash}")
            elif r.status == "unverified":
                echo(f"{r.file}: NOT VERIFIED ({span}): {r.reason}; {lookup.problem}", err=True)
            else:
                echo(f"{r.file}: BROKEN: {r.reason}", err=True)
    statuses = {r.status for r in results}
    raise typer.Exit(1 if "broken" in statuses else 2 if "unverified" in statuses else 0)
