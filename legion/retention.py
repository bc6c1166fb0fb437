"""Retention: host.db keeps what it needs, so it levels off instead of growing for ever.

A pass (every `[retention] interval_s`, or `legion db prune`):

1. **Ledger rollup.** Ledger rows (one per LLM call) of UTC days older than
   `ledger_keep_days` become one `ledger_daily` row per day, agent, model, provider model
   and kind, in the same transaction that deletes them: spend, tokens and calls stay exact
   per day, so `legion costs` and the budget windows (which read rollups plus live rows)
   do not change.
2. **Audit archive.** Records older than `audit_keep_days`, and the oldest beyond
   `audit_keep_mb`, are written to a sealed archive (legion/mesh/audit_archive.py) in a
   thread, the seal is committed, then the records are deleted in batches. Never the
   record the anchor names or any after it: verification always starts from a seal and
   ends at the anchor. A chain that does not verify is never archived.
3. **Incremental vacuum**, a few pages per transaction.

Heavy reads (table sizes through `dbstat`, counting, exporting) run in a thread on their
own read-only connection; every write is a short transaction on the loop, with the loop
free between them (invariant 7).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw

from legion.config import Config, RetentionConfig
from legion.gateway.llm.budget import window_start
from legion.mesh.audit import AuditLog
from legion.mesh.audit_archive import (
    ARCHIVE_GLOB,
    ArchiveBroken,
    export_segment,
    read_seals,
)
from legion.mesh.audit_chain import GENESIS, AnchorUnreadable, read_anchor
from legion.store import Store
from legion.wire.db import (
    ArchivedSegment,
    AuditStat,
    DbStats,
    LedgerStat,
    PruneResult,
    RetentionPlan,
    TableStat,
)

log = logging.getLogger("legion.retention")

AUDIT_TABLES = ("audit", "audit_actor_ts", "audit_ts", "audit_checkpoints", "audit_seals")
LEDGER_TABLES = ("ledger", "ledger_agent_ts", "ledger_ts", "ledger_daily")
SEGMENT_MAX = 100_000  # records per archive file, at most
SIZE_HEADROOM = 0.9  # pruning for size goes down to this fraction of audit_keep_mb
VACUUM_STEP = 256  # pages per incremental-vacuum transaction
FIRST_PASS_S = 60.0
SIZE_CHECK_S = 60.0  # how often the audit log's size is estimated between passes
EARLY_BACKOFF_S = 600.0  # after two early passes in a row that could not get under it
RECORD_BYTES_GUESS = 600.0  # bytes per audit record in host.db until a pass measures it
DAYS_SHOWN = 62

ROLLUP_SQL = """
INSERT INTO ledger_daily(day, agent, model, provider_model, kind, calls, prompt_tokens,
    completion_tokens, cost_usd, reserved_usd, first_ts, last_ts)
SELECT strftime('%Y-%m-%d', ts, 'unixepoch'), agent, model, provider_model, kind, COUNT(*),
    SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_usd), SUM(reserved_usd), MIN(ts),
    MAX(ts)
FROM ledger WHERE id IN (SELECT value FROM json_each(?))
GROUP BY 1, 2, 3, 4, 5
ON CONFLICT(day, agent, model, provider_model, kind) DO UPDATE SET
    calls = calls + excluded.calls,
    prompt_tokens = prompt_tokens + excluded.prompt_tokens,
    completion_tokens = completion_tokens + excluded.completion_tokens,
    cost_usd = cost_usd + excluded.cost_usd,
    reserved_usd = reserved_usd + excluded.reserved_usd,
    first_ts = MIN(first_ts, excluded.first_ts),
    last_ts = MAX(last_ts, excluded.last_ts)
