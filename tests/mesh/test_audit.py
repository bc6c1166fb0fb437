"""Invariant 4: the audit log is append-only and hash-chained; tampering is detected.

Issue 7, item 9: the chain is signed (checkpoints under the vault-held audit key) and
anchored outside host.db, so a consistent rewrite without the key, a cut tail, a dropped
or emptied table and a head written down elsewhere are all checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import apsw
import pytest

from legion.config import parse_config
from legion.gateway.vault import Vault, read_audit_key
from legion.host import Host
from legion.mesh import audit
from legion.paths import Paths
from legion.store import Store


def audit_key(home: Path) -> tuple[bytes, bool]:
    paths = Paths.resolve(home)
    vault = Vault(paths.vault_db, paths.vault_key)
    try:
        return vault.audit_key()
    finally:
        vault.close()


def filled(home: Path, n: int = 6) -> Path:
    """A log written as the host writes it: signed, anchored, closed."""
    paths = Paths.resolve(home)
    key, created = audit_key(home)
    store = Store(paths.host_db)
    log = audit.AuditLog(
        store.conn, key=key, expect_anchor=not created, anchor_path=paths.audit_anchor
    )
    for i in range(n):
        log.append(f"agent{i % 2}", "bb.put", f"shared/{i}", "allow" if i % 3 else "deny", n=i)
    log.close()
    store.close()
    return paths.host_db


def signing(home: Path) -> audit.Signing:
    paths = Paths.resolve(home)
    found = read_audit_key(paths.vault_db, paths.vault_key)
    return audit.Signing(found.key, found.present, found.problem)


def check(home: Path, expect_head: str | None = None) -> audit.VerifyResult:
    paths = Paths.resolve(home)
    conn = apsw.Connection(str(paths.host_db))
    try:
        return audit.verify(
            conn, signing=signing(home), anchor_path=paths.audit_anchor, expect_head=expect_head
        )
    finally:
        conn.close()


def cli_verify(
    home: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("LEGION_HOME",)}
    return subprocess.run(
        [sys.executable, "-m", "legion", "--home", str(home), "audit", "--verify", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**environ, **(env or {})},
    )


def broken(run: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit 1, `BROKEN` and each of `words` on stderr, never a traceback."""
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    assert "BROKEN" in run.stderr
    for word in words:
        assert word in run.stderr, run.stderr


def sql(db: Path, text: str) -> None:
    conn = apsw.Connection(str(db))
    conn.execute(text)
    conn.close()


def rewrite(db: Path, *, from_seq: int = 1, checkpoints_too: bool = False) -> None:
    """What an attacker with host.db but without the key can do: flip every decision from
    `from_seq` on to `allow` and recompute the whole SHA-256 chain, consistently."""
    conn = apsw.Connection(str(db))
    rows = list(
        conn.execute(
            "SELECT seq, ts, actor, action, target, decision, detail FROM audit ORDER BY seq"
        )
    )
    prev = audit.GENESIS
    with conn:
        for seq, ts, actor, action, target, decision, detail in rows:
            if seq >= from_seq:
                decision = "allow"
            digest = audit.record_hash(prev, seq, ts, actor, action, target, decision, detail)
            conn.execute(
                "UPDATE audit SET decision = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                (decision, prev, digest, seq),
            )
            if checkpoints_too:
                conn.execute("UPDATE audit_checkpoints SET hash = ? WHERE seq = ?", (digest, seq))
            prev = digest
    conn.close()


# --- the chain ------------------------------------------------------------------------------


def test_intact_chain_verifies(home: Path) -> None:
    filled(home)
    result = check(home)
    assert result.ok and result.status == "ok" and result.checked == 6
    assert result.signed_seq == 6 and result.anchor_seq == 6 and result.unsigned == 0
    run = cli_verify(home)
    assert run.returncode == 0 and "6 records" in run.stdout, run.stderr
    data = json.loads(cli_verify(home, "--json").stdout)
    assert data["status"] == "ok" and data["head_seq"] == 6 and data["bad_seq"] is None


