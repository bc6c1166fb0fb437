"""Round trip of a blackboard write/read through an agent socket vs a bare HTTP hop.

Legion: PUT /v1/blackboard/entries/{key} (and GET) on the agent socket of a running
Host: HTTP parse, routing, body validation, permission check + audit record (a
commit), the blackboard write (a commit), the JSON response.

Baseline: a minimal asyncio HTTP server on a Unix socket answering a fixed small JSON,
served from the same child process and driven by the same raw keep-alive client.

The host runs in its own process (as it does for agent containers); the client is a
raw asyncio protocol, so httpx's overhead stays out of both figures. Blocks of
baseline, write and read requests alternate so noise falls on all three alike.
Target: write p99 <= 2 ms (checked at durability "full", the default; "normal" shown).

For context, the same run also times single raw SQLite commits (WAL, same `synchronous`)
on the same disk: at "full" a raw commit waits for its own fsync; the host commits its
audit record and the write without one, and the reply waits for a group fsync covering
both (legion/groupcommit.py).

Group commit (issue 10): at "full", blocks of one writer alternate with blocks of
`WRITERS` concurrent writers (each on its own keep-alive connection, one request in flight
each) on the same host. Target: concurrent write p99 <= 3x the single writer's p50. The
host's own counters (commits, fsync rounds) show how many commits each fsync covered. The
same blocks run, interleaved, against a host at durability "normal" (no fsync at all):
with 32 requests in flight the host's CPU alone sets a floor under the latency, and the
"full"/"normal" ratio at 32 writers is what durability itself costs.
With `BENCH_BASELINE_REV=<git rev>` in the environment, the same blocks also run against a
second host built from that revision (`git archive`), interleaved, for a before/after.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import apsw

from bench._common import (
    RawHttp,
    Report,
    close_server,
    fmt_ms,
    heading,
    line,
    profile_path,
    run_alone,
    serve_minimal,
    server_process,
    short_home,
    start_host,
    summary_ms,
)

WRITE_P99_MS = 2.0
GROUP_P99_RATIO = 3.0
WRITERS = 32
FLOOR = "this tree at durability 'normal' (no fsync: the CPU floor)"
BARE = "the bare hop (no host: what this client and machine cost)"
AGENT = "bench"
KEYS = 100

CONFIG = """
[host]
durability = "{durability}"

[agents.bench]
role = "benchmark"

