"""The host's SQLite store: one `host.db` in WAL mode, through peewee on apsw.

apsw ships its own SQLite build that can load extensions on any CPython (the
stdlib `sqlite3` module often cannot), which agent memory needs for sqlite-vec.
The schema is versioned; migrations only move forward, and a database written by
a newer legion is refused rather than damaged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import apsw
import sqlite_vec
from playhouse.apsw_ext import APSWDatabase

from legion.groupcommit import Checkpointer, GroupCommit, StorageFailed

log = logging.getLogger("legion.store")


class LegionDatabase(APSWDatabase):
    """A peewee database whose every connection can load sqlite-vec."""

    def _add_conn_hooks(self, conn: apsw.Connection) -> None:
        super()._add_conn_hooks(conn)  # type: ignore[no-untyped-call]
        conn.enable_load_extension(True)
        conn.load_extension(sqlite_vec.loadable_path())
        conn.enable_load_extension(False)


def owner_only(path: Path) -> None:
    """Make `path` (a database the host owns: audit, ledger, blackboard) readable by its
    owner only, created so when new: SQLite gives its -wal and -shm files the database's
    mode. An older home's 0644 file is tightened. The home itself is 0700 as well."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        for each in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            with contextlib.suppress(FileNotFoundError):
                if stat.S_IMODE(os.lstat(each).st_mode) & 0o077 and not each.is_symlink():
                    os.chmod(each, 0o600)
    else:
        os.close(fd)


def connect(
    path: Path | str, *, durability: str = "full", readonly: bool = False
) -> LegionDatabase:
    """Open a database with legion's settings: WAL, busy timeout, foreign keys, sqlite-vec."""
    sync = {"full": "FULL", "normal": "NORMAL"}[durability]
    flags = (
        apsw.SQLITE_OPEN_READONLY
        if readonly
        else (apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE)
    )
    pragmas: list[tuple[str, Any]] = [("busy_timeout", 5000), ("foreign_keys", 1)]
    if not readonly:
        # auto_vacuum first: it takes effect on a new file only before WAL mode writes the
        # header (an existing file switches by VACUUM, migration 6); elsewhere a no-op.
        pragmas = [
            ("auto_vacuum", "incremental"),
            ("journal_mode", "wal"),
            ("synchronous", sync),
            *pragmas,
        ]
    db = LegionDatabase(str(path), pragmas=pragmas, flags=flags, timeout=5)  # type: ignore[no-untyped-call]
    db.connect()
    return db


# Each migration takes the raw apsw connection inside a transaction.
Migration = Callable[[apsw.Connection], None]