def test_chain_survives_reopen(home: Path) -> None:
    filled(home, 3)
    key, _ = audit_key(home)
    paths = Paths.resolve(home)
    store = Store(paths.host_db)
    log = audit.AuditLog(store.conn, key=key, anchor_path=paths.audit_anchor)
    log.append("x", "y", "z", "allow")
    assert audit.verify(store.conn).ok and audit.verify(store.conn).checked == 4
    log.close()
    store.close()
    assert check(home).ok


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
    sql(db, tamper)
    result = audit.verify(apsw.Connection(str(db)))
    assert not result.ok and result.bad_seq == bad_seq
    assert check(home).bad_seq == bad_seq
    broken(cli_verify(home), f"seq {bad_seq}")


def test_audit_query_filters(home: Path) -> None:
    db = filled(home)
    conn = apsw.Connection(str(db))
    assert {r.actor for r in audit.query(conn, actor="agent1")} == {"agent1"}
    assert len(audit.query(conn, limit=2)) == 2
    assert audit.query(conn, limit=2)[-1].seq == 6
    assert audit.query(conn, since=1e12) == []


# --- issue 7, item 9: signatures and the anchor -------------------------------------------


@pytest.mark.parametrize("checkpoints_too", [False, True], ids=["chain", "chain+checkpoints"])
@pytest.mark.parametrize("records", [6, 250])
def test_issue_7_a_consistent_rewrite_without_the_key_is_detected(
    home: Path, records: int, checkpoints_too: bool
) -> None:
    """issue 7: recomputing every SHA-256 (and even the checkpoints' hashes) leaves a chain
    that hashes correctly, but no signature under the vault's key vouches for it."""
    db = filled(home, records)
    rewrite(db, from_seq=2, checkpoints_too=checkpoints_too)
    assert audit.verify(apsw.Connection(str(db))).ok  # the bare chain is consistent
    result = check(home)
    assert result.status == "broken"
    assert "rewritten" in (result.reason or "") or "another hash" in (result.reason or "")
    broken(cli_verify(home))


def test_issue_7_cutting_the_tail_past_a_checkpoint_is_detected(home: Path) -> None:
    """issue 7: 250 records, checkpoints at 100, 200 and 250 (the anchor): cut back to 150.
    With the checkpoints kept, they name records that are gone; with them deleted too, the
    anchor still does; with the anchor file deleted as well, its absence is reported."""
    db = filled(home, 250)
    paths = Paths.resolve(home)
    sql(db, "DELETE FROM audit WHERE seq > 150")
    broken(cli_verify(home), "records were cut off the end")
    sql(db, "DELETE FROM audit_checkpoints WHERE seq > 150")
    result = check(home)
    assert result.status == "broken" and result.bad_seq == 250 and "anchor" in str(result.reason)
    broken(cli_verify(home), "cut off the end")
    paths.audit_anchor.unlink()
    broken(cli_verify(home), "anchor file", "missing")


def test_issue_7_a_deleted_checkpoint_is_detected(home: Path) -> None:
    """issue 7: checkpoints are never more than CHECKPOINT_EVERY records apart."""
    db = filled(home, 350)
    sql(db, "DELETE FROM audit_checkpoints WHERE seq = 200")
    broken(cli_verify(home), "checkpoints were deleted")


@pytest.mark.parametrize(
    "damage",
    [
        "DELETE FROM audit",
        "DELETE FROM audit; DELETE FROM audit_checkpoints",
        "DROP TABLE audit",
        "DROP TABLE audit_checkpoints",
        "DROP TABLE audit; DROP TABLE audit_checkpoints",
    ],
    ids=["empty", "empty-both", "drop", "drop-checkpoints", "drop-both"],
)
def test_issue_7_an_emptied_or_dropped_table_is_broken_not_a_traceback(
    home: Path, damage: str
) -> None:
    """issue 7: reported as broken with a clear message, exit 1, in text and JSON."""
    db = filled(home, 20)
    sql(db, damage)
    broken(cli_verify(home))
    run = cli_verify(home, "--json")
    assert run.returncode == 1 and "Traceback" not in run.stderr
    data = json.loads(run.stdout)
    assert data["status"] == "broken" and data["ok"] is False and data["reason"]


