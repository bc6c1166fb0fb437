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
on the same disk: at "full" every commit waits for an fsync, and a host PUT makes two
(its audit record and the write), a GET one (its audit record).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
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
    from legion.paths import Paths

    home = kwargs["home"]
    os.environ["LEGION_HOME"] = home
    await start_host(stack, CONFIG.format(durability=kwargs["durability"]))
    paths = Paths.resolve(home)

    async def fixed(method: str, target: str, body: bytes) -> bytes:
        return FIXED

    base_path = paths.run / "base.sock"
    close_server(stack, await serve_minimal(base_path, fixed))
    return {"agent": str(paths.agent_socket(AGENT)), "base": str(base_path)}


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
    return report


if __name__ == "__main__":
    sys.exit(run_alone(run, __doc__, "socket_rtt"))