"""


def archive_dir(home: Path) -> Path:
    return home / "archive"


def _one(conn: apsw.Connection, sql: str, args: tuple[Any, ...] = ()) -> Any:
    rows: list[tuple[Any, ...]] = conn.execute(sql, args).fetchall()
    return rows[0][0] if rows else None


def ledger_cutoff(now: float, keep_days: int) -> float:
    """Ledger rows before this instant (a UTC midnight) are rolled up."""
    return window_start(now - keep_days * 86400.0, "day")


def measure(
    db_path: Path,
    config: RetentionConfig,
    now: float,
    archives: Path,
    anchored_seq: int | None,
) -> DbStats:
    """Sizes of host.db and the plan of the next pass (blocking, read-only: run it in a
    thread, or from the CLI with the host stopped). `anchored_seq`: the newest record the
    anchor names (nothing from it on is archived); None reads it from the anchor file."""
    conn = apsw.Connection(str(db_path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        conn.execute("BEGIN")  # one snapshot for every figure
        return _measure(conn, db_path, config, now, archives, anchored_seq)
    finally:
        with contextlib.suppress(apsw.Error):
            conn.execute("COMMIT")
        conn.close()


def _measure(
    conn: apsw.Connection,
    db_path: Path,
    config: RetentionConfig,
    now: float,
    archives: Path,
    anchored_seq: int | None,
) -> DbStats:
    page_size = int(_one(conn, "PRAGMA page_size") or 4096)
    pages = int(_one(conn, "PRAGMA page_count") or 0)
    free = int(_one(conn, "PRAGMA freelist_count") or 0)
    vacuum = {0: "none", 1: "full", 2: "incremental"}.get(
        int(_one(conn, "PRAGMA auto_vacuum")), "?"
    )
    sizes: dict[str, tuple[int, int]] = {}
    for name, size, cells in conn.execute(
        "SELECT name, SUM(pgsize), SUM(CASE WHEN pagetype = 'leaf' THEN ncell ELSE 0 END) "
        "FROM dbstat GROUP BY name"
    ):
        sizes[str(name)] = (int(size), int(cells))
    names = {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    tables = [
        TableStat(name=n, bytes=b, rows=c if n in names else None)
        for n, (b, c) in sorted(sizes.items(), key=lambda kv: -kv[1][0])
    ]
    first = _one(conn, "SELECT MIN(seq) FROM audit")
    head = int(_one(conn, "SELECT MAX(seq) FROM audit") or 0)
    oldest = _one(conn, "SELECT ts FROM audit WHERE seq = ?", (first,)) if first else None
    seals = read_seals(conn)
    files = sorted(archives.glob(ARCHIVE_GLOB)) if archives.is_dir() else []
    audit_bytes = sum(sizes.get(n, (0, 0))[0] for n in AUDIT_TABLES)
    records = head - int(first) + 1 if first else 0
    audit = AuditStat(
        first_seq=int(first) if first else None,
        head_seq=head,
        records=records,
        oldest_ts=float(oldest) if oldest is not None else None,
        bytes=audit_bytes,
        sealed_seq=seals[-1].last if seals else 0,
        seals=len(seals),
        archives=len(files),
        archive_bytes=sum(f.stat().st_size for f in files),
    )
    has_rollups = "ledger_daily" in names
    ledger = LedgerStat(
        rows=sizes.get("ledger", (0, 0))[1],
        oldest_ts=_one(conn, "SELECT MIN(ts) FROM ledger"),
        rollup_rows=sizes.get("ledger_daily", (0, 0))[1] if has_rollups else 0,
        rollup_days=int(_one(conn, "SELECT COUNT(DISTINCT day) FROM ledger_daily") or 0)
        if has_rollups
        else 0,
        bytes=sum(sizes.get(n, (0, 0))[0] for n in LEDGER_TABLES),
    )
    if anchored_seq is None:
        try:
            anchor = read_anchor(db_path.parent / "audit.anchor")
        except AnchorUnreadable:
            anchor = None
        anchored_seq = anchor.seq if anchor is not None else None
    cutoff = ledger_cutoff(now, config.ledger_keep_days)
    ledger_rows = int(_one(conn, "SELECT COUNT(*) FROM ledger WHERE ts < ?", (cutoff,)) or 0)
    days = [
        str(r[0])
        for r in conn.execute(
            "SELECT DISTINCT strftime('%Y-%m-%d', ts, 'unixepoch') FROM ledger WHERE ts < ? "
            "ORDER BY 1 LIMIT ?",
            (cutoff, DAYS_SHOWN),
        )
    ]
    through, reason = _audit_cut(conn, config, now, audit, anchored_seq)
    plan = RetentionPlan(
        enabled=config.enabled,
        audit_archive_through=through,
        audit_records=through - int(first) + 1 if through is not None and first else 0,
        audit_reason=reason,
        ledger_rows=ledger_rows,
        ledger_days=days,
        free_pages=free,
    )
    wal = Path(f"{db_path}-wal")
    return DbStats(
        path=str(db_path),
        bytes=pages * page_size,
        file_bytes=db_path.stat().st_size,
        wal_bytes=wal.stat().st_size if wal.exists() else 0,
        page_size=page_size,
        pages=pages,
        free_pages=free,
        auto_vacuum=vacuum,
        tables=tables,
        audit=audit,
        ledger=ledger,
        plan=plan,
    )


def _audit_cut(
    conn: apsw.Connection,
    config: RetentionConfig,
    now: float,
    audit: AuditStat,
    anchored_seq: int | None,
) -> tuple[int | None, str]:
    """The newest record to archive (None: none), and why."""
    if audit.first_seq is None:
        return None, "the audit log is empty"
    first = audit.first_seq
    old = _one(
        conn, "SELECT MAX(seq) FROM audit WHERE ts < ?", (now - config.audit_keep_days * 86400,)
    )
    by_age = int(old) if old is not None else first - 1
    keep = config.audit_keep_mb * 1e6
    by_size = first - 1
    if audit.bytes > keep and audit.records > 0:
        excess = 1.0 - SIZE_HEADROOM * keep / audit.bytes
        by_size = first + math.ceil(audit.records * excess) - 1
    cut = max(by_age, by_size)
    reasons = [
        what
        for what, yes in (
            (f"older than {config.audit_keep_days:g} days", by_age >= first),
            (f"beyond {config.audit_keep_mb:g} MB", by_size >= first),
        )
        if yes
    ]
    limit = audit.head_seq - 1  # the head always stays
    if anchored_seq is not None:
        limit = min(limit, anchored_seq - 1)  # so does the record the anchor names
    cut = min(cut, limit)
    if cut < first:
        if reasons:
            return None, "only the newest records, which stay, are due"
        return None, (
            f"nothing older than {config.audit_keep_days:g} days, and under "
            f"{config.audit_keep_mb:g} MB"
        )
    return cut, " and ".join(reasons)


class Retention:
    """The host's retention: a periodic pass on its task group, and `prune()` on demand."""

    def __init__(
        self,
        store: Store,
        audit: AuditLog,
        config: Config,
        archives: Path,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.audit = audit
        self.config = config  # the host's: a reload swaps its [retention] in place
        self.archives = archives
        self.clock = clock
        self._lock = asyncio.Lock()
        self.passes = 0
        # Bytes one audit record takes in host.db (table and indexes), as last measured.
        self.bytes_per_record = RECORD_BYTES_GUESS

    async def stats(self) -> DbStats:
        return await asyncio.to_thread(
            measure,
            self.store.path,
            self.config.retention,
            self.clock(),
            self.archives,
            self.audit.anchored_seq,
        )

    async def run_forever(self) -> None:
        """The host's task: a pass every `interval_s` (the first one a minute in), and one
        sooner whenever the audit records in host.db pass `audit_keep_mb` (checked every
        `SIZE_CHECK_S` from the head's sequence number: one primary-key lookup), so a burst
        of traffic cannot grow host.db far past the limit between two passes. After an early
        pass that could not get under the limit, the next waits for the anchor to move past
        the records that were too new; after two, for `EARLY_BACKOFF_S` too."""
        loop = asyncio.get_running_loop()
        check_s, backoff_s = SIZE_CHECK_S, EARLY_BACKOFF_S
        quiet_until = 0.0  # no early pass before this
        wait_anchor = 0  # ... nor before the anchor reaches this record
        futile = 0  # early passes in a row that left the log over the limit
        next_pass = loop.time() + min(FIRST_PASS_S, self.config.retention.interval_s)
        while True:
            await asyncio.sleep(max(0.0, min(check_s, next_pass - loop.time())))
            config = self.config.retention
            due = loop.time() >= next_pass
            early = (
                not due
                and config.enabled
                and loop.time() >= quiet_until
                and (self.audit.anchored_seq or 0) >= wait_anchor
                and self.audit_over_size()
            )
            if early:
                log.info("the audit log is past audit_keep_mb: a retention pass now")
            if not (due or early):
                continue
            if config.enabled:
                try:
                    result = await self.prune()
                    if result.archived or result.ledger_rows_rolled_up or result.pages_vacuumed:
                        log.info(
                            "retention pass",
                            extra={"fields": result.model_dump(exclude={"plan"})},
                        )
                except Exception:
                    log.exception("retention pass failed; retrying at the next interval")
            if early and self.audit_over_size():
                # What is over may not go yet (the record the anchor names, and every one
                # after it, stays): the next early pass waits for the anchor to pass the
                # head of now; a second one in a row that gets nowhere waits `backoff_s`.
                futile += 1
                wait_anchor = self.audit.head[0]
                if futile >= 2:
                    quiet_until = loop.time() + backoff_s
            else:
                futile, wait_anchor = 0, 0
            if due:
                next_pass = loop.time() + config.interval_s

    def audit_over_size(self) -> bool:
        """Whether the audit records in host.db are likely over `audit_keep_mb`: their count
        (head minus the first kept) times the bytes per record the last pass measured."""
        first = _one(self.store.conn, "SELECT MIN(seq) FROM audit")
        if first is None:
            return False
        records = self.audit.head[0] - int(first) + 1
        return records * self.bytes_per_record > self.config.retention.audit_keep_mb * 1e6

    async def prune(self, *, dry_run: bool = False) -> PruneResult:
        """One pass now (or, with `dry_run`, only what it would do)."""
        async with self._lock:
            started = time.monotonic()
            stats = await self.stats()
            if stats.audit.records >= 100:
                self.bytes_per_record = stats.audit.bytes / stats.audit.records
            result = PruneResult(dry_run=dry_run, plan=stats.plan, bytes_before=stats.bytes)
            if dry_run:
                return result
            config = self.config.retention
            result.ledger_rows_rolled_up = await self._roll_up(
                ledger_cutoff(self.clock(), config.ledger_keep_days), config.batch_rows
            )
            through = stats.plan.audit_archive_through
            result.audit_records_deleted = await self._delete_archived(config.batch_rows)
            if through is not None:
                archived, deleted = await self._archive(through, config.batch_rows)
                result.archived = archived
                result.audit_records_deleted += deleted
            result.pages_vacuumed = await self._vacuum()
            result.bytes_after = self.store.db_bytes()
            result.took_s = time.monotonic() - started
            self.passes += 1
            return result

    # --- the steps ---------------------------------------------------------------------

    async def _roll_up(self, cutoff: float, batch: int) -> int:
        rolled = 0
        while True:
            found: list[tuple[Any, ...]] = self.store.execute(
                "SELECT id FROM ledger WHERE ts < ? ORDER BY ts LIMIT ?", (cutoff, batch)
            ).fetchall()
            ids = [int(r[0]) for r in found]
            if not ids:
                return rolled
            listed = "[" + ",".join(map(str, ids)) + "]"
            # One transaction: the rollup and the deletion of what it sums, or neither.
            with self.store.tx(durable=False) as conn:
                conn.execute(ROLLUP_SQL, (listed,))
                conn.execute(
                    "DELETE FROM ledger WHERE id IN (SELECT value FROM json_each(?))", (listed,)
                )
            rolled += len(ids)
            await asyncio.sleep(0)

    async def _delete_archived(self, batch: int) -> int:
        """Records a seal already covers but still in host.db (a pass cut short)."""
        seals = read_seals(self.store.conn)
        return await self._delete_through(seals[-1].last, batch) if seals else 0

    async def _delete_through(self, last: int, batch: int) -> int:
        deleted = 0
        while True:
            low = _one(self.store.conn, "SELECT MIN(seq) FROM audit")
            if low is None or int(low) > last:
                return deleted
            high = min(last, int(low) + batch - 1)
            with self.store.tx(durable=False) as conn:
                conn.execute("DELETE FROM audit WHERE seq >= ? AND seq <= ?", (low, high))
                deleted += int(conn.changes())
                conn.execute("DELETE FROM audit_checkpoints WHERE seq <= ?", (high,))
            await asyncio.sleep(0)

    async def _archive(self, through: int, batch: int) -> tuple[list[ArchivedSegment], int]:
        key = self.audit.key
        if key is None:
            log.warning("the audit log is not signed (no audit key): nothing is archived")
            return [], 0
        archived: list[ArchivedSegment] = []
        deleted = 0
        while True:
            seals = read_seals(self.store.conn)
            after = seals[-1].hash if seals else GENESIS
            first = seals[-1].last + 1 if seals else 1
            low = _one(self.store.conn, "SELECT MIN(seq) FROM audit")
            if low is None or int(low) != first or first > through:
                if low is not None and int(low) != first and first <= through:
                    log.error(
                        "the audit log does not start where its seals end (record %s, "
                        "expected %s): nothing is archived; run `legion audit --verify`",
                        low,
                        first,
                    )
                return archived, deleted
            last = min(through, first + SEGMENT_MAX - 1)
            try:
                seal = await asyncio.to_thread(
                    export_segment,
                    self.store.path,
                    first,
                    last,
                    after,
                    self.archives,
                    key,
                    self.clock(),
                )
            except ArchiveBroken as exc:
                log.error(
                    "the audit chain does not verify, so it is not archived (%s); run "
                    "`legion audit --verify`",
                    exc,
                )
                return archived, deleted
            with self.store.tx() as conn:  # the seal first, then the records may go
                conn.execute(
                    "INSERT INTO audit_seals(last, first, prev_hash, hash, count, sha256, file,"
                    " bytes, ts, mac) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (
                        seal.last,
                        seal.first,
                        seal.prev_hash,
                        seal.hash,
                        seal.count,
                        seal.sha256,
                        seal.file,
                        seal.size,
                        seal.ts,
                        seal.mac,
                    ),
                )
            await self.store.sync_all()
            deleted += await self._delete_through(seal.last, batch)
            self.audit.append(
                "host",
                "audit.archived",
                seal.file,
                "allow",
                first=seal.first,
                last=seal.last,
                records=seal.count,
                bytes=seal.size,
                sha256=seal.sha256,
            )
            archived.append(
                ArchivedSegment(
                    file=seal.file,
                    first=seal.first,
                    last=seal.last,
                    records=seal.count,
                    bytes=seal.size,
                    sha256=seal.sha256,
                )
            )

    async def _vacuum(self) -> int:
        """Give free pages back to the file system, `VACUUM_STEP` per transaction."""
        freed = 0
        while True:
            free = int(_one(self.store.conn, "PRAGMA freelist_count") or 0)
            if free == 0:
                return freed
            with self.store.tx(durable=False) as conn:
                conn.execute(f"PRAGMA incremental_vacuum({VACUUM_STEP})").fetchall()
            after = int(_one(self.store.conn, "PRAGMA freelist_count") or 0)
            if after >= free:  # not incremental (auto_vacuum off): nothing to give back
                return freed
            freed += free - after
            await asyncio.sleep(0)
