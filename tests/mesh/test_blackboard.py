"""Blackboard: versions, TTL on every read path, CAS, claims, watch, limits."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from legion.config import BlackboardConfig, parse_config
from legion.errors import BadRequest, Conflict, Locked, TooLarge
from legion.events import EventBus
from legion.host import Host
from legion.mesh.blackboard import Blackboard
from legion.paths import Paths
from legion.store import Store
from tests.conftest import agent_client, control_client

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_board(tmp: Path, clock: Clock, **cfg: int) -> Blackboard:
    return Blackboard(Store(tmp / "host.db"), BlackboardConfig(**cfg), EventBus(), clock=clock)


async def test_versions_writer_and_time(home: Path) -> None:
    clock = Clock()
    bb = make_board(home, clock)
    first = bb.put("shared/plan", {"step": 1}, "alice")
    clock.now += 5
    second = bb.put("shared/plan", {"step": 2}, "bob")
    assert (first.version, first.writer, first.updated_at) == (1, "alice", 1_000_000.0)
    assert (second.version, second.writer, second.updated_at) == (2, "bob", 1_000_005.0)
    assert bb.get("shared/plan") is not None
    assert bb.get("shared/plan").value == {"step": 2}  # type: ignore[union-attr]


async def test_state_survives_reopen(home: Path) -> None:
    clock = Clock()
    bb = make_board(home, clock)
    bb.put("a/b", [1, 2], "alice")
    bb.claim("a/lock", "alice", 60)
    bb.store.close()
    again = make_board(home, clock)
    entry = again.get("a/b")
    assert entry is not None and entry.value == [1, 2] and entry.version == 1
    with pytest.raises(Locked):
        again.claim("a/lock", "bob", 60)


async def test_ttl_expired_entry_never_returned_by_get_list_or_watch(home: Path) -> None:
    clock = Clock()
    bb = make_board(home, clock)
    start = await bb.watch("**", None, 0)
    bb.put("t/short", "soon gone", "alice", ttl_s=10)
    bb.put("t/long", "stays", "alice")
    clock.now += 10  # exactly at expiry: expired
    assert bb.get("t/short") is None
    assert [e.key for e in bb.entries("t/")] == ["t/long"]
    watched = await bb.watch("**", start.cursor, 0)
    assert [c.key for c in watched.changes] == ["t/long"]
    # still in the database until collected, then gone and an "expired" change is emitted
    assert bb.store.execute("SELECT COUNT(*) FROM blackboard").fetchone()[0] == 2
    assert bb.collect() == 1
    assert bb.store.execute("SELECT COUNT(*) FROM blackboard").fetchone()[0] == 1
    after = await bb.watch("t/*", watched.cursor, 0)
    assert [(c.op, c.key, c.value) for c in after.changes] == [("expired", "t/short", None)]


async def test_expired_key_can_be_recreated_from_version_one(home: Path) -> None:
    clock = Clock()
    bb = make_board(home, clock)
    bb.put("k", 1, "alice", ttl_s=1)
    clock.now += 2
    assert bb.put("k", 2, "alice", expected_version=0).version == 1


async def test_cas(home: Path) -> None:
    bb = make_board(home, Clock())
    assert bb.put("c", "a", "alice", expected_version=0).version == 1
    with pytest.raises(Conflict) as err:
        bb.put("c", "b", "bob", expected_version=0)
    assert err.value.status == 409 and err.value.detail == {"expected": 0, "current": 1}
    assert bb.put("c", "b", "bob", expected_version=1).version == 2
    with pytest.raises(Conflict):
        bb.put("c", "x", "alice", expected_version=1)
    assert bb.get("c").value == "b"  # type: ignore[union-attr]


async def test_claims_exclusive_until_release_or_expiry(home: Path) -> None:
    clock = Clock()
    bb = make_board(home, clock)
    bb.claim("jobs/1", "alice", 30)
    with pytest.raises(Locked) as err:
        bb.claim("jobs/1", "bob", 30)
    assert err.value.status == 423 and err.value.detail["owner"] == "alice"
    with pytest.raises(Locked):
        bb.put("jobs/1", "mine", "bob")  # a claimed key is written only by its owner
    bb.put("jobs/1", "working", "alice")
    with pytest.raises(Locked):
        bb.release("jobs/1", "bob")
    assert bb.release("jobs/1", "alice") is True
    bb.claim("jobs/1", "bob", 30)
    clock.now += 31
    assert bb.claim_of("jobs/1") is None
    assert bb.claim("jobs/1", "carol", 30).owner == "carol"


async def test_limits_give_typed_errors(home: Path) -> None:
    bb = make_board(home, Clock(), max_key_length=16, max_value_bytes=64)
    with pytest.raises(BadRequest) as err:
        bb.put("k" * 17, 1, "alice")
    assert err.value.code == "key_too_long"
    with pytest.raises(TooLarge) as too_big:
        bb.put("k", "x" * 100, "alice")
    assert too_big.value.code == "value_too_large" and too_big.value.status == 413
    for bad in ["/lead", "trail/", "dou//ble", "sp ace", "", "uni\u00e9"]:
        with pytest.raises(BadRequest):
            bb.put(bad, 1, "alice")
    with pytest.raises(BadRequest):
        bb.put("k", float("nan"), "alice")
    assert bb.get("k") is None  # nothing half-applied


async def test_watch_long_poll_wakes_on_matching_change(home: Path) -> None:
    bb = make_board(home, Clock())
    start = await bb.watch("jobs/*", None, 0)

    async def writer() -> None:
        await asyncio.sleep(0.05)
        bb.put("other/x", 1, "alice")  # does not match: watcher keeps waiting
        await asyncio.sleep(0.05)
        bb.put("jobs/7", {"id": 7}, "alice")

    task = asyncio.create_task(writer())
    result = await bb.watch("jobs/*", start.cursor, 5)
    await task
    assert [(c.op, c.key, c.value) for c in result.changes] == [("put", "jobs/7", {"id": 7})]
    assert not result.reset


async def test_watch_stale_cursor_resets(home: Path) -> None:
    bb = make_board(home, Clock(), watch_history=100)
    start = await bb.watch("**", None, 0)
    for i in range(150):
        bb.put(f"k/{i}", i, "alice")
    result = await bb.watch("**", start.cursor, 0)
    assert result.reset and result.changes == []
    assert (await bb.watch("**", 12, 0)).reset  # a cursor from another life of the host


CONFIG = """
[teams.red]
[agents.alice]
team = "red"
[agents.alice.permissions]
blackboard_read = ["shared/**"]
blackboard_write = ["shared/**"]
[agents.bob]
[agents.bob.permissions]
blackboard_read = ["shared/public/*"]
blackboard_write = ["shared/**"]
"""


async def test_ttl_through_the_agent_socket_on_every_read_path(home: Path) -> None:
    clock = Clock()
    paths = Paths.resolve(home)
    async with (
        Host.running(parse_config(CONFIG), paths, clock=clock),
        agent_client(paths, "alice") as alice,
    ):
        start = (await alice.post("/v1/blackboard/watch", json={"pattern": "**"})).json()
        put = await alice.put("/v1/blackboard/entries/shared/t", json={"value": 1, "ttl_s": 3})
        assert put.status_code == 200 and put.json()["expires_at"] == clock.now + 3
        clock.now += 3
        got = await alice.get("/v1/blackboard/entries/shared/t")
        assert got.status_code == 404 and got.json()["error"]["code"] == "key_not_found"
        listed = await alice.get("/v1/blackboard/entries", params={"prefix": "shared/"})
        assert listed.json()["entries"] == []
        watched = await alice.post(
            "/v1/blackboard/watch", json={"pattern": "**", "cursor": start["cursor"]}
        )
        assert watched.json()["changes"] == []


async def test_list_and_watch_show_only_readable_keys(home: Path) -> None:
    paths = Paths.resolve(home)
    async with (
        Host.running(parse_config(CONFIG), paths),
        agent_client(paths, "alice") as alice,
        agent_client(paths, "bob") as bob,
    ):
        start = (await bob.post("/v1/blackboard/watch", json={"pattern": "**"})).json()
        for key in ["shared/public/a", "shared/private/b", "teams/red/c"]:
            assert (await alice.put(f"/v1/blackboard/entries/{key}", json={"value": 1})).is_success
        listed = (await bob.get("/v1/blackboard/entries")).json()["entries"]
        assert [e["key"] for e in listed] == ["shared/public/a"]
        seen = (
            await bob.post(
                "/v1/blackboard/watch", json={"pattern": "**", "cursor": start["cursor"]}
            )
        ).json()
        assert [c["key"] for c in seen["changes"]] == ["shared/public/a"]
        mine = (await alice.get("/v1/blackboard/entries")).json()["entries"]
        assert [e["key"] for e in mine] == ["shared/private/b", "shared/public/a", "teams/red/c"]


async def test_fifty_concurrent_claimers_exactly_one_wins(home: Path) -> None:
    names = [f"a{i}" for i in range(50)]
    config = "\n".join(
        f'[agents.{n}]\n[agents.{n}.permissions]\nblackboard_write = ["jobs/**"]\n' for n in names
    )
    paths = Paths.resolve(home)
    async with Host.running(parse_config(config), paths) as host:
        clients = [agent_client(paths, n) for n in names]
        try:
            results = await asyncio.gather(
                *(
                    c.post("/v1/blackboard/claim", json={"key": "jobs/42", "ttl_s": 60})
                    for c in clients
                )
            )
        finally:
            await asyncio.gather(*(c.aclose() for c in clients))
        codes = sorted(r.status_code for r in results)
        assert codes == [200] + [423] * 49
        winner = next(r.json()["owner"] for r in results if r.status_code == 200)
        losers = [r.json() for r in results if r.status_code == 423]
        assert all(body["error"]["detail"]["owner"] == winner for body in losers)
        assert host.blackboard.claim_of("jobs/42").owner == winner  # type: ignore[union-attr]


async def test_cas_and_claim_over_the_socket(home: Path) -> None:
    paths = Paths.resolve(home)
    async with (
        Host.running(parse_config(CONFIG), paths),
        agent_client(paths, "alice") as alice,
        agent_client(paths, "bob") as bob,
        control_client(paths) as operator,
    ):
        ok = await alice.post(
            "/v1/blackboard/cas", json={"key": "shared/n", "expected_version": 0, "value": 1}
        )
        assert ok.status_code == 200
        stale = await bob.post(
            "/v1/blackboard/cas", json={"key": "shared/n", "expected_version": 0, "value": 2}
        )
        assert stale.status_code == 409
        assert stale.json()["error"] == {
            "code": "version_conflict",
            "message": stale.json()["error"]["message"],
            "status": 409,
            "detail": {"expected": 0, "current": 1},
        }
        claim = await alice.post("/v1/blackboard/claim", json={"key": "shared/n"})
        assert claim.status_code == 200
        blocked = await bob.put("/v1/blackboard/entries/shared/n", json={"value": 3})
        assert blocked.status_code == 423 and blocked.json()["error"]["code"] == "claimed"
        release = await bob.post("/v1/blackboard/release", json={"key": "shared/n"})
        assert release.status_code == 423
        assert (await alice.post("/v1/blackboard/release", json={"key": "shared/n"})).json()[
            "released"
        ]
        assert (await bob.put("/v1/blackboard/entries/shared/n", json={"value": 3})).is_success
        entry = (await operator.get("/v1/blackboard/entries/shared/n")).json()
        assert (entry["value"], entry["version"], entry["writer"]) == (3, 2, "bob")


async def test_a_key_with_a_trailing_newline_is_refused(home: Path) -> None:
    bb = make_board(home, Clock())
    with pytest.raises(BadRequest):
        bb.put("notes/a\n", 1, "alice")


# --- the ordered index (issue 10 item 9) ------------------------------------------------

KEY_PARTS = ["a", "a-b", "a.b", "a/b", "a0", "b", "ab", "a/b/c", "a:x", "a@", "Z", "a="]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    keys=st.lists(
        st.lists(st.sampled_from(KEY_PARTS), min_size=1, max_size=3).map("/".join),
        max_size=25,
        unique=True,
    ),
    prefix=st.text(alphabet="ab/.-:0Z@=\u00e9%", max_size=4),
    limit=st.integers(min_value=1, max_value=30),
    ttl_every=st.integers(min_value=2, max_value=5),
)
def test_issue_10_prefix_listing_matches_a_scan_and_sort(
    keys: list[str], prefix: str, limit: int, ttl_every: int
) -> None:
    """issue 10: the range scan returns exactly what scanning and sorting every key did
    (live, readable, in key order, up to the limit), for prefixes at the edges of the key
    alphabet ('-', '.', '/' sort next to each other), and none for a prefix no key has."""
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        clock = Clock()
        bb = make_board(Path(tmp), clock)
        expiring = set()
        for i, key in enumerate(keys):
            ttl = 5.0 if i % ttl_every == 0 else None
            bb.put(key, {"i": i}, "alice", ttl_s=ttl)
            if ttl is not None:
                expiring.add(key)
        clock.now += 10
        readable = lambda key: not key.endswith("b")  # noqa: E731
        expected = sorted(k for k in keys if k.startswith(prefix) and k not in expiring)
        assert [e.key for e in bb.entries(prefix)] == expected
        listed = bb.entries(prefix, readable=readable, limit=limit)
        assert [e.key for e in listed] == [k for k in expected if readable(k)][:limit]
        for entry in listed:
            assert entry.value == {"i": keys.index(entry.key)}
        bb.store.close()


async def test_issue_10_start_loads_no_entry_and_the_cache_is_bounded(home: Path) -> None:
    """issue 10: a host with many keys starts without reading them; the rows it touches
    stay in a bounded cache; every key still reads right (cold ones from SQLite)."""
    clock = Clock()
    store = Store(home / "host.db")
    with store.tx() as conn:  # 5000 keys written straight to the table
        conn.executemany(
            "INSERT INTO blackboard(key, value, version, writer, updated_at, expires_at)"
            " VALUES (?,?,?,?,?,?)",
            [
                (f"k/{i:05d}", json.dumps({"n": i}), 1, "alice", clock.now, None)
                for i in range(5000)
            ],
        )
    bb = Blackboard(store, BlackboardConfig(), EventBus(), clock=clock, cache_rows=100)
    assert bb.cached == (0, 0)
    for i in range(0, 5000, 7):
        entry = bb.get(f"k/{i:05d}")
        assert entry is not None and entry.value == {"n": i} and entry.version == 1
    assert bb.cached[0] == 100
    assert bb.put("k/00007", {"n": "new"}, "bob").version == 2  # version from the old row
    assert [e.key for e in bb.entries("k/0499")] == [f"k/0499{d}" for d in range(10)]
    small = Blackboard(store, BlackboardConfig(), EventBus(), clock=clock, cache_bytes=4096)
    for i in range(300):
        assert small.get(f"k/{i:05d}") is not None
    assert small.cached[1] <= 4096
    store.close()


async def test_issue_10_collect_works_in_batches(home: Path) -> None:
    """issue 10: expired entries are deleted in short batches, each reported to watchers."""
    clock = Clock()
    bb = make_board(home, clock)
    with bb.store.tx() as conn:
        conn.executemany(
            "INSERT INTO blackboard(key, value, version, writer, updated_at, expires_at)"
            " VALUES (?,?,?,?,?,?)",
            [(f"t/{i:04d}", "1", 1, "alice", clock.now, clock.now + 1) for i in range(2500)],
        )
    bb.put("t/stays", 1, "alice")
    start = await bb.watch("t/*", None, 0)
    clock.now += 2
    assert [bb.collect(batch=1000) for _ in range(4)] == [1000, 1000, 500, 0]
    assert bb.store.execute("SELECT COUNT(*) FROM blackboard").fetchone()[0] == 1
    changes = (await bb.watch("t/*", start.cursor, 0)).changes
    assert len(changes) == 2500 and {c.op for c in changes} == {"expired"}


PATTERNS = ["a/**", "a-b", "Z*", "**", "a?", "a.b/*", "b", "ab/**", "a:*", "**/b", "*?/a", "[a]"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    keys=st.lists(
        st.lists(st.sampled_from(KEY_PARTS), min_size=1, max_size=3).map("/".join),
        max_size=25,
        unique=True,
    ),
    prefix=st.text(alphabet="ab/.-:0Z", max_size=3),
    patterns=st.lists(st.sampled_from(PATTERNS), max_size=3, unique=True),
)
def test_issue_10_listing_scans_only_what_the_reader_may_read(
    keys: list[str], prefix: str, patterns: list[str]
) -> None:
    """issue 10: a listing scans only the ranges the caller's read patterns start with,
    filtered inside SQLite by GLOBs covering them (patterns that start with a wildcard, a
    `[` that no key has), and still returns exactly the readable keys under the prefix, in
    order, with windows of SCAN_CHUNK keys small enough here to be crossed."""
    from legion.mesh import blackboard
    from legion.mesh.blackboard import literal_prefix, sql_glob
    from legion.mesh.globs import any_match

    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        bb = make_board(Path(tmp), Clock())
        for key in keys:
            bb.put(key, 1, "alice")
        readable = lambda key: any_match(patterns, key)  # noqa: E731
        within = [literal_prefix(p) for p in patterns]
        globs = [g for g in map(sql_glob, patterns) if g is not None]
        expected = sorted(k for k in keys if k.startswith(prefix) and readable(k))
        assert [e.key for e in bb.entries(prefix, readable=readable, within=within)] == expected
        saved = blackboard.SCAN_CHUNK
        blackboard.SCAN_CHUNK = 3  # windows of three keys: every listing crosses several
        try:
            listed = bb.entries(prefix, readable=readable, within=within, globs=globs)
        finally:
            blackboard.SCAN_CHUNK = saved
        assert [e.key for e in listed] == expected
        bb.store.close()


async def test_issue_10_memory_stays_bounded_under_values_built_to_blow_up(home: Path) -> None:
    """issue 10 (attack): 60 KB values of `[[],[],...]` parse to twenty times their text.
    The row cache and the watch history count what values take in memory, not their text,
    so 150 such writes keep a few of them, not all (unbounded: about 180 MB)."""
    import tracemalloc

    clock = Clock()
    bb = Blackboard(
        Store(home / "host.db", durability="normal"),
        BlackboardConfig(max_value_bytes=64 * 1024),
        EventBus(),
        clock=clock,
        cache_bytes=8 * 1024 * 1024,
        history_bytes=16 * 1024 * 1024,
    )
    blown = [[] for _ in range(20_000)]  # 60 KB of JSON
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(150):
            bb.put(f"agents/x/k{i}", blown, "mallory")
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 40 * 1024 * 1024, f"{held / 1e6:.0f} MB held"
    assert bb.cached[1] <= 8 * 1024 * 1024
    assert bb.get("agents/x/k0") is not None  # evicted, read back from SQLite
    bb.store.close()


async def test_issue_10_a_long_listing_lets_the_loop_run_and_misses_nothing(home: Path) -> None:
    """issue 10: a listing that must read many rows (a reader whose pattern starts with a
    wildcard reads every key) reads them in chunks, the event loop running in between, and
    still returns every match once, in order, across chunk boundaries and concurrent
    writes."""
    from legion.mesh.blackboard import SCAN_CHUNK

    clock = Clock()
    bb = make_board(home, clock)
    with bb.store.tx() as conn:
        conn.executemany(
            "INSERT INTO blackboard(key, value, version, writer, updated_at, expires_at)"
            " VALUES (?,?,?,?,?,?)",
            [(f"x/k{i:05d}", "1", 1, "alice", clock.now, None) for i in range(3 * SCAN_CHUNK + 7)],
        )
    ticks = 0

    async def meanwhile() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            bb.put(f"y/{ticks}", ticks, "bob")  # writes between chunks, elsewhere
            await asyncio.sleep(0)

    task = asyncio.create_task(meanwhile())
    try:
        listed, _ = await bb.list_entries("", readable=lambda k: k.endswith("3"), within=[""])
    finally:
        task.cancel()
    expected = [f"x/k{i:05d}" for i in range(3 * SCAN_CHUNK + 7) if str(i).endswith("3")]
    assert [e.key for e in listed if e.key.startswith("x/")] == expected
    assert ticks >= 3  # the loop ran between the chunks
    limited, truncated = await bb.list_entries("x/", limit=SCAN_CHUNK + 5)
    assert [e.key for e in limited] == [f"x/k{i:05d}" for i in range(SCAN_CHUNK + 5)]
    assert truncated
    assert (await bb.list_entries("x/", limit=3 * SCAN_CHUNK + 7))[1] is False  # all of them


async def test_issue_10_a_listing_of_giant_values_is_bounded_and_says_so(tmp_path: Path) -> None:
    """issue 10 (attack: an agent fills a prefix with values at the size cap, then lists it
    over and over): one listing returns about 8 MiB of values at most, with `truncated:
    true`, instead of building every value of 10,000 entries (640 MB) in the host's memory
    and encoding it on the loop; a longer prefix lists the rest."""
    from legion.mesh.blackboard import LIST_MAX_BYTES

    home = Path(tempfile.mkdtemp(prefix="lg-", dir="/tmp"))
    text = """
[host]
durability = "normal"

[agents.alpha.permissions]
blackboard_read = ["big/**"]
blackboard_write = ["big/**"]
"""
    pad = "x" * 60_000
    async with (
        Host.running(parse_config(text), Paths.resolve(home)) as host,
        agent_client(host.paths, "alpha") as alpha,
    ):
        for i in range(200):  # 12 MB of values
            r = await alpha.put(f"/v1/blackboard/entries/big/{i:03d}", json={"value": pad})
            assert r.status_code == 200, r.text
        r = await alpha.get("/v1/blackboard/entries", params={"prefix": "big/"})
        assert r.status_code == 200, r.text
        listing = r.json()
        assert listing["truncated"] is True
        shown = len(listing["entries"])
        assert shown == LIST_MAX_BYTES // (len(pad) + 2)  # whole entries up to the bound
        assert len(r.content) < LIST_MAX_BYTES * 1.05
        rest = await alpha.get("/v1/blackboard/entries", params={"prefix": "big/19"})
        assert rest.json()["truncated"] is False and len(rest.json()["entries"]) == 10
