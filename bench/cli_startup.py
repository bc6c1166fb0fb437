"""CLI start-up: `legion --help`, `legion --version` and `legion status` as whole processes.

Each command runs as its own process, several times, interleaved with the baseline
`python -c pass` (same interpreter) so a machine that changes speed mid-run hits both
alike. Wall time comes from the clock around the process, CPU time (user + system) from
the kernel's accounting of the finished child (`os.wait4`). `status` is timed twice: with
no host (it exits 3 after looking) and against a running daemon (`[runtime] backend =
"none"`), which is what an operator types. Target: every median wall time under 200 ms,
the figure the issue asks for; the ratios to `python -c pass` say how much of it is ours.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench._common import Report, heading, line, percentile, short_home

TARGET_MS = 200.0


def _once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall s, cpu s) of one run of `argv`, its output discarded."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    _, _, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = 0  # reaped by wait4; keep Popen from waiting again
    return wall, usage.ru_utime + usage.ru_stime


def _measure(
    commands: dict[str, list[str]], env: dict[str, str], runs: int
) -> dict[str, tuple[list[float], list[float]]]:
    results: dict[str, tuple[list[float], list[float]]] = {n: ([], []) for n in commands}
    for argv in commands.values():  # warm-up: the page cache, the .pyc files
        _once(argv, env)
    for _ in range(runs):
        for name, argv in commands.items():
            wall, cpu = _once(argv, env)
            results[name][0].append(wall)
            results[name][1].append(cpu)
    return results


def _start_host(home: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    (home / "legion.toml").write_text('[runtime]\nbackend = "none"\n\n[agents.scout]\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "legion", "daemon"], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not (home / "run" / "control.sock").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the daemon did not start")
        time.sleep(0.05)
    return proc


def run(quick: bool = False, profile: bool = False) -> Report:
    report = Report("cli_startup")
    heading("CLI start-up, whole processes (median of interleaved runs)")
    runs = 5 if quick else 15
    legion = str(Path(sys.executable).parent / "legion")
    legion_argv = [legion] if os.path.exists(legion) else [sys.executable, "-m", "legion"]
    with short_home("lgb-cli-") as home:
        env = {**os.environ, "LEGION_HOME": str(home)}
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "legion --help": [*legion_argv, "--help"],
            "legion --version": [*legion_argv, "--version"],
            "legion status (no host)": [*legion_argv, "status"],
        }
        results = _measure(commands, env, runs)
        host = _start_host(home, env)
        try:
            live = _measure({"legion status (host running)": [*legion_argv, "status"]}, env, runs)
        finally:
            host.send_signal(signal.SIGTERM)
            host.wait(20)
        results.update(live)
    base_wall = percentile(results["python -c pass"][0], 50)
    base_cpu = percentile(results["python -c pass"][1], 50)
    for name, (walls, cpus) in results.items():
        wall, cpu = percentile(walls, 50) * 1e3, percentile(cpus, 50) * 1e3
        line(
            f"{name:<30} wall {wall:7.1f} ms (x{wall / (base_wall * 1e3):4.1f})   "
            f"cpu {cpu:7.1f} ms (x{cpu / max(base_cpu * 1e3, 1e-9):4.1f})   n={len(walls)}"
        )
    for name in list(results)[1:]:
        wall = percentile(results[name][0], 50) * 1e3
        report.check(f"{name} median wall", wall < TARGET_MS, f"{wall:.1f} ms < {TARGET_MS:.0f}")
    return report


if __name__ == "__main__":
    from bench._common import base_args

    arguments = base_args("CLI start-up times.").parse_args()
    run(quick=arguments.quick)
