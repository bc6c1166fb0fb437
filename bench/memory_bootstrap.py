"""Agent bootstrap prompt: assembling a session's system prompt with every file at its cap.

What is timed is what the runtime does at the first turn of a session: stat the identity
folder (the cache signature), read SOUL.md, INSTRUCTIONS.md, USER.md, MEMORY.md and
HEARTBEAT.md (each at its cap) with no link following, read the newest learnings (both
files at their cap), and render the prompt within its total cap, for an agent that may
message 200 others. Baseline in the same run: reading the same five files whole with
`Path.read_text`. Target: p95 <= 5 ms.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from bench._common import Report, heading, line, percentile, run_alone

TARGET_MS = 5.0


def run(quick: bool = False, profile: bool = False) -> Report:
    from agent_container.bootstrap import Bootstrap, load_files, signature
    from agent_container.learnings import CORRECTIONS, FAILURES, FILE_CAP, Learnings
    from legion.wire.agent import WORKSPACE_FILE_CAPS, BudgetLeft, SelfStatus

    report = Report("memory_bootstrap")
    heading("bootstrap prompt assembly, every file at its cap")
    count = 300 if quick else 2000
    with tempfile.TemporaryDirectory(prefix="lgb-boot-") as tmp:
        identity = Path(tmp) / "identity"
        identity.mkdir()
        for name, cap in WORKSPACE_FILE_CAPS.items():
            words = f"{name} says: keep every promise, check twice, write it down. "
            (identity / name).write_text((words * (cap // len(words) + 1))[:cap])
        workspace = Path(tmp) / "workspace"
        learned = workspace / "learnings"
        learned.mkdir(parents=True)
        entry = "- 2026-01-01 10:00 UTC | tool read_file | arguments {} | error: no such file\n"
        for name in (FAILURES, CORRECTIONS):
            (learned / name).write_text((entry * (FILE_CAP // len(entry)))[:FILE_CAP])
        learnings = Learnings(workspace)
        me = SelfStatus(
            agent="bench",
            role="researcher",
            team="red",
            model="m",
            mode="chat",
            system_prompt="Cite every source.",
            max_tool_rounds=8,
            max_task_steps=20,
            permissions={"can_message": [f"agent-{n}" for n in range(200)]},
            budget_left=BudgetLeft(daily_usd=1.0, monthly_usd=10.0, fleet_daily_usd=None),
            fleet=[f"agent-{n}" for n in range(200)],
        )
        tools = [f"tool_{n}" for n in range(25)]

        def assemble() -> str:
            signature(identity)
            return Bootstrap(
                me=me,
                files=load_files(identity),
                learnings=learnings.recent(),
                tools=tools,
                workspace=str(workspace),
                conversation="operator",
            ).render()

        prompt = assemble()
        samples, baseline = [], []
        for _ in range(count):
            started = time.perf_counter()
            assemble()
            samples.append(time.perf_counter() - started)
            started = time.perf_counter()
            for name in WORKSPACE_FILE_CAPS:
                (identity / name).read_text()
            baseline.append(time.perf_counter() - started)
    p50, p95, p99 = (percentile(samples, q) * 1e3 for q in (50, 95, 99))
    base95 = percentile(baseline, 95) * 1e3
    line(f"prompt: {len(prompt.encode())} bytes (cap {48 * 1024})")
    line(f"assembly:  p50 {p50:.3f} ms  p95 {p95:.3f} ms  p99 {p99:.3f} ms  (n={count})")
    line(f"baseline, five read_text calls: p95 {base95:.3f} ms ({p95 / base95:.1f}x)")
    report.check(
        "bootstrap assembly p95", p95 <= TARGET_MS, f"{p95:.3f} ms (target <= {TARGET_MS:g} ms)"
    )
    return report


if __name__ == "__main__":
    sys.exit(run_alone(run, __doc__, "memory_bootstrap"))