def _m1_core(conn: apsw.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE blackboard (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            version INTEGER NOT NULL,
            writer TEXT NOT NULL,
            updated_at REAL NOT NULL,
            expires_at REAL
        );
        CREATE INDEX blackboard_expires ON blackboard(expires_at) WHERE expires_at IS NOT NULL;
        CREATE TABLE claims (
            key TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            expires_at REAL NOT NULL
        );
        CREATE TABLE subscriptions (
            agent TEXT NOT NULL,
            topic TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (agent, topic)
        );
        CREATE TABLE inbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            agent TEXT NOT NULL,
            kind TEXT NOT NULL,
            topic TEXT,
            sender TEXT NOT NULL,
            payload TEXT NOT NULL,
            created_at REAL NOT NULL,
            visible_at REAL NOT NULL,
            deliveries INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX inbox_agent_visible ON inbox(agent, visible_at, id);
        """
        + AUDIT_DDL
    )


# The audit tables, also for `AuditLog` to recreate one that was dropped (it records that).
AUDIT_DDL = """
        CREATE TABLE IF NOT EXISTS audit (
            seq INTEGER PRIMARY KEY,
            ts REAL NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            decision TEXT NOT NULL,
            detail TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS audit_actor_ts ON audit(actor, ts);
        CREATE INDEX IF NOT EXISTS audit_ts ON audit(ts);
"""
# Signed checkpoints of the audit chain (legion/mesh/audit.py): record `seq` had hash
# `hash`, vouched for by `mac` (HMAC-SHA256 under the vault-held audit key).
AUDIT_CHECKPOINTS_DDL = """
        CREATE TABLE IF NOT EXISTS audit_checkpoints (
            seq INTEGER PRIMARY KEY,
            hash TEXT NOT NULL,
            ts REAL NOT NULL,
            mac TEXT NOT NULL
        );
"""


def _m2_ledger(conn: apsw.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE ledger (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            ts REAL NOT NULL,
            agent TEXT NOT NULL,
            model TEXT NOT NULL,
            provider_model TEXT NOT NULL,
            request_id TEXT NOT NULL,
            kind TEXT NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            cost_usd REAL NOT NULL,
            reserved_usd REAL NOT NULL,
            status TEXT NOT NULL,
            latency_ms REAL,
            ttft_ms REAL
        );
        CREATE INDEX ledger_agent_ts ON ledger(agent, ts);
        CREATE INDEX ledger_ts ON ledger(ts);
        CREATE TABLE reservations (
            id TEXT PRIMARY KEY,
            agent TEXT NOT NULL,
            model TEXT NOT NULL,
            provider_model TEXT NOT NULL,
            request_id TEXT NOT NULL,
            amount_usd REAL NOT NULL,
            created_at REAL NOT NULL
        );
        """
    )


def _m3_audit_checkpoints(conn: apsw.Connection) -> None:
    conn.execute(AUDIT_CHECKPOINTS_DDL)


def _m4_automation(conn: apsw.Connection) -> None:
    """Cron jobs and their runs, webhooks, their replay ids and jobs (legion/automation).

    A run's row is inserted in the same transaction as the inbox item it dispatches, and
    (job_id, slot) is unique for scheduled runs: a slot can never run twice."""
    conn.execute(
        """
        CREATE TABLE cron_jobs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            agent TEXT NOT NULL,
            name TEXT NOT NULL,
            schedule TEXT NOT NULL,
            timezone TEXT NOT NULL,
            action TEXT NOT NULL,
            missed TEXT NOT NULL,
            state TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            created_by TEXT NOT NULL,
            created_at REAL NOT NULL,
            anchor INTEGER NOT NULL,
            next_run_at INTEGER,
            last_run_at REAL,
            runs INTEGER NOT NULL DEFAULT 0,
            overlaps INTEGER NOT NULL DEFAULT 0,
            missed_runs INTEGER NOT NULL DEFAULT 0,
            failures INTEGER NOT NULL DEFAULT 0,
            UNIQUE (agent, name)
        );
        CREATE TABLE cron_runs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id INTEGER NOT NULL,
            agent TEXT NOT NULL,
            slot INTEGER NOT NULL,
            trigger TEXT NOT NULL,
            started_at REAL NOT NULL,
            status TEXT NOT NULL,
            item_id INTEGER,
            detail TEXT NOT NULL DEFAULT '',
            finished_at REAL
        );
        CREATE UNIQUE INDEX cron_runs_slot ON cron_runs(job_id, slot) WHERE trigger != 'manual';
        CREATE INDEX cron_runs_job ON cron_runs(job_id, id);
        CREATE INDEX cron_runs_item ON cron_runs(agent, item_id) WHERE item_id IS NOT NULL;
        CREATE TABLE webhooks (
            name TEXT PRIMARY KEY,
            agent TEXT NOT NULL,
            mode TEXT NOT NULL,
            rate_per_min REAL,
            burst INTEGER,
            created_at REAL NOT NULL,
            rotated_at REAL,
            deliveries INTEGER NOT NULL DEFAULT 0,
            refused INTEGER NOT NULL DEFAULT 0,
            last_delivery_at REAL
        );
        CREATE TABLE webhook_replays (
            hook TEXT NOT NULL,
            key TEXT NOT NULL,
            seen_at REAL NOT NULL,
            PRIMARY KEY (hook, key)
        );
        CREATE INDEX webhook_replays_seen ON webhook_replays(seen_at);
        CREATE TABLE webhook_jobs (
            id TEXT PRIMARY KEY,
            hook TEXT NOT NULL,
            agent TEXT NOT NULL,
            item_id INTEGER,
            delivery TEXT NOT NULL,
            received_at REAL NOT NULL,
            status TEXT NOT NULL,
            result TEXT,
            finished_at REAL
        );
        CREATE INDEX webhook_jobs_item ON webhook_jobs(agent, item_id);
        CREATE INDEX webhook_jobs_received ON webhook_jobs(received_at);
        """
    )


# Seals of archived audit segments (legion/mesh/audit_archive.py): records first..last
# were archived to `file`; the record before `first` had hash `prev_hash`, record `last`
# had `hash`; `sha256` of the archived lines; `mac` signs it all under the audit key.
AUDIT_SEALS_DDL = """
        CREATE TABLE IF NOT EXISTS audit_seals (
            last INTEGER PRIMARY KEY,
            first INTEGER NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL,
            count INTEGER NOT NULL,
            sha256 TEXT NOT NULL,
            file TEXT NOT NULL,
            bytes INTEGER NOT NULL,
            ts REAL NOT NULL,
            mac TEXT NOT NULL
        );
"""


def _m5_retention(conn: apsw.Connection) -> None:
    """Audit seals, and the ledger's daily rollups (legion/retention.py): one row per UTC
    day, agent, model, provider model and kind holds what the ledger rows it replaced
    summed to, so costs and budget windows stay exact per day."""
    conn.execute(
        AUDIT_SEALS_DDL
        + """
        CREATE TABLE ledger_daily (
            day TEXT NOT NULL,
            agent TEXT NOT NULL,
            model TEXT NOT NULL,
            provider_model TEXT NOT NULL,
            kind TEXT NOT NULL,
            calls INTEGER NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            cost_usd REAL NOT NULL,
            reserved_usd REAL NOT NULL,
            first_ts REAL NOT NULL,
            last_ts REAL NOT NULL,
            PRIMARY KEY (day, agent, model, provider_model, kind)
        );
        """
    )


def _m7_paused(conn: apsw.Connection) -> None:
    """The operator's pauses of LLM dispatch (legion/gateway/llm/inflight.py): one row per
    paused agent, `*` for the whole fleet; kept across restarts until `legion resume`."""
    conn.execute(
        """
        CREATE TABLE paused_agents (
            agent TEXT PRIMARY KEY,
            since REAL NOT NULL,
            paused_by TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT ''
        );
        """
    )


def _m6_incremental_vacuum(conn: apsw.Connection) -> None:
    """auto_vacuum=INCREMENTAL, so pruned pages go back to the file system a few at a time
    (`PRAGMA incremental_vacuum`). An existing database needs one VACUUM to switch: it
    rewrites the whole file (through the WAL), once, at this start. A new one was created
    with the setting (`connect`)."""
    if _pragma(conn, "auto_vacuum") == 2:
        return
    pages = _pragma(conn, "page_count") * _pragma(conn, "page_size")
    log.warning(
        "converting host.db to incremental vacuum (once; it rewrites the %.0f MB file)",
        pages / 1e6,
    )
    started = time.monotonic()
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    try:
        conn.execute("VACUUM")
    except (apsw.FullError, apsw.IOError) as exc:  # VACUUM needs room for a second copy
        log.error(
            "could not convert host.db to incremental vacuum (%s): the host starts anyway, and "
            "retention prunes, but the file will not shrink; free disk space, stop the host "
            "and run `sqlite3 host.db 'PRAGMA auto_vacuum=INCREMENTAL; VACUUM'`",
            exc,
        )
        return
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    log.info("host.db converted in %.1f s", time.monotonic() - started)


_m6_incremental_vacuum.outside_transaction = True  # type: ignore[attr-defined]


def _pragma(conn: apsw.Connection, name: str) -> int:
    rows: list[tuple[Any, ...]] = conn.execute(f"PRAGMA {name}").fetchall()
    return int(rows[0][0]) if rows else 0


# Numbered by position. (Branches that add migrations in parallel renumber on merge: each
# migration touches its own tables, so their order does not matter.)
MIGRATIONS: list[Migration] = [
    _m1_core,
    _m2_ledger,
    _m3_audit_checkpoints,
    _m4_automation,
    _m5_retention,
    _m6_incremental_vacuum,
    _m7_paused,
]
SCHEMA_VERSION = len(MIGRATIONS)


class SchemaTooNew(Exception):
    pass


def migrate(db: LegionDatabase) -> int:
    """Bring the schema up to SCHEMA_VERSION; returns the version found before."""
    conn: apsw.Connection = db.connection()  # type: ignore[no-untyped-call]
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL, applied_at REAL)"
    )
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    found = int(row[0]) if row and row[0] is not None else 0
    if found > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"{db.database} has schema version {found}, but this legion knows up to "
            f"{SCHEMA_VERSION}; upgrade legion (downgrades are not supported)"
        )
    for version in range(found + 1, SCHEMA_VERSION + 1):
        step = MIGRATIONS[version - 1]
        if getattr(step, "outside_transaction", False):
            step(conn)  # e.g. VACUUM, which no transaction may hold; it is idempotent
        with conn:  # one transaction per migration
            if not getattr(step, "outside_transaction", False):
                step(conn)
            conn.execute(
                "INSERT INTO schema_version(version, applied_at) VALUES (?, ?)",
                (version, time.time()),
            )
    return found


