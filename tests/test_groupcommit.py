"""Group commit (issue 10): concurrent writers share one fsync, and no reply is sent before
the fsync that covers what it reports.

A real power cut cannot be made here. What can be checked honestly is the order of events
the promise rests on: the commit is written (it survives `kill -9`: tests/test_durability.py),
then an fsync of the WAL covering it completes, then the reply goes out. The tests hold the
fsync itself (the OS call, `GroupCommit.sync`) at a gate, so the order is observed on the
real host over real sockets, not inferred from timings.
"""

from __future__ import annotations

import asyncio
import errno
import os
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import apsw
import pytest

from legion.groupcommit import StorageFailed
from legion.store import Store
from legion.wire.events import BlackboardChanged
from tests.conftest import HostFactory, agent_client

pytestmark = pytest.mark.anyio

WRITERS = 32

CONFIG = """
[host]
durability = "{durability}"

[agents.alpha.permissions]
blackboard_read = ["shared/**"]
blackboard_write = ["shared/**"]
"""


class GatedSync:
    """Wraps the fsync the store calls: records each call, and can hold it at a gate."""

    def __init__(self, inner: Callable[[int], None], seq: Callable[[], int]) -> None:
        self.inner = inner
        self.seq = seq
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.events: list[tuple[str, int]] = []
        self.fail: OSError | None = None

    def __call__(self, fd: int) -> None:
        covered = self.seq()  # read in the flush thread: every commit counted has been written
        self.events.append(("fsync-start", covered))
        self.entered.set()
        self.gate.wait(30)
        if self.fail is not None:
            raise self.fail
        self.inner(fd)
        self.events.append(("fsync-end", covered))


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


async def test_concurrent_writers_share_fsyncs(home: Path) -> None:
    """issue 10: 200 concurrent durable commits need far fewer than 200 fsyncs, and each
    writer returns from flush() only once a round covering its commit has ended."""
    store = Store(home / "host.db")
    with store.tx() as conn:
        conn.execute("CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT)")
    await store.flush()
    rounds_before = store.group.rounds
    covered_at_return: list[tuple[int, int]] = []

    async def writer(i: int) -> None:
        await asyncio.sleep(0)
        with store.tx() as conn:
            conn.execute("INSERT INTO t(k, v) VALUES (?, ?)", (i, "x" * 100))
        mine = store.group.seq
        await store.flush()
        covered_at_return.append((mine, store.group.flushed))

    await asyncio.gather(*(writer(i) for i in range(200)))
    rounds = store.group.rounds - rounds_before
    assert all(flushed >= mine for mine, flushed in covered_at_return)
    assert 1 <= rounds < 100, rounds
    assert store.group.flushed == store.group.seq
    store.close()


