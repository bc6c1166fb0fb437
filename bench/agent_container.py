"""Agents in real containers: cold start and idle memory.

* Cold start: `Fleet.start` (volume prepared, container created and started through the
  Docker SDK) -> the agent's first inbox poll seen by the host, against a bare
  `docker create / start / wait / rm` of the same image running `python3 -c pass`, measured
  in the same run. Target: <= 2x.
* Idle memory: the container's cgroup memory usage (minus page cache) after 30 s idle.
  Target: <= 48 MiB.

Needs a Docker engine and the agent image (`legion images build`). Containers have no
network; all traffic is on the agent's Unix socket.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from typing import Any

from bench._common import Report, heading, line, run_alone, short_home

TARGET_RATIO = 2.0
TARGET_IDLE_MIB = 48.0
CONFIG = """
[runtime]
image = "{image}"
heartbeat_timeout_s = 600
[agents.bench]
autostart = false
"""


def bare_runs(image: str, count: int) -> list[float]:
    import docker

    client = docker.from_env()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        container = client.containers.create(
            image, entrypoint=["python3", "-c", "pass"], network_mode="none", user="10001"
        )
        container.start()
        container.wait()
        container.remove()
        samples.append(time.perf_counter() - started)
    client.close()
    return samples


async def legion_runs(image: str, count: int, idle_s: float) -> tuple[list[float], float | None]:
    from legion.config import parse_config
    from legion.fleet.docker_backend import DockerBackend
    from legion.host import Host
    from legion.paths import Paths

    samples: list[float] = []
    idle_bytes: int | None = None
    with short_home() as home:
        config = parse_config(CONFIG.format(image=image))
        backend = DockerBackend(str(home))
        async with Host.running(config, Paths.resolve(home), runtime=backend) as host:
            for i in range(count):
                host.last_poll.pop("bench", None)
                started = time.perf_counter()
                await host.fleet.start("bench")
                deadline = started + 60
                while "bench" not in host.last_poll and time.perf_counter() < deadline:
                    await asyncio.sleep(0.002)
                if "bench" not in host.last_poll:
                    raise RuntimeError("the agent never polled its inbox within 60 s")
                samples.append(time.perf_counter() - started)
                if i == count - 1:
                    line(f"idling {idle_s:.0f} s before reading memory ...")
                    await asyncio.sleep(idle_s)
                    idle_bytes = await backend.memory_bytes("bench")
                await host.fleet.stop("bench")
    return samples, None if idle_bytes is None else idle_bytes / 2**20


def run(quick: bool = False, profile: Any = None, image: str = "legion-agent:latest") -> Report:
    report = Report("agent_container")
    heading("agent_container: cold start and idle memory of a real agent container")
    count = 3 if quick else 7
    idle = 10.0 if quick else 30.0
    try:
        import docker

        client = docker.from_env(timeout=10)
        client.images.get(image)
        client.close()
    except Exception as exc:
        report.check(
            "cold start and idle memory",
            False,
            f"not run: needs a Docker engine and {image} ({exc})",
        )
        return report
    bare = bare_runs(image, count)
    ours, idle_mib = asyncio.run(legion_runs(image, count, idle))
    bare_p50, ours_p50 = statistics.median(bare), statistics.median(ours)
    line(
        f"bare docker create/start/wait/rm: p50 {bare_p50 * 1e3:.0f} ms  "
        f"(runs: {', '.join(f'{s * 1e3:.0f}' for s in bare)})"
    )
    line(
        f"legion start -> first poll:       p50 {ours_p50 * 1e3:.0f} ms  "
        f"(runs: {', '.join(f'{s * 1e3:.0f}' for s in ours)})"
    )
    ratio = ours_p50 / bare_p50
    report.check(
        "cold start vs bare docker",
        ratio <= TARGET_RATIO,
        f"{ratio:.2f}x (target <= {TARGET_RATIO}x)",
    )
    if idle_mib is None:
        report.check("idle memory", False, "could not read the container's memory")
    else:
        report.check(
            f"idle memory after {idle:.0f} s",
            idle_mib <= TARGET_IDLE_MIB,
            f"{idle_mib:.1f} MiB (target <= {TARGET_IDLE_MIB:.0f} MiB)",
        )
    return report


if __name__ == "__main__":
    sys.exit(run_alone(run, __doc__, "agent_container"))