def test_issue_7_emptied_with_the_anchor_deleted_is_still_broken(home: Path) -> None:
    """issue 7: the vault says a signing host ran, so a log with no anchor is broken."""
    db = filled(home, 20)
    sql(db, "DELETE FROM audit; DELETE FROM audit_checkpoints")
    Paths.resolve(home).audit_anchor.unlink()
    broken(cli_verify(home), "anchor file")


def test_issue_7_expect_head_finds_a_head_that_was_cut_off(home: Path) -> None:
    """issue 7: what the anchor cannot see (it was put back to an older genuine copy) the
    operator's written-down head does: `--expect-head` must still be in the chain."""
    db = filled(home, 50)
    paths = Paths.resolve(home)
    old_anchor = paths.audit_anchor.read_text()
    key, _ = audit_key(home)
    store = Store(db)
    log = audit.AuditLog(store.conn, key=key, anchor_path=paths.audit_anchor)
    for i in range(30):
        log.append("alice", "bb.put", f"k{i}", "deny")
    _, head = log.head
    log.close()
    store.close()
    ok = cli_verify(home, "--expect-head", head)
    assert ok.returncode == 0 and "record 80: still there" in ok.stdout, ok.stderr
    assert cli_verify(home, "--expect-head", head[:16]).returncode == 0
    # the attacker cuts back to 50 and puts back the anchor of that moment
    sql(db, "DELETE FROM audit WHERE seq > 50; DELETE FROM audit_checkpoints WHERE seq > 50")
    paths.audit_anchor.write_text(old_anchor)
    assert cli_verify(home).returncode == 0  # documented: an older genuine anchor passes
    broken(cli_verify(home, "--expect-head", head), "you expected is not in the chain")
    data = json.loads(cli_verify(home, "--expect-head", head, "--json").stdout)
    assert data["status"] == "broken" and data["expect_head_seq"] is None
    bad = cli_verify(home, "--expect-head", "xyz")
    assert bad.returncode == 2 and "16 hex digits" in bad.stderr


@pytest.mark.anyio
async def test_issue_7_a_host_that_finds_the_log_cut_records_it_and_starts(home: Path) -> None:
    """issue 7: cut while the host was down, the log is anchored again at the next start
    (the host must start), but the finding is recorded in the chain, the old anchor kept,
    and `--verify` keeps reporting it."""
    paths = Paths.resolve(home)
    config = parse_config("[agents.alice]\n")
    async with Host.running(config, paths) as host:
        for i in range(40):
            host.audit.append("alice", "bb.put", f"k{i}", "deny")
    assert check(home).ok
    sql(paths.host_db, "DELETE FROM audit WHERE seq > 10")
    async with Host.running(config, paths) as host:
        found = [r for r in audit.query(host.store.conn) if r.action == audit.TAMPERED]
        assert len(found) == 1 and "cut off the end" in found[0].detail["reason"]
        assert found[0].decision == "deny" and found[0].seq == 11
        kept = Path(found[0].detail["old_anchor_kept_as"])
        assert kept.exists() and json.loads(kept.read_text())["seq"] == 40
        host.audit.append("alice", "bb.put", "after", "allow")
    run = cli_verify(home)
    broken(run, "seq 11", "tampered with", "cut off the end")


@pytest.mark.anyio
async def test_issue_7_the_host_signs_and_anchors_while_it_runs(home: Path) -> None:
    """The timed checkpoint (the host's task calls `anchor_now`) moves the anchor to the
    head, with an fsynced commit, so a running host's log verifies with nothing unsigned."""
    paths = Paths.resolve(home)
    async with Host.running(parse_config('[host]\ndurability = "normal"\n'), paths) as host:
        for i in range(130):
            host.audit.append("op", "bb.put", f"k{i}", "allow")
        mid = check(home)
        assert mid.ok and mid.signed_seq == 100 and mid.unsigned == 30
        await host.audit.anchor_now()
        now = check(home)
        assert now.ok and now.anchor_seq == 130 and now.unsigned == 0
        assert host.store.execute("PRAGMA synchronous").fetchone()[0] == 1  # restored


