"""Budget bookkeeping of one LLM call: `Budgets.reserve` + `Budgets.settle` on a real Store.

Legion: one reserve (cap checks against the agent's daily and monthly caps and the fleet's
daily cap, then the reservation row committed) and one settle (the reservation deleted and
the ledger row inserted, one commit), on a `Store` (host.db: WAL, through peewee on apsw)
opened at the durability under test, as the gateway does them around every call.

Baseline: one raw apsw `INSERT` of a ledger-like row + commit, in WAL mode at the same
`synchronous` level, on a database in the same directory: the cost of one durable commit on
this disk. A reserve + settle makes two commits, so twice the baseline is its floor.

Blocks of baseline and legion operations alternate so noise falls on both alike. At
"full", a third block emulates a proposed change from outside (settle committed without
an fsync; see bench/README-llm.md) and is shown for information only.
Target: reserve + settle p50 <= 200 us, at durability "full" (the default) and "normal".
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import apsw

from bench._common import Report, heading, line, percentile, run_alone, short_home

PAIR_P50_US = 200.0
AGENT = "bench"
TIME_LIMIT_S = 60.0  # per durability: the timed blocks stop here whatever is left

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


def _measure(
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
        "settle": [],
        "pair": [],
        "whatif": [],
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

    def pair(i: int) -> tuple[float, float]:
        t0 = clock()
        reservation = budgets.reserve(AGENT, "fast", "openai/fake-model", f"req_{i}", 0.0003)
        t1 = clock()
        budgets.settle(reservation, usage, status="ok", latency_ms=3.0, ttft_ms=1.0)
        t2 = clock()
        return t1 - t0, t2 - t1

    def pair_whatif(i: int) -> float:
        """The proposed change, emulated from outside: the settle's commit without fsync
        (the reservation row it deletes was fsynced; the next fsynced commit covers it)."""
        t0 = clock()
        reservation = budgets.reserve(AGENT, "fast", "openai/fake-model", f"req_{i}", 0.0003)
        store.conn.execute("PRAGMA synchronous=NORMAL")
        try:
            budgets.settle(reservation, usage, status="ok", latency_ms=3.0, ttft_ms=1.0)
        finally:
            store.conn.execute("PRAGMA synchronous=FULL")
        return clock() - t0

    try:
        for _ in range(warmup):
            raw_commit(n)
            pair(n)
            n += 1
        deadline = clock() + TIME_LIMIT_S
        for _ in range(blocks):
            if clock() > deadline:
                break
            for _ in range(per_block):
                out["raw"].append(raw_commit(n))
                n += 1
            for _ in range(per_block):
                reserve, settle = pair(n)
                out["reserve"].append(reserve)
                out["settle"].append(settle)
                out["pair"].append(reserve + settle)
                n += 1
            if durability == "full":
                for _ in range(per_block):
                    out["whatif"].append(pair_whatif(n))
                    n += 1
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
    heading("budget_ops: Budgets.reserve + settle on a real Store vs a raw SQLite commit")
    warmup, blocks, per_block = (50, 4, 100) if quick else (200, 10, 300)
    for durability in ("full", "normal"):
        line(f"durability={durability!r}:")
        with short_home("lgbud-") as home:
            res = _measure(home, durability, warmup, blocks, per_block)
        raw_p50 = percentile(res["raw"], 50) * 1e6
        pair_p50 = percentile(res["pair"], 50) * 1e6
        line(f"  raw INSERT+commit  {_us(res['raw'])}")
        line(f"  reserve            {_us(res['reserve'])}")
        line(f"  settle             {_us(res['settle'])}")
        line(f"  reserve + settle   {_us(res['pair'])}")
        if res["whatif"]:
            line(f"  what-if: settle commit at synchronous=NORMAL (proposed)  {_us(res['whatif'])}")
        line(
            f"  reserve + settle p50 = {pair_p50 / raw_p50:.2f}x one raw commit, "
            f"{pair_p50 / (2 * raw_p50):.2f}x its two-commit floor "
            f"(+{pair_p50 - 2 * raw_p50:.1f} us over the floor)"
        )
        report.check(
            f"reserve + settle p50, durability={durability}"
            + (" (default)" if durability == "full" else ""),
            pair_p50 <= PAIR_P50_US,
            f"{pair_p50:.1f} us (target <= {PAIR_P50_US:.0f} us; "
            f"floor of two raw commits {2 * raw_p50:.1f} us)",
        )
    return report


if __name__ == "__main__":
    sys.exit(run_alone(run, __doc__, "budget_ops"))
