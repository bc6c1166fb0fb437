"""Invariant 4: the audit log is append-only and hash-chained; tampering is detected."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import apsw
import pytest

from legion.mesh import audit
from legion.store import Store


def filled(home: Path, n: int = 6) -> Path:
    store = Store(home / "host.db")
    log = audit.AuditLog(store.conn)
    for i in range(n):
        log.append(f"agent{i % 2}", "bb.put", f"shared/{i}", "allow" if i % 3 else "deny", n=i)
    store.close()
    return home / "host.db"


def cli_verify(home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "legion", "--home", str(home), "audit", "--verify"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_intact_chain_verifies(home: Path) -> None:
    db = filled(home)
    conn = apsw.Connection(str(db))
    result = audit.verify(conn)
    assert result.ok and result.checked == 6
    run = cli_verify(home)
    assert run.returncode == 0 and "6 records" in run.stdout


def test_chain_survives_reopen(home: Path) -> None:
    filled(home, 3)
    store = Store(home / "host.db")
    audit.AuditLog(store.conn).append("x", "y", "z", "allow")
    assert audit.verify(store.conn).ok
    assert audit.verify(store.conn).checked == 4
    store.close()


@pytest.mark.parametrize(
    ("tamper", "bad_seq"),
    [
        ("UPDATE audit SET decision = 'allow' WHERE seq = 4", 4),
        ("UPDATE audit SET detail = '{\"n\":99}' WHERE seq = 4", 4),
        ("UPDATE audit SET actor = 'operator' WHERE seq = 2", 2),
        ("DELETE FROM audit WHERE seq = 3", 4),
        # reorder: swap the contents of records 2 and 5, keeping their seq numbers
        (
            "UPDATE audit SET seq = -2 WHERE seq = 2; UPDATE audit SET seq = 2 WHERE seq = 5;"
            " UPDATE audit SET seq = 5 WHERE seq = -2",
            2,
        ),
        ("DELETE FROM audit WHERE seq = 1", 2),
    ],
    ids=["edit-decision", "edit-detail", "edit-actor", "delete-middle", "reorder", "delete-first"],
)
def test_tampering_is_detected_and_named(home: Path, tamper: str, bad_seq: int) -> None:
    db = filled(home)
    conn = apsw.Connection(str(db))
    conn.execute(tamper)
    conn.close()
    result = audit.verify(apsw.Connection(str(db)))
    assert not result.ok and result.bad_seq == bad_seq
    run = cli_verify(home)
    assert run.returncode == 1
    assert f"seq {bad_seq}" in run.stderr and "Traceback" not in run.stderr


def test_audit_query_filters(home: Path) -> None:
    db = filled(home)
    conn = apsw.Connection(str(db))
    assert {r.actor for r in audit.query(conn, actor="agent1")} == {"agent1"}
    assert len(audit.query(conn, limit=2)) == 2
    assert audit.query(conn, limit=2)[-1].seq == 6
    assert audit.query(conn, since=1e12) == []
