"""Retention (issue 10 item 8): host.db levels off. Audit segments are archived, sealed and
pruned, and `legion audit --verify` still spans every record ever written; ledger rows are
rolled up per day with costs and budgets exact; free pages go back to the file system.

Time is compressed with the host's injected clock; everything else is the real host, the
real store and the real CLI.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import apsw
import pytest
from typer.testing import CliRunner

from legion.config import parse_config
from legion.gateway.llm.budget import Budgets, Usage
from legion.gateway.vault import read_audit_key
from legion.host import Host
from legion.mesh import audit
from legion.mesh.audit_archive import export_segment, verify_archive
from legion.paths import Paths
from legion.retention import archive_dir
from tests.conftest import agent_client, control_client

pytestmark = pytest.mark.anyio

DAY = 86400.0
START = datetime(2026, 3, 20, 12, 0, tzinfo=UTC).timestamp()

CONFIG = """
[host]
durability = "full"

[retention]
audit_keep_days = {keep_days}
audit_keep_mb = {keep_mb}
ledger_keep_days = 2
batch_rows = 100

[llm]
fleet_daily_usd = 1000.0

[agents.alpha.budget]
daily_usd = 100.0
monthly_usd = 1000.0

[agents.beta]
"""


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def host_at(
    home: Path, clock: Clock, keep_days: float = 30, keep_mb: float = 200
) -> AsyncIterator[Host]:
    text = CONFIG.format(keep_days=keep_days, keep_mb=keep_mb)
    (home / "legion.toml").write_text(text)
    async with Host.running(parse_config(text), Paths.resolve(home), clock=clock) as host:
        yield host


def verify_home(home: Path, *, expect_head: str | None = None) -> audit.VerifyResult:
    paths = Paths.resolve(home)
    found = read_audit_key(paths.vault_db, paths.vault_key)
    conn = apsw.Connection(str(paths.host_db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return audit.verify(
            conn,
            signing=audit.Signing(found.key, found.present, found.problem),
            anchor_path=paths.audit_anchor,
            expect_head=expect_head,
            archive_dir=archive_dir(paths.home),
        )
    finally:
        conn.close()


def cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LEGION_HOME"}
    return subprocess.run(
        [sys.executable, "-m", "legion", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def write_audit(host: Host, clock: Clock, days: int, per_day: int) -> None:
    """`per_day` records on each of `days` days, ending now."""
    end = clock.now
    for d in range(days, 0, -1):
        clock.now = end - d * DAY
        for i in range(per_day):
            clock.now += 60
            host.audit.append("alpha", "bb.put", f"shared/{d}/{i}", "allow", pad="x" * 200)
    clock.now = end


async def test_issue_10_old_audit_is_archived_sealed_and_still_verifies(home: Path) -> None:
    """issue 10: records older than audit_keep_days go to a sealed, compressed, 0600
    archive; host.db keeps the rest; `--verify` starts at the seal, checks the archive
    against it, and still finds a head written down before the pruning."""
    clock = Clock()
    async with host_at(home, clock, keep_days=3) as host:
        write_audit(host, clock, days=6, per_day=50)
        old_head = host.audit.head[1]
        await host.audit.anchor_now()
        before = await host.retention.stats()
        assert before.plan.audit_archive_through is not None
        assert "older than 3 days" in before.plan.audit_reason
        result = await host.retention.prune()
        assert len(result.archived) == 1
        seg = result.archived[0]
        assert seg.first == 1 and seg.last == before.plan.audit_archive_through
        assert result.audit_records_deleted == seg.records
        first_kept = host.store.execute("SELECT MIN(seq) FROM audit").fetchone()[0]
        assert first_kept == seg.last + 1
        (oldest,) = host.store.execute("SELECT ts FROM audit WHERE seq = ?", (first_kept,))
        assert oldest[0] >= clock.now - 3 * DAY - 3600
        last = host.store.execute("SELECT action, target FROM audit ORDER BY seq DESC LIMIT 1")
        assert next(iter(last)) == ("audit.archived", seg.file)
    path = archive_dir(home) / seg.file
    assert path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in archive_dir(home).iterdir()) == [seg.file]  # no temp left
    result = verify_home(home, expect_head=old_head)
    assert result.ok, result.reason
    assert result.sealed_seq == seg.last and result.archives_checked == 1
    assert result.first_seq == seg.last + 1
    # A head written down before the pruning is still found, inside the archive.
    found = verify_home(home, expect_head=old_head[:16])
    assert found.ok and found.expect_head_seq is not None
    cli_result = cli(home, "audit", "--verify")
    assert cli_result.returncode == 0, cli_result.stderr
    assert f"records 1..{seg.last} were archived" in cli_result.stdout


async def test_issue_10_archives_verify_offline_and_tampering_is_named(home: Path) -> None:
    """issue 10: `legion db verify-archive` checks a copy anywhere; an edited record, a
    forged or deleted seal, and records deleted past the seal are all broken; a removed
    archive is listed, not an error (archives are the operator's to remove)."""
    clock = Clock()
    async with host_at(home, clock, keep_days=2) as host:
        write_audit(host, clock, days=5, per_day=30)
        await host.audit.anchor_now()
        (seg,) = (await host.retention.prune()).archived
    original = archive_dir(home) / seg.file
    elsewhere = home / "copy.jsonl.gz"
    elsewhere.write_bytes(original.read_bytes())
    ok = cli(home, "db", "verify-archive", str(elsewhere), "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)[0]["status"] == "ok"
    paths = Paths.resolve(home)
    key = read_audit_key(paths.vault_db, paths.vault_key).key
    assert verify_archive(elsewhere, None).status == "unverified"  # no key: chain only

    # An edited record inside the archive.
    lines = gzip.decompress(original.read_bytes()).splitlines(keepends=True)
    record = json.loads(lines[3])
    record["target"] = "shared/else"
    edited = home / "edited.jsonl.gz"
    edited.write_bytes(
        gzip.compress(b"".join([*lines[:3], json.dumps(record).encode() + b"\n", *lines[4:]]))
    )
    assert "edited" in (verify_archive(edited, key).reason or "")
    assert cli(home, "db", "verify-archive", str(edited)).returncode == 1
    saved = original.read_bytes()
    original.write_bytes(edited.read_bytes())
    broken = verify_home(home)
    assert not broken.ok and seg.file in (broken.reason or "")
    original.write_bytes(saved)

    # A removed archive: listed, still ok.
    original.unlink()
    removed = verify_home(home)
    assert removed.ok and removed.archives_missing == [seg.file]
    original.write_bytes(saved)

    db = apsw.Connection(str(paths.host_db))
    try:
        # A forged seal (recomputed without the key).
        db.execute("UPDATE audit_seals SET mac = ?", ("0" * 64,))
        forged = verify_home(home)
        assert not forged.ok and "does not verify" in (forged.reason or "")
        db.execute("UPDATE audit_seals SET mac = ?", (json.loads(lines[-1])["seal"]["mac"],))
        assert verify_home(home).ok
        # Records deleted past the seal: nothing vouches for them.
        db.execute("DELETE FROM audit WHERE seq <= ?", (seg.last + 5,))
        cut = verify_home(home)
        assert not cut.ok and cut.bad_seq == seg.last + 6
    finally:
        db.close()


async def test_issue_10_the_seal_stands_in_for_the_pruned_records(home: Path) -> None:
    """issue 10: with the seal deleted, the chain in host.db starts after a gap no seal
    accounts for: broken. And a pass cut short after its seal (records not yet deleted)
    verifies, and the next pass deletes them."""
    clock = Clock()
    async with host_at(home, clock, keep_days=2) as host:
        write_audit(host, clock, days=4, per_day=20)
        await host.audit.anchor_now()
        (seg,) = (await host.retention.prune()).archived
        db = apsw.Connection(str(host.store.path))
        seal = db.execute("SELECT * FROM audit_seals").fetchall()
        db.execute("DELETE FROM audit_seals")
        gone = verify_home(home)
        assert not gone.ok and gone.bad_seq == seg.last + 1
        db.execute("INSERT INTO audit_seals VALUES (?,?,?,?,?,?,?,?,?,?)", seal[0])
        db.close()
        assert verify_home(home).ok
        # Cut short: the state a crash leaves between a pass's seal and its deletions
        # (the archive written and fsynced, the seal committed, the records still there).
        clock.now += 2 * DAY
        plan = (await host.retention.stats()).plan
        assert plan.audit_archive_through is not None
        sealed = export_segment(
            host.store.path,
            seg.last + 1,
            plan.audit_archive_through,
            seal[0][3],  # the previous seal's head hash
            archive_dir(home),
            host.audit.key,  # type: ignore[arg-type]
            clock.now,
        )
        with host.store.tx() as conn:
            conn.execute(
                "INSERT INTO audit_seals(last, first, prev_hash, hash, count, sha256, file,"
                " bytes, ts, mac) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    sealed.last,
                    sealed.first,
                    sealed.prev_hash,
                    sealed.hash,
                    sealed.count,
                    sealed.sha256,
                    sealed.file,
                    sealed.size,
                    sealed.ts,
                    sealed.mac,
                ),
            )
        result = verify_home(home)
        assert result.ok, result.reason
        assert result.first_seq == seg.last + 1 and result.sealed_seq == sealed.last
        assert result.archives_checked == 2
        again = await host.retention.prune()
        assert again.audit_records_deleted >= sealed.count
        assert host.store.execute("SELECT MIN(seq) FROM audit").fetchone()[0] > sealed.last
        assert verify_home(home).ok


async def test_issue_10_size_limit_prunes_the_oldest_and_vacuum_shrinks_the_file(
    home: Path,
) -> None:
    """issue 10: beyond audit_keep_mb the oldest records go (to 90% of it), and
    incremental vacuum gives the pages back: the file shrinks."""
    clock = Clock()
    async with host_at(home, clock, keep_days=3650, keep_mb=1) as host:
        with host.store.tx():  # ~3 MB of audit, written in one go
            for i in range(6000):
                host.audit.append("alpha", "bb.put", f"k/{i}", "allow", pad="y" * 300)
        await host.audit.anchor_now()
        before = await host.retention.stats()
        assert before.audit.bytes > 2e6 and "beyond 1 MB" in before.plan.audit_reason
        result = await host.retention.prune()
        after = await host.retention.stats()
        assert after.audit.bytes <= 1e6
        assert result.pages_vacuumed > 0 and after.free_pages == 0
        assert result.bytes_after < result.bytes_before * 0.7
        assert after.auto_vacuum == "incremental"
    assert verify_home(home).ok


def ledger_totals(host: Host) -> dict[tuple[str, str], float]:
    return {k: round(v, 9) for k, v in host.budgets.spent.items() if v}


async def test_issue_10_ledger_rollup_keeps_costs_and_budgets_exact(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """issue 10: ledger rows of days older than ledger_keep_days become one row per day,
    agent, model and kind; the budget windows loaded at the next start and `legion costs`
    are the same before and after."""
    clock = Clock()
    async with host_at(home, clock) as host:
        for day in range(19, -1, -1):  # March 1 to March 20
            for i in range(15):
                clock.now = START - day * DAY + i * 60
                for agent, cost in (("alpha", 0.01 + i * 1e-4), ("beta", 0.003)):
                    r = host.budgets.reserve(agent, "fast", "openai/m", f"r{day}-{i}", 0.05)
                    host.budgets.settle(r, Usage(100 + i, 10, cost), status="ok")
        clock.now = START
        spent_before = ledger_totals(host)
        costs_before = run_costs(home, monkeypatch)
        plan = (await host.retention.stats()).plan
        assert plan.ledger_rows == 2 * 15 * 17  # March 1..17: the 18th is 2 days old, stays
        assert plan.ledger_days[0] == "2026-03-01" and plan.ledger_days[-1] == "2026-03-17"
        result = await host.retention.prune()
        assert result.ledger_rows_rolled_up == plan.ledger_rows
        (rollups,) = host.store.execute("SELECT COUNT(*) FROM ledger_daily").fetchone()
        assert rollups == 2 * 17
        (calls,) = host.store.execute("SELECT SUM(calls) FROM ledger_daily").fetchone()
        assert calls == plan.ledger_rows
    async with host_at(home, clock) as host:  # budgets reload: rollups plus live rows
        assert ledger_totals(host) == spent_before
        assert host.budgets.spent_month("alpha") == pytest.approx(
            sum(v for (a, k), v in spent_before.items() if a == "alpha" and len(k) == 7)
        )
    assert run_costs(home, monkeypatch) == costs_before


def run_costs(home: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """`legion costs --json` as of START (the CLI reads the wall clock)."""
    from legion.cli import costs_cmd
    from legion.cli.main import app

    monkeypatch.setattr(costs_cmd.time, "time", lambda: START)
    result = CliRunner().invoke(app, ["--home", str(home), "costs", "--json"])
    monkeypatch.undo()
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    for agent in data["agents"]:
        for key in ("today_usd", "month_usd"):
            agent[key] = round(agent[key], 9)
        for model in agent["models"]:
            for key in ("today_usd", "month_usd"):
                model[key] = round(model[key], 9)
    return dict(data)


async def test_issue_10_db_stats_and_prune_over_the_control_socket(home: Path) -> None:
    """issue 10: `legion db stats` shows sizes and the plan; `legion db prune --dry-run`
    changes nothing; `legion db prune` runs a pass (audited); stats work with the host
    stopped too."""
    clock = Clock()
    async with host_at(home, clock, keep_days=2) as host:
        write_audit(host, clock, days=4, per_day=20)
        await host.audit.anchor_now()
        async with control_client(host.paths) as control:
            stats = (await control.get("/v1/db/stats")).json()
            names = {t["name"] for t in stats["tables"]}
            assert {"audit", "ledger", "blackboard", "audit_seals"} <= names
            assert stats["plan"]["audit_archive_through"] is not None
            dry = (await control.post("/v1/db/prune", json={"dry_run": True})).json()
            assert dry["dry_run"] and dry["archived"] == []
            assert host.store.execute("SELECT COUNT(*) FROM audit_seals").fetchone()[0] == 0
            bad = await control.post("/v1/db/prune", json={"dry_run": "yes"})
            assert bad.status_code == 422
            done = (await control.post("/v1/db/prune", json={})).json()
            assert len(done["archived"]) == 1
        (action,) = host.store.execute(
            "SELECT action FROM audit WHERE actor = 'operator' ORDER BY seq DESC LIMIT 1"
        )
        assert action[0] == "db.prune"
    offline = cli(home, "db", "stats", "--json")
    assert offline.returncode == 0, offline.stderr
    data = json.loads(offline.stdout)
    assert data["audit"]["seals"] == 1 and data["audit"]["archives"] == 1
    # The CLI plans with the wall clock (these records are from March): all but the newest.
    assert data["plan"]["audit_archive_through"] == data["audit"]["head_seq"] - 1
    human = cli(home, "db", "stats")
    assert "the next pass would:" in human.stdout and "archive and delete" in human.stdout
    assert cli(home, "db", "prune").returncode == 3  # needs the host: says how to start it


async def test_issue_10_the_periodic_pass_runs_on_the_hosts_task_group(home: Path) -> None:
    """issue 10: with interval_s = 1 a pass happens by itself, and again."""
    text = CONFIG.format(keep_days=30, keep_mb=200).replace(
        "batch_rows = 100", "batch_rows = 100\ninterval_s = 1.0"
    )
    async with Host.running(parse_config(text), Paths.resolve(home)) as host:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while host.retention.passes < 2:
            assert loop.time() < deadline, "no retention pass within 20 s"
            await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_issue_10_soak_the_database_levels_off(home: Path) -> None:
    """issue 10: twelve simulated days of a busy fleet (audit records and LLM calls every
    simulated hour, a retention pass every six): with a day of audit and two of ledger
    kept, host.db stops growing after the first days, while what was written keeps
    growing; the whole history still verifies."""
    clock = Clock(datetime(2026, 3, 1, 0, 0, tzinfo=UTC).timestamp())
    text = CONFIG.format(keep_days=1, keep_mb=200)
    (home / "legion.toml").write_text(text)
    sizes: list[int] = []
    written = 0
    async with Host.running(parse_config(text), Paths.resolve(home), clock=clock) as host:
        budgets: Budgets = host.budgets
        for hour in range(12 * 24):
            for i in range(60):
                clock.now += 60
                host.audit.append("alpha", "bb.put", f"shared/{hour}/{i}", "allow", pad="z" * 150)
                if i % 4 == 0:
                    r = budgets.reserve("alpha", "fast", "openai/m", f"h{hour}-{i}", 0.01)
                    budgets.settle(r, Usage(120, 30, 0.001), status="ok")
                written += 1
            await host.store.flush()
            if hour % 6 == 5:
                await host.audit.anchor_now()
                await host.retention.prune()
                sizes.append(host.store.db_bytes())
    per_day = [sizes[d * 4 + 3] for d in range(12)]  # the size at the end of each day
    print("host.db bytes at the end of each simulated day:", per_day)
    assert written == 12 * 24 * 60
    steady = per_day[3:]
    assert max(steady) <= 1.25 * per_day[3], per_day
    assert max(steady) < 1.6 * min(steady), per_day
    result = verify_home(home)
    assert result.ok, result.reason
    assert result.sealed_seq > written * 0.8 and result.archives_checked >= 10


async def test_issue_10_a_damaged_rollup_never_stops_the_host_or_the_cli(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """issue 10 (attack: whoever can edit host.db): a rollup row with a day that is not a
    date is skipped by the budgets at start and by `legion costs`, never a traceback."""
    clock = Clock()
    async with host_at(home, clock) as host:
        with host.store.tx() as conn:
            conn.execute(
                "INSERT INTO ledger_daily VALUES ('2026-03-02', 'alpha', 'fast', 'p', 'chat',"
                " 1, 1, 1, 0.5, 0.5, 0, 0), ('not-a-day', 'alpha', 'fast', 'p', 'chat',"
                " 1, 1, 1, 99.0, 99.0, 0, 0), ('2026-03-03', 'alpha', 'fast', 'p', 'chat',"
                " 1, 1, 1, X'00', 1.0, 0, 0)"
            )
    async with host_at(home, clock) as host:
        assert host.budgets.spent_month("alpha") == pytest.approx(0.5)
    costs = run_costs(home, monkeypatch)
    (alpha,) = [a for a in costs["agents"] if a["agent"] == "alpha"]  # type: ignore[union-attr,index]
    assert alpha["month_usd"] == pytest.approx(0.5)


def test_issue_10_damaged_and_hostile_archive_files_are_named_never_a_hang(home: Path) -> None:
    """issue 10 (attack: a damaged or hostile file given to `legion db verify-archive`): junk,
    a gzip cut short, a corrupt deflate stream, a FIFO (never waited on) and a gzip bomb
    (one endless line, refused at 16 MiB, not read into memory) are each broken with a
    reason; the CLI exits 1 with no traceback."""
    good_line = json.dumps({"seq": 1}).encode() + b"\n"
    whole = gzip.compress(good_line * 200)
    bomb = home / "bomb.jsonl.gz"
    with gzip.open(bomb, "wb", compresslevel=1) as f:
        chunk = b"a" * (1024 * 1024)
        for _ in range(40):  # 40 MiB without a newline, about 40 KB on disk
            f.write(chunk)
    corrupt = bytearray(gzip.compress(os.urandom(4096)))
    corrupt[20:40] = b"\xff" * 20
    cases = {
        "junk": b"this is not gzip at all\n",
        "cut": whole[: len(whole) // 2],
        "corrupt": bytes(corrupt),
    }
    files = []
    for name, data in cases.items():
        path = home / f"{name}.jsonl.gz"
        path.write_bytes(data)
        files.append(path)
    fifo = home / "fifo.jsonl.gz"
    os.mkfifo(fifo)
    files += [fifo, bomb]
    for path in files:
        result = verify_archive(path, None)
        assert result.status == "broken" and result.reason, (path.name, result)
    assert "regular file" in (verify_archive(fifo, None).reason or "")
    assert "longer than" in (verify_archive(bomb, None).reason or "")
    run = cli(home, "db", "verify-archive", *map(str, files), "--json")
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    assert [r["status"] for r in json.loads(run.stdout)] == ["broken"] * len(files)


async def test_issue_10_a_burst_past_audit_keep_mb_prunes_before_the_interval(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """issue 10 (attack: an agent floods requests, each audited): with an hour between
    passes, host.db could grow by gigabytes past `audit_keep_mb` before the next one. The
    size is estimated every SIZE_CHECK_S; past the limit a pass runs at once and brings
    the audit log back under it. A pass that cannot (every record too new to go) is not
    repeated until the regular one."""
    import legion.retention

    monkeypatch.setattr(legion.retention, "SIZE_CHECK_S", 0.05)
    clock = Clock()
    text = CONFIG.format(keep_days=30, keep_mb=1)  # interval_s: the default hour
    async with Host.running(parse_config(text), Paths.resolve(home), clock=clock) as host:
        for i in range(4000):  # about 2.5 MB with indexes
            clock.now += 0.01
            host.audit.append("alpha", "bb.put", f"shared/{i}", "allow", pad="x" * 300)
        await host.audit.anchor_now()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30

        def sealed() -> int:
            (last,) = host.store.execute("SELECT MAX(last) FROM audit_seals").fetchone()
            return int(last or 0)

        while sealed() < 2000:  # a pass that ran before the anchor moved may come first
            assert loop.time() < deadline, "no early pass archived within 30 s"
            await asyncio.sleep(0.05)
        while host.retention._lock.locked():
            await asyncio.sleep(0.02)
        stats = await host.retention.stats()
        assert stats.audit.bytes < 1e6, stats.audit
        assert stats.audit.sealed_seq > 2000
        passes = host.retention.passes
        for _ in range(20):  # under the limit now: no pass at each check
            await asyncio.sleep(0.05)
        assert host.retention.passes == passes
    assert verify_home(home).ok


async def test_issue_10_an_early_pass_that_cannot_get_under_is_not_repeated_at_once(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """issue 10: past `audit_keep_mb` with every record newer than the anchor (none may
    go yet), one early pass runs, then none while the anchor stays where it is (a big
    host.db is not measured, a full scan, every SIZE_CHECK_S); once the anchor moves past
    those records, the next early pass archives them."""
    import legion.retention

    monkeypatch.setattr(legion.retention, "SIZE_CHECK_S", 0.05)
    monkeypatch.setattr(audit, "CHECKPOINT_EVERY_S", 3600.0)  # the anchor stays behind
    clock = Clock()
    text = CONFIG.format(keep_days=30, keep_mb=1)
    async with Host.running(parse_config(text), Paths.resolve(home), clock=clock) as host:
        for i in range(4000):
            clock.now += 0.01
            host.audit.append("alpha", "bb.put", f"shared/{i}", "allow", pad="x" * 300)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while host.retention.passes < 1:
            assert loop.time() < deadline, "no early pass within 30 s"
            await asyncio.sleep(0.02)
        quiet = loop.time() + 0.6
        while loop.time() < quiet:
            await asyncio.sleep(0.05)
        assert host.retention.passes == 1  # not one per check
        (sealed,) = host.store.execute("SELECT COUNT(*) FROM audit_seals").fetchone()
        assert sealed == 0  # nothing could go
        await host.audit.anchor_now()
        while host.retention.passes < 2:  # the anchor moved: the next one archives
            assert loop.time() < deadline, "no early pass after the anchor moved"
            await asyncio.sleep(0.05)
        while host.retention._lock.locked():
            await asyncio.sleep(0.02)
        (sealed,) = host.store.execute("SELECT COUNT(*) FROM audit_seals").fetchone()
        assert sealed >= 1


async def test_issue_10_retention_racing_writers_loses_nothing_and_still_verifies(
    home: Path,
) -> None:
    """issue 10 (attack: retention racing writers): eight agents' worth of writers PUT over
    the socket (each PUT and its audit record committed and fsynced before the 200) while
    passes archive, roll up and vacuum in a loop with the smallest limits. Every
    acknowledged write is there, the ledger's total is exact, and the whole chain, archives
    included, verifies."""
    clock = Clock()
    text = CONFIG.format(keep_days=1, keep_mb=1).replace(
        "[agents.beta]", '[agents.beta]\n[agents.alpha.permissions]\nblackboard_write = ["w/**"]'
    )
    async with Host.running(parse_config(text), Paths.resolve(home), clock=clock) as host:
        budgets: Budgets = host.budgets
        for i in range(3000):  # old records and ledger rows for the passes to take
            clock.now += 60
            host.audit.append("alpha", "bb.put", f"old/{i}", "allow", pad="y" * 300)
            if i % 10 == 0:
                r = budgets.reserve("alpha", "fast", "openai/m", f"old-{i}", 0.01)
                budgets.settle(r, Usage(10, 10, 0.001), status="ok")
        clock.now += 3 * DAY
        await host.audit.anchor_now()
        acked: dict[str, int] = {}
        stop = asyncio.Event()

        async def writer(w: int) -> None:
            async with agent_client(host.paths, "alpha") as alpha:
                n = 0
                while not stop.is_set():
                    key = f"w/{w}/{n % 20}"
                    r = await alpha.put(f"/v1/blackboard/entries/{key}", json={"value": n})
                    assert r.status_code == 200, r.text
                    acked[key] = n
                    n += 1

        async def passes() -> int:
            done = 0
            while not stop.is_set():
                await host.audit.anchor_now()
                await host.retention.prune()
                done += 1
            return done

        tasks = [asyncio.create_task(writer(w)) for w in range(8)]
        pruner = asyncio.create_task(passes())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while (host.retention.passes < 4 or len(acked) < 160) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*tasks)
        assert await pruner >= 4
        for key, n in acked.items():
            entry = host.blackboard.get(key)
            assert entry is not None and entry.value == n, (key, entry)
        stats = await host.retention.stats()
        assert stats.audit.sealed_seq >= 3000 and stats.ledger.rows == 0
        (total,) = host.store.execute("SELECT SUM(cost_usd) FROM ledger_daily").fetchone()
        assert total == pytest.approx(300 * 0.001)
    result = verify_home(home)
    assert result.ok, result.reason
    assert result.archives_checked >= 1
