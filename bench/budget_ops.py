"""Budget bookkeeping of one LLM call: `Budgets.reserve` + `durable()` + `settle` on a Store.

Legion: one reserve (cap checks against the agent's daily and monthly caps and the fleet's
daily cap, then the reservation row committed), the wait for the group fsync that makes it
durable (what the gateway awaits before it dispatches), and one settle (the reservation
deleted and the ledger row inserted, one commit with no fsync of its own), on a `Store`
(host.db: WAL, through peewee on apsw) opened at the durability under test, in an event
loop as in the host.

Baseline: one raw apsw `INSERT` of a ledger-like row + commit, in WAL mode at the same
`synchronous` level, on a database in the same directory: the cost of one durable commit on
this disk (at "full", one fsync), the floor of a call's bookkeeping.

Blocks of baseline and legion operations alternate so noise falls on both alike. At
"full" a block of 32 concurrent calls shows group commit: how many calls share an fsync.
Target: reserve + durable + settle p50 <= 200 us, at durability "full" (the default) and
"normal".
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import apsw

from bench._common import Report, heading, line, percentile, run_alone, short_home

PAIR_P50_US = 200.0
AGENT = "bench"
TIME_LIMIT_S = 60.0
CONCURRENT = 32  # per durability: the timed blocks stop here whatever is left

CONFIG = """
[host]
durability = "{durability}"

[llm]
fleet_daily_usd = 1000000.0

[agents.bench.budget]
daily_usd = 1000000.0
monthly_usd = 1000000.0
"""

RAW_SCHEMA = """
CREATE TABLE ledger (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL, agent TEXT NOT NULL, model TEXT NOT NULL,
    provider_model TEXT NOT NULL, request_id TEXT NOT NULL, kind TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL, reserved_usd REAL NOT NULL, status TEXT NOT NULL,
    latency_ms REAL, ttft_ms REAL
)
"""

RAW_INSERT = (
    "INSERT INTO ledger(ts, agent, model, provider_model, request_id, kind, prompt_tokens,"
    " completion_tokens, cost_usd, reserved_usd, status, latency_ms, ttft_ms)"
    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
)


ROW_TAIL = (120, 40, 0.0002, 0.0003, "ok", 3.0, 1.0)


def _raw_connection(path: Path, durability: str) -> apsw.Connection:
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute(f"PRAGMA synchronous={durability.upper()}")
    conn.execute(RAW_SCHEMA)
    return conn


async def _measure(
    home: Path, durability: str, warmup: int, blocks: int, per_block: int
) -> dict[str, list[float]]:
    from legion.config import parse_config
    from legion.gateway.llm.budget import Budgets, Usage
    from legion.store import Store

    config = parse_config(CONFIG.format(durability=durability))
    store = Store(home / "host.db", durability=durability)
    raw = _raw_connection(home / "raw.db", durability)
    budgets = Budgets(store, config)
    usage = Usage(120, 40, 120 * 1e-6 + 40 * 2e-6)
    out: dict[str, list[float]] = {
        "raw": [],
        "reserve": [],
        "durable": [],
        "settle": [],
        "pair": [],
        "group": [],
        "rounds": [],
    }
    clock = time.perf_counter
    n = 0

    def raw_commit(i: int) -> float:
        t0 = clock()
        with raw:
            raw.execute(
                RAW_INSERT,
                (time.time(), AGENT, "fast", "openai/fake-model", f"req_{i}", "chat", *ROW_TAIL),
            )
        return clock() - t0

    async def pair(i: int) -> tuple[float, float, float]:
        t0 = clock()
        reservation = budgets.reserve(AGENT, "fast", "openai/fake-model", f"req_{i}", 0.0003)
        t1 = clock()
        await budgets.durable(reservation)
        t2 = clock()
        budgets.settle(reservation, usage, status="ok", latency_ms=3.0, ttft_ms=1.0)
        t3 = clock()
        return t1 - t0, t2 - t1, t3 - t2

    try:
        for _ in range(warmup):
            raw_commit(n)
            await pair(n)
            n += 1
        deadline = clock() + TIME_LIMIT_S
        for _ in range(blocks):
            if clock() > deadline:
                break
            for _ in range(per_block):
                out["raw"].append(raw_commit(n))
                n += 1
            for _ in range(per_block):
                reserve, durable, settle = await pair(n)
                out["reserve"].append(reserve)
                out["durable"].append(durable)
                out["settle"].append(settle)
                out["pair"].append(reserve + durable + settle)
                n += 1
            rounds = store.group.rounds
            results = await asyncio.gather(*(pair(n + i) for i in range(CONCURRENT)))
            n += CONCURRENT
            out["group"] += [sum(r) for r in results]
            out["rounds"].append(float(store.group.rounds - rounds))
        if budgets.open:
            raise RuntimeError(f"{len(budgets.open)} reservations left open")
        (ledger,) = store.execute("SELECT COUNT(*) FROM ledger").fetchall()[0]
        line(f"  ({ledger} ledger rows, {len(out['pair'])} timed pairs)")
    finally:
        raw.close()
        store.close()
    return out


def _us(samples: list[float]) -> str:
    return (
        f"p50 {percentile(samples, 50) * 1e6:7.1f} us  p90 {percentile(samples, 90) * 1e6:7.1f} us"
        f"  p99 {percentile(samples, 99) * 1e6:7.1f} us  (n={len(samples)})"
    )


def run(quick: bool = False, profile: str | None = None) -> Report:
    """`profile` is accepted for a uniform interface; this benchmark runs in-process."""
    report = Report("budget_ops")
    heading("budget_ops: Budgets.reserve + durable + settle on a real Store vs a raw commit")
    warmup, blocks, per_block = (50, 4, 100) if quick else (200, 10, 300)
    for durability in ("full", "normal"):
        line(f"durability={durability!r}:")
        with short_home("lgbud-") as home:
            res = asyncio.run(_measure(home, durability, warmup, blocks, per_block))
        raw_p50 = percentile(res["raw"], 50) * 1e6
        pair_p50 = percentile(res["pair"], 50) * 1e6
        line(f"  raw INSERT+commit  {_us(res['raw'])}")
        line(f"  reserve            {_us(res['reserve'])}")
        line(f"  durable (fsync)    {_us(res['durable'])}")
        line(f"  settle             {_us(res['settle'])}")
        line(f"  one call's total   {_us(res['pair'])}")
        rounds = sum(res["rounds"])
        shared = (
            f"{len(res['group']) / rounds:.1f} calls per fsync round"
            if rounds
            else "no fsync at all"
        )
        line(f"  {CONCURRENT} calls at once  {_us(res['group'])}  ({shared})")
        line(
            f"  one call p50 = {pair_p50 / raw_p50:.2f}x one raw commit "
            f"(+{pair_p50 - raw_p50:.1f} us over it)"
        )
        report.check(
            f"reserve + durable + settle p50, durability={durability}"
            + (" (default)" if durability == "full" else ""),
            pair_p50 <= PAIR_P50_US,
            f"{pair_p50:.1f} us (target <= {PAIR_P50_US:.0f} us; one raw commit {raw_p50:.1f} us)",
        )
    return report


if __name__ == "__main__":
    sys.exit(run_alone(run, __doc__, "budget_ops"))