def test_issue_7_a_log_from_before_signing_is_unverified_until_a_host_signs_it(
    home: Path,
) -> None:
    """A log written without a key (an older legion) is not called broken, nor ok: exit 2
    until a host signs it (trust on first use, recorded in docs/audit.md)."""
    paths = Paths.resolve(home)
    store = Store(paths.host_db)
    log = audit.AuditLog(store.conn)
    for i in range(150):
        log.append("a", "b", str(i), "allow")
    store.close()
    run = cli_verify(home)
    assert run.returncode == 2 and "NOT VERIFIED" in run.stderr and "Traceback" not in run.stderr
    key, created = audit_key(home)
    assert created
    store = Store(paths.host_db)
    audit.AuditLog(store.conn, key=key, expect_anchor=False, anchor_path=paths.audit_anchor).close()
    store.close()
    assert cli_verify(home).returncode == 0


def test_issue_7_passphrase_vault_signatures_survive_the_rekey_and_need_the_passphrase(
    home: Path,
) -> None:
    """The audit key is sealed by the vault and re-sealed when it moves to a passphrase;
    `--verify` without the passphrase cannot check signatures: exit 2, saying what to set."""
    filled(home, 120)
    paths = Paths.resolve(home)
    before, _ = audit_key(home)
    vault = Vault(paths.vault_db, paths.vault_key)
    vault.use_passphrase("correct horse battery staple")
    vault.close()
    assert not paths.vault_key.exists()
    run = cli_verify(home, env={"LEGION_VAULT_PASSPHRASE": ""})
    assert run.returncode == 2 and "LEGION_VAULT_PASSPHRASE" in run.stderr
    assert "Traceback" not in run.stderr
    env = {"LEGION_VAULT_PASSPHRASE": "correct horse battery staple"}
    ok = cli_verify(home, env=env)
    assert ok.returncode == 0, ok.stderr
    wrong = cli_verify(home, env={"LEGION_VAULT_PASSPHRASE": "wrong horse battery staple"})
    assert wrong.returncode == 2 and "wrong vault key" in wrong.stderr
    vault = Vault(paths.vault_db, paths.vault_key, passphrase="correct horse battery staple")
    assert vault.audit_key() == (before, False)
    vault.close()


def test_issue_7_a_forged_or_damaged_anchor_is_broken(home: Path) -> None:
    filled(home, 20)
    paths = Paths.resolve(home)
    data = json.loads(paths.audit_anchor.read_text())
    data["seq"] = 10  # a real record, but the signature is over seq 20
    conn = apsw.Connection(str(paths.host_db))
    data["hash"] = conn.execute("SELECT hash FROM audit WHERE seq = 10").fetchone()[0]
    conn.close()
    paths.audit_anchor.write_text(json.dumps(data))
    broken(cli_verify(home), "does not verify")
    paths.audit_anchor.write_text("{not json")
    broken(cli_verify(home), "damaged")


@pytest.mark.anyio
async def test_issue_7_an_emptied_log_without_its_anchor_is_recorded_at_the_next_start(
    home: Path,
) -> None:
    """issue 7: emptied table and deleted anchor while the host was down: the vault knows a
    signing host ran on this host.db, so the next start records it. Moving host.db and
    audit.anchor away together is how an operator starts a new log on purpose."""
    paths = Paths.resolve(home)
    config = parse_config("")
    async with Host.running(config, paths) as host:
        host.audit.append("op", "bb.put", "k", "allow")
    sql(paths.host_db, "DELETE FROM audit; DELETE FROM audit_checkpoints")
    paths.audit_anchor.unlink()
    async with Host.running(config, paths) as host:
        found = [r for r in audit.query(host.store.conn) if r.action == audit.TAMPERED]
        assert len(found) == 1 and "anchor file" in found[0].detail["reason"]
    broken(cli_verify(home), "tampered with")
    for name in ("host.db", "host.db-wal", "host.db-shm", "audit.anchor"):
        (home / name).unlink(missing_ok=True)
    async with Host.running(config, paths) as host:
        assert not [r for r in audit.query(host.store.conn) if r.action == audit.TAMPERED]
        host.audit.append("op", "bb.put", "k", "allow")
    assert cli_verify(home).returncode == 0