[agents.bench.permissions]
blackboard_read = ["bench/**"]
blackboard_write = ["bench/**"]
"""

FIXED = b'{"key":"bench/k0","value":{"n":0},"version":1,"writer":"bench","updated_at":0.0}'


async def _servers(stack: contextlib.AsyncExitStack, kwargs: dict[str, Any]) -> dict[str, str]:
    if kwargs.get("src"):  # a host built from another revision (the before/after baseline)
        sys.path.insert(0, kwargs["src"])
    from legion.paths import Paths

    home = kwargs["home"]
    os.environ["LEGION_HOME"] = home
    host = await start_host(stack, CONFIG.format(durability=kwargs["durability"]))
    paths = Paths.resolve(home)

    async def fixed(method: str, target: str, body: bytes) -> bytes:
        return FIXED

    async def counters(method: str, target: str, body: bytes) -> bytes:
        # The host process's CPU (every thread: the loop and the fsync thread), and its
        # commit counters when it has group commit.
        times = os.times()
        out: dict[str, float] = {"cpu": times.user + times.system, "sys": times.system}
        group = getattr(host.store, "group", None)
        if group is not None:
            # Transactions (`Store.tx` blocks): with batched commits, several per commit.
            store = host.store
            txs = group.seq - getattr(store, "batches", 0) + getattr(store, "batched", 0)
            out.update(commits=group.seq, rounds=group.rounds, txs=txs)
        return json.dumps(out).encode()

    base_path = paths.run / "base.sock"
    close_server(stack, await serve_minimal(base_path, fixed))
    stats_path = paths.run / "stats.sock"
    close_server(stack, await serve_minimal(stats_path, counters))
    return {
        "agent": str(paths.agent_socket(AGENT)),
        "base": str(base_path),
        "stats": str(stats_path),
    }


def _body(i: int) -> bytes:
    return json.dumps({"value": {"n": i, "status": "running", "note": "step done"}}).encode()


def _commit_floor(conn: apsw.Connection, start: int, count: int) -> list[float]:
    """Time `count` single-row commits (blocking; nothing else is in flight meanwhile)."""
    out = []
    for i in range(count):
        t0 = time.perf_counter()
        with conn:
            conn.execute(
                "INSERT OR REPLACE INTO t(k, v) VALUES (?, ?)", (f"k{i % KEYS}", f"v{start + i}")
            )
        out.append(time.perf_counter() - t0)
    return out


def _floor_connection(path: Path, durability: str) -> apsw.Connection:
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute(f"PRAGMA synchronous={durability.upper()}")
    conn.execute("CREATE TABLE t(k TEXT PRIMARY KEY, v TEXT NOT NULL)")
    return conn


async def _measure(
    info: dict[str, str], blocks: int, per_block: int, floor: apsw.Connection
) -> dict[str, list[float]]:
    agent = await RawHttp.connect(info["agent"])
    base = await RawHttp.connect(info["base"])
    out: dict[str, list[float]] = {"base": [], "write": [], "read": [], "commit": []}
    try:
        # Warm-up: connections, first route matches, every key written once.
        for i in range(KEYS):
            status, data, _, _ = await agent.request(
                "PUT", f"/v1/blackboard/entries/bench/k{i}", _body(i)
            )
            if status != 200:
                raise RuntimeError(f"PUT failed: {status} {data[:300]!r}")
            await base.request("PUT", f"/v1/blackboard/entries/bench/k{i}", _body(i))
        n = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120.0
        for _ in range(blocks):
            if loop.time() > deadline:
                break
            for i in range(per_block):
                _, _, t0, t1 = await base.request(
                    "PUT", f"/v1/blackboard/entries/bench/k{i % KEYS}", _body(n + i)
                )
                out["base"].append(t1 - t0)
            for i in range(per_block):
                status, data, t0, t1 = await agent.request(
                    "PUT", f"/v1/blackboard/entries/bench/k{i % KEYS}", _body(n + i)
                )
                if status != 200:
                    raise RuntimeError(f"PUT failed: {status} {data[:300]!r}")
                out["write"].append(t1 - t0)
            for i in range(per_block):
                status, data, t0, t1 = await agent.request(
                    "GET", f"/v1/blackboard/entries/bench/k{i % KEYS}"
                )
                if status != 200:
                    raise RuntimeError(f"GET failed: {status} {data[:300]!r}")
                out["read"].append(t1 - t0)
            out["commit"] += _commit_floor(floor, n, per_block)
            n += per_block
    finally:
        agent.close()
        base.close()
    return out


async def _run_one(durability: str, quick: bool, profile: str | None) -> dict[str, list[float]]:
    blocks, per_block = (4, 100) if quick else (20, 250)
    with short_home() as home:
        kwargs = {"home": str(home), "durability": durability}
        floor = _floor_connection(home / "floor.db", durability)
        try:
            async with server_process(_servers, kwargs, profile) as info:
                return await _measure(info, blocks, per_block, floor)
        finally:
            floor.close()


async def _put(conn: RawHttp, key: str, n: int) -> float:
    status, data, t0, t1 = await conn.request("PUT", f"/v1/blackboard/entries/{key}", _body(n))
    if status != 200:
        raise RuntimeError(f"PUT failed: {status} {data[:300]!r}")
    return t1 - t0


async def _stats(path: str) -> dict[str, float]:
    conn = await RawHttp.connect(path)
    try:
        _, data, _, _ = await conn.request("GET", "/")
    finally:
        conn.close()
    return dict(json.loads(data))


async def _group_blocks(
    hosts: dict[str, dict[str, str]], blocks: int, per_writer: int, single: int
) -> dict[str, dict[str, Any]]:
    """Per host: single-writer latencies, concurrent-writer latencies, and the counters."""
    counters = {"commits": 0, "rounds": 0, "txs": 0, "cpu": 0.0, "sys": 0.0}
    out: dict[str, dict[str, Any]] = {
        name: {"single": [], "group": [], **counters} for name in hosts
    }
    conns: dict[str, list[RawHttp]] = {}
    try:
        for name, info in hosts.items():
            conns[name] = [await RawHttp.connect(info["agent"]) for _ in range(WRITERS)]
            for w, conn in enumerate(conns[name]):  # warm-up: every writer's key exists
                await _put(conn, f"bench/w{w}", 0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 180.0
        n = 1
        for _ in range(blocks):
            if loop.time() > deadline:
                break
            for name in hosts:
                first = conns[name][0]
                for i in range(single):
                    out[name]["single"].append(await _put(first, "bench/w0", n + i))

                async def writer(conn: RawHttp, w: int, start: int) -> list[float]:
                    return [await _put(conn, f"bench/w{w}", start + i) for i in range(per_writer)]

                before = await _stats(hosts[name]["stats"])
                results = await asyncio.gather(
                    *(writer(c, w, n) for w, c in enumerate(conns[name]))
                )
                after = await _stats(hosts[name]["stats"])
                for r in results:
                    out[name]["group"] += r
                for k in ("commits", "rounds", "txs", "cpu", "sys"):
                    out[name][k] += after.get(k, 0) - before.get(k, 0)
            n += max(single, per_writer)
    finally:
        for group in conns.values():
            for conn in group:
                conn.close()
    return out


def _baseline_src(rev: str, into: Path) -> Path:
    """`git archive` of the `legion` package at `rev` into `into` (a before/after baseline)."""
    root = Path(__file__).resolve().parent.parent
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", rev, "legion"], capture_output=True, check=True
    ).stdout
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


async def _run_group(quick: bool, profile: str | None) -> dict[str, dict[str, Any]]:
    blocks, per_writer, single = (3, 10, 40) if quick else (8, 25, 100)
    rev = os.environ.get("BENCH_BASELINE_REV", "")
    with short_home() as home:
        async with contextlib.AsyncExitStack() as stack:
            hosts: dict[str, dict[str, str]] = {}
            kwargs = {"home": str(home / "new"), "durability": "full"}
            prof = profile_path(profile, "socket_rtt_host_group")
            hosts["this tree"] = await stack.enter_async_context(
                server_process(_servers, kwargs, prof)
            )
            kwargs = {"home": str(home / "floor"), "durability": "normal"}
            hosts[FLOOR] = floor = await stack.enter_async_context(server_process(_servers, kwargs))
            # The same writers against the minimal server of that child (its host idles
            # meanwhile, so the child's CPU is the bare hop's).
            hosts[BARE] = {"agent": floor["base"], "stats": floor["stats"]}
            if rev:
                src = _baseline_src(rev, home / "src")
                kwargs = {"home": str(home / "old"), "durability": "full", "src": str(src)}
                hosts[f"baseline {rev}"] = await stack.enter_async_context(
                    server_process(_servers, kwargs)
                )
            return await _group_blocks(hosts, blocks, per_writer, single)


def run(quick: bool = False, profile: str | None = None) -> Report:
    report = Report("socket_rtt")
    heading("socket_rtt: blackboard PUT/GET via an agent socket vs a bare HTTP hop")
    for durability in ("full", "normal"):
        prof = profile_path(profile, f"socket_rtt_host_{durability}")
        res = asyncio.run(_run_one(durability, quick, prof))
        base, write, read, commit = (
            summary_ms(res[k]) for k in ("base", "write", "read", "commit")
        )
        line(f"durability={durability!r}:")
        line(f"  bare hop   {fmt_ms(base)}")
        line(f"  host PUT   {fmt_ms(write)}")
        line(f"  host GET   {fmt_ms(read)}")
        line(f"  (context) one raw SQLite commit, same disk and sync: {fmt_ms(commit)}")
        for name, s in (("PUT", write), ("GET", read)):
            line(
                f"  {name} added latency: p50 +{s['p50'] - base['p50']:.3f} ms "
                f"({s['p50'] / base['p50']:.1f}x bare), p99 +{s['p99'] - base['p99']:.3f} ms "
                f"({s['p99'] / base['p99']:.1f}x bare)"
            )
        report.check(
            f"write p99, durability={durability}"
            + (" (default)" if durability == "full" else " (informative)"),
            write["p99"] <= WRITE_P99_MS,
            f"{write['p99']:.3f} ms (target <= {WRITE_P99_MS} ms)",
        )
    line(f"group commit, durability='full': 1 writer vs {WRITERS} concurrent writers (PUT)")
    load = os.getloadavg()
    line(f"  (load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} CPUs)")
    groups = asyncio.run(_run_group(quick, profile))
    for name, got in groups.items():
        single, group = summary_ms(got["single"]), summary_ms(got["group"])
        ratio = group["p99"] / single["p50"]
        line(f"  {name}:")
        line(f"    1 writer      {fmt_ms(single)}")
        line(f"    {WRITERS} writers    {fmt_ms(group)}")
        rounds = got["rounds"]
        line(
            f"    server CPU per PUT during the concurrent blocks: "
            f"{got['cpu'] / len(got['group']) * 1e6:.0f} us "
            f"(of which in the kernel {got['sys'] / len(got['group']) * 1e6:.0f} us)"
        )
        if got["commits"]:
            line(
                f"    {got['txs']} transactions in {got['commits']} commits "
                f"({got['txs'] / got['commits']:.1f} per commit)"
                + (
                    f", {rounds} fsync rounds: {got['txs'] / rounds:.1f} transactions and "
                    f"{got['commits'] / rounds:.1f} commits per fsync"
                    if rounds and name != FLOOR
                    else ""
                )
            )
        line(f"    {WRITERS}-writer p99 / 1-writer p50 = {ratio:.2f}x")
        if name not in (FLOOR, BARE) and FLOOR in groups:
            floor = summary_ms(groups[FLOOR]["group"])
            line(
                f"    {WRITERS}-writer p99 vs the same at durability 'normal': "
                f"{group['p99'] / floor['p99']:.2f}x (p50 {group['p50'] / floor['p50']:.2f}x)"
            )
        if name == "this tree" and BARE in groups:
            bare = summary_ms(groups[BARE]["group"])
            line(
                f"    the bare hop's {WRITERS}-writer p99 alone is "
                f"{bare['p99'] / single['p50']:.2f}x this 1-writer p50 (what the client and the "
                "machine take of the target)"
            )
        if name == "this tree":
            report.check(
                f"write p99 at {WRITERS} concurrent writers vs 1-writer p50, durability=full",
                ratio <= GROUP_P99_RATIO,
                f"{ratio:.2f}x ({group['p99']:.3f} ms vs {single['p50']:.3f} ms; "
                f"target <= {GROUP_P99_RATIO}x)",
            )
    return report


if __name__ == "__main__":
    sys.exit(run_alone(run, __doc__, "socket_rtt"))