async def test_a_reply_is_sent_only_after_the_fsync_covering_it(
    running_host: HostFactory,
) -> None:
    """issue 10, the honest stand-in for a power-loss test: with the WAL fsync held, 32
    concurrent PUTs are committed (visible to another connection) but none is answered;
    once it is released, each reply comes after an fsync that covered its commit."""
    async with running_host(CONFIG.format(durability="full")) as host:
        group = host.store.group
        gated = GatedSync(group.sync, lambda: group.seq)
        group.sync = gated
        commit_seq: dict[str, int] = {}
        sub = host.bus.open()

        async def watch_commits() -> None:
            while True:
                event = await sub.get()
                if isinstance(event, BlackboardChanged):
                    commit_seq[event.key] = group.seq  # published right after the commit

        watcher = asyncio.create_task(watch_commits())
        acks: list[tuple[str, int, int]] = []  # key, its commit seq, flushed at the reply
        try:
            async with agent_client(host.paths, "alpha") as client:
                await client.put("/v1/blackboard/entries/shared/first", json={"value": 0})
                gated.gate.clear()
                gated.entered.clear()

                async def put(i: int) -> None:
                    key = f"shared/w{i}"
                    r = await client.put(f"/v1/blackboard/entries/{key}", json={"value": i})
                    assert r.status_code == 200, r.text
                    acks.append((key, commit_seq[key], group.flushed))
                    gated.events.append(("reply", commit_seq[key]))

                tasks = [asyncio.create_task(put(i)) for i in range(WRITERS)]
                reader = apsw.Connection(str(host.store.path), flags=apsw.SQLITE_OPEN_READONLY)
                try:

                    def committed() -> int:
                        ((n,),) = reader.execute(
                            "SELECT COUNT(*) FROM blackboard WHERE key LIKE 'shared/w%'"
                        ).fetchall()  # fetchall: no read transaction left open
                        return int(n)

                    await wait_for(lambda: committed() == WRITERS)
                    assert gated.entered.is_set()
                    assert acks == [], "a write was acknowledged before its fsync"
                finally:
                    reader.close()
                gated.gate.set()
                await asyncio.gather(*tasks)
        finally:
            watcher.cancel()
            host.bus.close(sub)
            gated.gate.set()
        assert len(acks) == WRITERS
        assert all(flushed >= seq for _, seq, flushed in acks)
        # In the recorded order, every reply follows the end of an fsync covering it.
        synced = 0
        for kind, value in gated.events:
            if kind == "fsync-end":
                synced = max(synced, value)
            elif kind == "reply":
                assert value <= synced, gated.events
        # One held fsync, then few rounds for all 32 (not one per commit).
        ends = [e for e in gated.events if e[0] == "fsync-end"]
        assert len(ends) <= WRITERS // 2, gated.events


async def test_a_failed_fsync_fails_the_write_and_every_later_one(
    running_host: HostFactory,
) -> None:
    """issue 10: after an fsync error nothing can be known about the disk: the write that
    waited for it, and every later durable write, get 503 storage_failed (typed, with the
    fix); reads keep working."""
    async with running_host(CONFIG.format(durability="full")) as host:
        group = host.store.group
        gated = GatedSync(group.sync, lambda: group.seq)
        group.sync = gated
        async with agent_client(host.paths, "alpha") as client:
            assert (
                await client.put("/v1/blackboard/entries/shared/a", json={"value": 1})
            ).status_code == 200
            gated.fail = OSError(errno.EIO, os.strerror(errno.EIO))
            r = await client.put("/v1/blackboard/entries/shared/b", json={"value": 2})
            assert r.status_code == 503, r.text
            error = r.json()["error"]
            assert error["code"] == "storage_failed" and "restart the host" in error["message"]
            gated.fail = None
            r = await client.put("/v1/blackboard/entries/shared/c", json={"value": 3})
            assert r.status_code == 503
            assert r.json()["error"]["code"] == "storage_failed"
        with pytest.raises(StorageFailed):
            await host.store.flush()


async def test_durability_normal_waits_for_no_fsync(running_host: HostFactory) -> None:
    """issue 10: at "normal" a write is answered with no fsync at all."""
    async with running_host(CONFIG.format(durability="normal")) as host:
        group = host.store.group
        gated = GatedSync(group.sync, lambda: group.seq)
        group.sync = gated
        gated.gate.clear()
        try:
            async with agent_client(host.paths, "alpha") as client:
                r = await client.put("/v1/blackboard/entries/shared/a", json={"value": 1})
                assert r.status_code == 200
            assert not gated.entered.is_set()
        finally:
            gated.gate.set()


