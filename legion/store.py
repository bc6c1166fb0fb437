"""The host's SQLite store: one `host.db` in WAL mode, through peewee on apsw.

apsw ships its own SQLite build that can load extensions on any CPython (the
stdlib `sqlite3` module often cannot), which agent memory needs for sqlite-vec.
The schema is versioned; migrations only move forward, and a database written by
a newer legion is refused rather than damaged.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import apsw
import sqlite_vec
from playhouse.apsw_ext import APSWDatabase


class LegionDatabase(APSWDatabase):
    """A peewee database whose every connection can load sqlite-vec."""

    def _add_conn_hooks(self, conn: apsw.Connection) -> None:
        super()._add_conn_hooks(conn)  # type: ignore[no-untyped-call]
        conn.enable_load_extension(True)
        conn.load_extension(sqlite_vec.loadable_path())
        conn.enable_load_extension(False)


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
        pragmas = [("journal_mode", "wal"), ("synchronous", sync), *pragmas]
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


def _m5_paused(conn: apsw.Connection) -> None:
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


MIGRATIONS: list[Migration] = [
    _m1_core,
    _m2_ledger,
    _m3_audit_checkpoints,
    _m4_automation,
    _m5_paused,
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
        with conn:  # one transaction per migration
            MIGRATIONS[version - 1](conn)
            conn.execute(
                "INSERT INTO schema_version(version, applied_at) VALUES (?, ?)",
                (version, time.time()),
            )
    return found


@contextmanager
def committed(conn: apsw.Connection, *, fsync: bool = True) -> Iterator[apsw.Connection]:
    """A transaction on `conn`; `fsync=False` commits it at synchronous=NORMAL (on a
    connection that runs FULL): durable against a crash of the process, not a power cut,
    until the next fsynced commit, which makes every earlier one durable too."""
    if not fsync:
        conn.execute("PRAGMA synchronous=NORMAL")
    try:
        with conn:
            yield conn
    finally:
        if not fsync:
            conn.execute("PRAGMA synchronous=FULL")


class Store:
    """The open `host.db`: a peewee database plus the raw apsw connection for hot paths.

    All calls happen on the host's event-loop thread; each is a short statement or a
    short transaction, so the loop never waits long (invariant 7).
    """

    def __init__(self, path: Path, *, durability: str = "full") -> None:
        self.path = path
        self.durability = durability
        self.db = connect(path, durability=durability)
        self.created = migrate(self.db) == 0  # a new, empty database
        self.conn: apsw.Connection = self.db.connection()  # type: ignore[no-untyped-call]

    @contextmanager
    def tx(self, *, durable: bool = True) -> Iterator[apsw.Connection]:
        """A write transaction, committed on exit (durable before the caller acknowledges).

        `durable=False` skips the fsync for this one commit even at durability "full": for
        writes whose loss after a power cut is harmless (an ack lost means a redelivery,
        which at-least-once delivery allows).
        """
        with committed(self.conn, fsync=durable or self.durability != "full"):
            yield self.conn

    def execute(self, sql: str, args: tuple[Any, ...] | dict[str, Any] = ()) -> apsw.Cursor:
        return self.conn.execute(sql, args)

    def close(self) -> None:
        if not self.db.is_closed():
            self.db.close()
