"""Run every benchmark: `python -m bench` (or `make bench`).

Each benchmark prints its absolute figures, ratios against a baseline measured in the
same run, and a PASS/MISS line per target. These are measurements, not tests: the exit
status is 0 unless a benchmark fails to run (or, with --strict, a target is missed).
"""

from __future__ import annotations

import sys
import time

from bench import (
    agent_container,
    automation,
    blackboard_store,
    browser,
    budget_ops,
    fleet_load,
    fleet_scale,
    llm_overhead,
    memory_bootstrap,
    memory_search,
    pubsub_fanout,
    socket_rtt,
    stream_redaction,
    tui,
)
from bench._common import Report, base_args

BENCHMARKS = {
    "blackboard_store": blackboard_store.run,
    "socket_rtt": socket_rtt.run,
    "pubsub_fanout": pubsub_fanout.run,
    "llm_overhead": llm_overhead.run,
    "fleet_load": fleet_load.run,
    "fleet_scale": fleet_scale.run,
    "budget_ops": budget_ops.run,
    "stream_redaction": stream_redaction.run,
    "agent_container": agent_container.run,
    "memory_search": memory_search.run,
    "memory_bootstrap": memory_bootstrap.run,
    "tui": tui.run,
    "automation": automation.run,
    "browser": browser.run,
}


def main(argv: list[str] | None = None) -> int:
    parser = base_args("Run legion's benchmarks.", prog="python -m bench")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "only", nargs="*", metavar="NAME", help=f"run only these ({', '.join(BENCHMARKS)})"
    )
    args = parser.parse_args(argv)
    unknown = [n for n in args.only if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    names = args.only or list(BENCHMARKS)
    started = time.perf_counter()
    reports: list[Report] = [
        BENCHMARKS[name](quick=args.quick, profile=args.profile) for name in names
    ]
    print(f"\n== summary ({time.perf_counter() - started:.0f} s) ==")
    missed = 0
    for report in reports:
        for target in report.targets:
            missed += not target.ok
            status = "PASS" if target.ok else "MISS"
            print(f"  {status}  {report.title}: {target.name}: {target.detail}")
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