@pytest.mark.parametrize(
    "damage",
    [
        "UPDATE audit_checkpoints SET mac = 'é' WHERE seq = 100",
        "UPDATE audit_checkpoints SET ts = 'soon' WHERE seq = 100",
        "UPDATE audit_checkpoints SET hash = x'00ff' WHERE seq = 100",
        "UPDATE audit SET ts = 'soon' WHERE seq = 3",
        "UPDATE audit SET detail = '[1]', action = 'audit.tampered', actor = 'host' WHERE seq = 5",
    ],
    ids=["non-ascii-mac", "text-ts", "blob-hash", "text-record-ts", "odd-detail"],
)
def test_crafted_values_in_host_db_are_broken_not_a_traceback(home: Path, damage: str) -> None:
    """An attacker's values of the wrong type or text reach `compare_digest`, `float()` and
    `.get()`: each is a clear BROKEN, never a traceback."""
    db = filled(home, 150)
    sql(db, damage)
    broken(cli_verify(home))


def test_crafted_anchor_values_are_broken_not_a_traceback(home: Path) -> None:
    filled(home, 20)
    paths = Paths.resolve(home)
    data = json.loads(paths.audit_anchor.read_text())
    for field, value in (("mac", "é" * 64), ("seq", "1e400"), ("ts", None), ("hash", 7)):
        paths.audit_anchor.write_text(json.dumps({**data, field: value}))
        broken(cli_verify(home), "anchor")


@pytest.mark.anyio
@pytest.mark.parametrize("table", ["audit", "audit_checkpoints"])
async def test_a_dropped_audit_table_does_not_stop_the_host(home: Path, table: str) -> None:
    """Whoever can edit host.db must not be able to stop the host: the table is recreated
    and the finding recorded (`audit.tampered`), which --verify then reports."""
    paths = Paths.resolve(home)
    config = parse_config("")
    async with Host.running(config, paths) as host:
        host.audit.append("op", "bb.put", "k", "allow")
    sql(paths.host_db, f"DROP TABLE {table}")
    broken(cli_verify(home), "missing")
    async with Host.running(config, paths) as host:
        found = [r for r in audit.query(host.store.conn) if r.action == audit.TAMPERED]
        assert len(found) == 1 and f"no {table} table" in found[0].detail["reason"]
    broken(cli_verify(home), "tampered with")


AS_NOBODY = """
import os, sys
# Python lives under /root here: load what the command needs before dropping rights.
import tomllib  # noqa: F401
import legion.cli.main, legion.gateway.vault, legion.mesh.audit, legion.store
os.setgid(65534)
os.setuid(65534)
sys.argv = ["legion", "--home", sys.argv[1], "audit", "--verify"]
legion.cli.main.main()
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_a_user_without_rights_gets_not_verified_never_broken_or_a_traceback(home: Path) -> None:
    """A local user who may read host.db but not its -shm, vault.db or the anchor cannot
    verify; that is exit 2 with what to do, never a false BROKEN or a traceback."""
    filled(home, 5)
    os.chmod(home, 0o755)
    for name in ("host.db", "host.db-wal", "host.db-shm"):
        if (home / name).exists():
            os.chmod(home / name, 0o644)
    run = subprocess.run(
        [sys.executable, "-c", AS_NOBODY, str(home)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert "NOT VERIFIED" in run.stderr and "run as the user the host runs as" in run.stderr
    assert "Traceback" not in run.stderr