def test_the_first_fsync_also_syncs_the_wal_directory(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """issue 10: a new -wal file's directory entry must survive a power cut too: the first
    round fsyncs the WAL and the directory holding it; later rounds only the WAL."""
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    store = Store(home / "host.db")
    store.group.sync = recording_fsync
    synced.clear()
    with store.tx() as conn:  # no event loop: fsynced before tx() returns
        conn.execute("CREATE TABLE t(x)")
    assert synced == [f"{home}/host.db-wal", str(home)], synced
    synced.clear()
    with store.tx() as conn:
        conn.execute("INSERT INTO t VALUES (1)")
    assert synced == [f"{home}/host.db-wal"]
    store.close()


def wal_restarts(path: Path) -> int:
    """The WAL header's checkpoint sequence number: it counts restarts of the WAL."""
    with open(path, "rb") as f:
        header = f.read(32)
    return int(struct.unpack(">I", header[12:16])[0])


async def test_acks_stay_ordered_across_wal_checkpoints(home: Path) -> None:
    """issue 10: enough concurrent writes to checkpoint and restart the WAL several times
    (checkpoints in their own thread): every flush still covers its commit, the -wal keeps
    its inode (so our descriptor syncs the file SQLite writes), and every row is there after
    a reopen."""
    store = Store(home / "host.db")
    with store.tx() as conn:
        conn.execute("CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT)")
    await store.flush()
    wal = home / "host.db-wal"
    inode, restarts = wal.stat().st_ino, wal_restarts(wal)

    async def writer(w: int) -> None:
        for i in range(60):
            with store.tx() as conn:
                conn.execute("INSERT INTO t(k, v) VALUES (?, ?)", (w * 1000 + i, "x" * 8000))
            mine = store.group.seq
            await store.flush()
            assert store.group.flushed >= mine

    await asyncio.gather(*(writer(w) for w in range(16)))
    assert wal_restarts(wal) >= restarts + 2
    assert wal.stat().st_ino == inode
    # Checkpoints ran beside the event loop, on the checkpointer's own connection.
    assert store.checkpoints is not None
    assert store.checkpoints.done - store.checkpoints.inline >= 2
    store.close()
    again = Store(home / "host.db")
    assert again.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 16 * 60
    again.close()


LLM_CONFIG = """
[llm]
default_max_tokens = 50

[llm.models.fast]
model = "openai/fake-fast"
api_base = "{base_url}"
credential = "provider"
passthrough = true
input_cost_per_mtok = 10.0
output_cost_per_mtok = 20.0

[agents.alice]
model = "fast"

[agents.alice.budget]
daily_usd = 10.0
"""


async def test_the_reservation_is_on_disk_before_the_provider_is_called(home: Path) -> None:
    """issue 10 (invariant 5 with group commit): with the WAL fsync held, a chat call is
    reserved and committed, but the provider sees nothing until the fsync covering the
    reservation (and the call's allow record) has completed. One call makes three commits
    (allow record, reservation, settle) and waits for one fsync round, which they share."""
    from legion.config import parse_config
    from legion.gateway.vault import Vault
    from legion.host import Host
    from legion.paths import Paths
    from tests.fakes.provider import FakeProvider

    paths = Paths.resolve(home)
    vault = Vault(paths.vault_db, paths.vault_key)
    vault.set("provider", "sk-fake-provider-key-0123456789", tier="system")
    vault.close()
    async with FakeProvider() as fake:
        config = parse_config(LLM_CONFIG.format(base_url=fake.base_url))
        async with Host.running(config, paths) as host, agent_client(paths, "alice") as alice:
            group = host.store.group
            hello = {"messages": [{"role": "user", "content": "hello"}]}
            first = await alice.post("/v1/chat/completions", json=hello)  # warm-up (imports)
            assert first.status_code == 200, first.text
            fake.reset()
            await host.store.flush()
            gated = GatedSync(group.sync, lambda: group.seq)
            group.sync = gated
            gated.gate.clear()
            seq_before, rounds_before = group.seq, group.rounds
            call = asyncio.create_task(alice.post("/v1/chat/completions", json=hello))
            try:
                await wait_for(lambda: bool(host.budgets.open) and gated.entered.is_set())
                (held,) = host.store.execute("SELECT COUNT(*) FROM reservations").fetchone()
                assert held == 1  # committed (survives kill -9) ...
                await asyncio.sleep(0.2)
                assert fake.requests == []  # ... but the provider waits for the fsync
            finally:
                gated.gate.set()
            response = await call
            assert response.status_code == 200, response.text
            assert len(fake.requests) == 1
            await host.store.flush()
            commits = group.seq - seq_before
            assert commits == 3, commits  # allow record, reservation, settle
            assert group.rounds - rounds_before <= 2  # the held round, and the settle's


async def held_until_fsync(
    host_store: Store, request: Callable[[], Any], committed: Callable[[], bool]
) -> Any:
    """Run `request` with the WAL fsync held: once `committed()` says its commit is written,
    it must still be unanswered; then release the fsync and return its answer."""
    group = host_store.group
    gated = GatedSync(group.sync, lambda: group.seq)
    group.sync = gated
    gated.gate.clear()
    task = asyncio.ensure_future(request())
    try:
        await wait_for(lambda: committed() and gated.entered.is_set())
        await asyncio.sleep(0.05)  # time to answer, were it not held
        assert not task.done(), "answered before the fsync covering its commit"
    finally:
        gated.gate.set()
    return await task


async def test_a_policy_refusal_waits_for_its_audit_record(running_host: HostFactory) -> None:
    """issue 10 (invariant 4 with group commit): a request the route policy refuses never
    reaches a handler; its deny record is committed and the 403 goes out only after the
    fsync covering that record (the server waits, not each handler)."""
    async with running_host(CONFIG.format(durability="full")) as host:
        async with agent_client(host.paths, "alpha") as client:
            await client.put("/v1/blackboard/entries/shared/warm", json={"value": 0})
            await host.store.flush()
            seq = host.audit.head[0]
            r = await held_until_fsync(
                host.store,
                lambda: client.put("/v1/blackboard/entries/private/x", json={"value": 1}),
                lambda: host.audit.head[0] > seq,
            )
        assert r.status_code == 403, r.text
        (decision,) = host.store.execute(
            "SELECT decision FROM audit WHERE seq = ?", (seq + 1,)
        ).fetchone()
        assert decision == "deny"


async def test_a_commit_outside_tx_is_covered_by_the_next_flush(home: Path) -> None:
    """issue 10: a writer that commits outside `Store.tx` (a bare statement in autocommit,
    as a module added later might) is caught by the store's commit hook: the next flush
    waits for an fsync covering it, like a durable commit made through `tx`."""
    store = Store(home / "host.db")
    with store.tx() as conn:
        conn.execute("CREATE TABLE t(k INTEGER PRIMARY KEY)")
    await store.flush()
    assert store.stray_commits == 0  # commits through tx are not stray
    store.execute("INSERT INTO t(k) VALUES (1)")  # autocommit
    assert store.stray_commits == 1
    store.execute("SELECT COUNT(*) FROM t").fetchall()  # a read commits nothing
    assert store.stray_commits == 1
    flushed = await held_until_fsync(store, store.flush, lambda: True)
    assert flushed is None
    assert store.group.flushed == store.group.seq >= 2
    store.close()


async def test_a_webhook_delivery_is_answered_after_its_fsync(home: Path) -> None:
    """issue 10: the webhook listener's 202 acknowledges a queued inbox item; it is sent
    only after the fsync covering the item (the listener waits like the sockets do)."""
    import httpx

    from tests.automation.conftest import config, host_at
    from tests.automation.test_webhooks import HOOKS, add_hook, signed

    async with host_at(home, config(extra=HOOKS)) as host:
        url, secret = await add_hook(host)
        body = b'{"ref": "main"}'
        async with httpx.AsyncClient() as web:
            r = await held_until_fsync(
                host.store,
                lambda: web.post(url, content=body, headers=signed(secret, body, "d-gc")),
                lambda: host.inboxes.depth("alice") == 1,
            )
        assert r.status_code == 202, r.text
