"""The store: WAL, durability settings, sqlite-vec through our own connection, migrations."""

from __future__ import annotations

import struct
from pathlib import Path

import apsw
import pytest

from legion import store
from legion.store import SCHEMA_VERSION, SchemaTooNew, Store, connect


def test_sqlite_vec_loads_through_the_connection_factory(home: Path) -> None:
    db = connect(home / "vec.db")
    conn = db.connection()
    (version,) = conn.execute("SELECT vec_version()").fetchone()
    assert version.startswith("v")
    conn.execute("CREATE VIRTUAL TABLE v USING vec0(embedding float[3])")
    for rowid, vec in [(1, (1.0, 0.0, 0.0)), (2, (0.0, 1.0, 0.0)), (3, (0.9, 0.1, 0.0))]:
        conn.execute(
            "INSERT INTO v(rowid, embedding) VALUES (?, ?)", (rowid, struct.pack("3f", *vec))
        )
    rows = conn.execute(
        "SELECT rowid FROM v WHERE embedding MATCH ? ORDER BY distance LIMIT 2",
        (struct.pack("3f", 1.0, 0.0, 0.0),),
    ).fetchall()
    assert [r[0] for r in rows] == [1, 3]
    db.close()


@pytest.mark.parametrize("durability", ["full", "normal"])
def test_wal_and_synchronous(home: Path, durability: str) -> None:
    """Commits are made at NORMAL either way; "full" fsyncs by group commit (issue 10)."""
    s = Store(home / "host.db", durability=durability)
    assert s.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert s.execute("PRAGMA synchronous").fetchone()[0] == 1
    with s.tx():
        s.execute("CREATE TABLE t(x)")
    # Without an event loop a durable commit is fsynced before tx() returns.
    assert s.group.flushed == (1 if durability == "full" else 0)
    s.close()


def test_migrations_are_recorded_and_idempotent(home: Path) -> None:
    Store(home / "host.db").close()
    s = Store(home / "host.db")
    versions = [r[0] for r in s.execute("SELECT version FROM schema_version ORDER BY version")]
    assert versions == list(range(1, SCHEMA_VERSION + 1))
    s.close()


def test_a_newer_schema_is_refused_not_damaged(home: Path) -> None:
    Store(home / "host.db").close()
    conn = apsw.Connection(str(home / "host.db"))
    conn.execute(
        "INSERT INTO schema_version(version, applied_at) VALUES (?, 0)", (SCHEMA_VERSION + 1,)
    )
    conn.close()
    with pytest.raises(SchemaTooNew, match="upgrade legion"):
        Store(home / "host.db")


def test_a_failed_migration_changes_nothing(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Store(home / "host.db").close()

    def broken(conn: apsw.Connection) -> None:
        conn.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("migration failed midway")

    monkeypatch.setattr(store, "MIGRATIONS", [*store.MIGRATIONS, broken])
    monkeypatch.setattr(store, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(RuntimeError):
        Store(home / "host.db")
    conn = apsw.Connection(str(home / "host.db"))
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "half_done" not in tables
    assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION


def test_a_database_of_the_automation_schema_upgrades_in_order(home: Path) -> None:
    """issue 10: a host.db written by the release before retention (schema 4: automation,
    no auto_vacuum) gains the retention tables (5) and incremental vacuum (6) at the next
    start, in order, with every row kept."""
    conn = apsw.Connection(str(home / "host.db"))
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at REAL)")
    for version, step in enumerate(store.MIGRATIONS[:4], start=1):
        with conn:
            step(conn)
            conn.execute("INSERT INTO schema_version VALUES (?, 0)", (version,))
    with conn:
        conn.execute(
            "INSERT INTO cron_jobs(agent, name, schedule, timezone, action, missed, state,"
            " created_by, created_at, anchor) VALUES ('a', 'j', 'every 1h', 'UTC', '{}',"
            " 'skip', 'active', 'operator', 0, 0)"
        )
        conn.execute(
            "INSERT INTO blackboard(key, value, version, writer, updated_at)"
            " VALUES ('k', '1', 1, 'a', 0)"
        )
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    conn.close()
    s = Store(home / "host.db")
    versions = [r[0] for r in s.execute("SELECT version FROM schema_version ORDER BY version")]
    assert versions == list(range(1, SCHEMA_VERSION + 1)) and SCHEMA_VERSION == 7
    assert s.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    tables = {r[0] for r in s.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"audit_seals", "ledger_daily", "cron_jobs", "webhook_jobs"} <= tables
    assert s.execute("SELECT name FROM cron_jobs").fetchall() == [("j",)]
    assert s.execute("SELECT value FROM blackboard").fetchall() == [("1",)]
    s.close()


def test_host_db_is_readable_by_its_owner_only(home: Path) -> None:
    """issue 7 (seen and left, closed later): host.db and its -wal and -shm files were 0644
    (audit, ledger, blackboard readable by any local user where the home is not 0700). New
    files are born 0600; an older home's are tightened when the store opens them."""
    import os
    import stat

    path = home / "host.db"
    s = Store(path)
    with s.tx():
        s.execute("CREATE TABLE IF NOT EXISTS t(x)")
    modes = {p.name: stat.S_IMODE(os.stat(p).st_mode) for p in home.glob("host.db*")}
    assert set(modes) >= {"host.db", "host.db-wal", "host.db-shm"}
    assert set(modes.values()) == {0o600}, modes
    s.close()
    os.chmod(path, 0o644)
    s = Store(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    s.close()