@contextmanager
def committed(conn: apsw.Connection, *, fsync: bool = True) -> Iterator[apsw.Connection]:
    """A transaction on a bare connection (one not owned by a `Store`), at the `synchronous`
    level its durability needs for this one commit: FULL with `fsync`, NORMAL without.
    A `Store` commits through `Store.tx` instead (group commit)."""
    row = conn.execute("PRAGMA synchronous").fetchone()
    level = int(row[0]) if row else 2
    wanted = 2 if fsync else 1
    if level != wanted:
        conn.execute(f"PRAGMA synchronous={wanted}")
    try:
        with conn:
            yield conn
    finally:
        if level != wanted:
            conn.execute(f"PRAGMA synchronous={level}")


class Store:
    """The open `host.db`: a peewee database plus the raw apsw connection for hot paths.

    All calls happen on the host's event-loop thread; each is a short statement or a
    short transaction, so the loop never waits long (invariant 7). Commits are made at
    `synchronous=NORMAL` and made durable by group commit (`legion.groupcommit`): at
    durability "full", a durable commit starts an fsync of the WAL in another thread,
    and whoever acknowledges it first awaits `flush()`.
    """

    def __init__(self, path: Path, *, durability: str = "full") -> None:
        self.path = path
        self.durability = durability
        owner_only(path)
        self.db = connect(path, durability="normal")
        self.created = migrate(self.db) == 0  # a new, empty database
        self.conn: apsw.Connection = self.db.connection()  # type: ignore[no-untyped-call]
        self.group = GroupCommit(Path(f"{path}-wal"))
        self.checkpoints = Checkpointer(self.conn, path) if Checkpointer.supported() else None
        # A commit made outside `tx` (a bare statement in autocommit, a peewee transaction)
        # is still covered: the commit hook notes it, and the next flush counts it as a
        # durable commit, so the reply that follows it waits for its fsync like any other.
        self.stray_commits = 0
        self._stray_pending = False
        self._in_tx = False
        self.conn.set_commit_hook(self._on_commit)

    @contextmanager
    def tx(self, *, durable: bool = True) -> Iterator[apsw.Connection]:
        """A write transaction, committed on exit: it survives a crash of the host once this
        returns, and a power cut once `flush()` returns (at durability "full").

        `durable=False`: no fsync round is started for this commit, and replies do not wait
        for one (the next round covers it anyway): for writes whose loss after a power cut
        is harmless (an ack lost means a redelivery, which at-least-once delivery allows).
        Nested in another transaction, it is a savepoint and the outer commit counts.
        """
        nested = self.conn.in_transaction
        if not nested:
            self._in_tx = True
        try:
            with self.conn:
                yield self.conn
        finally:
            if not nested:
                self._in_tx = False
        if not nested:
            self._count_stray()
            self.group.committed(durable and self.durability == "full")
            if self.checkpoints is not None:
                self.checkpoints.after_commit()

    def _on_commit(self) -> bool:
        if not self._in_tx:
            self.stray_commits += 1
            self._stray_pending = True
        return False  # commit (a true value would turn it into a rollback)

    def _count_stray(self) -> None:
        if self._stray_pending:
            self._stray_pending = False
            self.group.committed(self.durability == "full")

    async def flush(self) -> None:
        """Return once every durable commit made so far is on disk (group commit). Every
        answer of the host's HTTP server awaits this before it is sent
        (`HttpServer.durable`)."""
        self._count_stray()
        await self.group.flush()

    async def sync_all(self) -> None:
        """Every commit so far on disk, durable or not, whatever the durability (the audit
        anchor names only what a power cut cannot undo)."""
        self._count_stray()
        await self.group.flush(self.group.seq)

    def sync_all_now(self) -> None:
        """`sync_all`, blocking (start and stop only)."""
        self._count_stray()
        self.group.flush_sync()

    def execute(self, sql: str, args: tuple[Any, ...] | dict[str, Any] = ()) -> apsw.Cursor:
        return self.conn.execute(sql, args)

    def db_bytes(self) -> int:
        """Pages in use times the page size (the file follows at the next checkpoint)."""
        return _pragma(self.conn, "page_count") * _pragma(self.conn, "page_size")

    def close(self) -> None:
        with contextlib.suppress(StorageFailed):  # logged where it failed
            self._count_stray()
        self.group.close()
        if self.checkpoints is not None:
            self.checkpoints.close()
        if not self.db.is_closed():
            self.db.close()
