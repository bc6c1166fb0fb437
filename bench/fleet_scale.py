"""A fleet on one host at 10 and at 100 agents: start, idle cost, first and warm turns.

For each fleet size N (10 and 100; `--quick`: 4 and 16; `--agents 10,50,100` to choose),
in one run, each against a baseline measured in the same run:

* Start: a host (its own process, durability "full", real containers of the agent image)
  from `Host.running` until every agent's first inbox poll, against N bare containers of
  the same image, created and started at the same concurrency (`[runtime]
  start_concurrency`) with the same flags and mounts, each running the agent runtime's own
  start-up until its first request (imports, memory database, client; the request fails
  at once, nothing serves the socket), until the last one exited: what the agents do
  before the host is involved. Bare create+start alone is shown too. Target at the
  largest N: <= 1.5x.
* Idle: the host's CPU (every thread, from /proc schedstat) over a window with every agent
  idle (long-polling its inbox, a heartbeat every 10 s), and the Docker engine's. Target:
  idle CPU at the largest N <= 1.5x idle CPU at the smallest.
* First burst: every agent's first LLM call at once (a streaming chat completion on its
  own socket, the direct path to the fake provider); the host's CPU per call, against a
  warm burst (the same calls again, three times). Target at the largest N: <= 1.5x.
* Warm throughput: N concurrent streams back to back through legion, against N streams
  sent straight to the provider by the same client code, in alternating phases. Targets at
  the largest N: throughput >= 0.6x direct; whole-stream p99 <= 2x direct.

The provider is the fake OpenAI-compatible server in its own process (20 ms before the
first byte, ~20 deltas per answer). Without a Docker engine or the agent image, the start
and idle parts report "not run" and the LLM parts run on a host without containers.
Containers have no network; all traffic is on Unix sockets and 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench._common import (
    Report,
    base_args,
    heading,
    line,
    percentile,
    profile_path,
    server_process,
    short_home,
)
from bench.fleet_load import Phase, Streamer, merge, one_stream, run_phase

COUNTS = (10, 100)
QUICK_COUNTS = (4, 16)
LATENCY_MS = 20.0
MAX_TOKENS = 100
KEY = "sk-bench-fleet-scale-key-0123456789"
PROVIDER_MODEL = "openai/fake-model"
STREAM_LIMIT_S = 60.0
START_LIMIT_S = 600.0
TARGET_START = 1.5
TARGET_IDLE = 1.5
TARGET_FIRST = 1.5
TARGET_THROUGHPUT = 0.6
TARGET_P99 = 2.0
# What a bare container runs: the agent runtime's own start-up (its imports, its memory
# database, its client) up to its first request, which fails at once: nothing serves the
# socket. Everything an agent does before the host is involved, without the host.
BARE_SCRIPT = """
import asyncio
from agent_container.loop import AgentRuntime
runtime = AgentRuntime("/run/legion/mesh.sock", "/data/workspace", data_dir="/data")
async def first_request():
    try:
        await runtime.mesh.poll(0)
    except Exception:
        pass
asyncio.run(first_request())
"""
BARE_COMMAND = ["python3", "-c", BARE_SCRIPT]

CONFIG_HEAD = """
[runtime]
backend = "{backend}"
image = "{image}"
heartbeat_timeout_s = 600

[llm]
default_max_tokens = {max_tokens}

[llm.models.fast]
model = "{model}"
api_base = "{api_base}"
credential = "provider"
input_cost_per_mtok = 1.0
output_cost_per_mtok = 2.0
"""

CONFIG_AGENT = """
[agents.{name}]
model = "fast"
[agents.{name}.budget]
daily_usd = 1000000.0
monthly_usd = 1000000.0
"""


def agent_name(i: int) -> str:
    return f"agent-{i:03d}"


def prompt(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"agent {i:03d}: report task {i:03d} in one sentence."}]


# --- CPU ----------------------------------------------------------------------------------


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of `pid` so far, in ns (/proc schedstat: finer than ticks)."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        with contextlib.suppress(OSError, ValueError, IndexError), open(path) as f:
            total += int(f.read().split()[0])
    return total


def dockerd_pid() -> int | None:
    for comm in glob.glob("/proc/[0-9]*/comm"):
        with contextlib.suppress(OSError):
            if Path(comm).read_text().strip() == "dockerd":
                return int(comm.split("/")[2])
    return None


async def quiet(pid: int, limit_s: float = 10.0, busy: float = 0.02) -> None:
    """Wait until `pid` uses less than `busy` of a CPU over 200 ms (work of the phase
    before, such as settling, is done)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = cpu_ns(pid)
        await asyncio.sleep(0.2)
        if (cpu_ns(pid) - before) / 0.2e9 < busy:
            return


# --- Docker ---------------------------------------------------------------------------------


def docker_problem(image: str) -> str | None:
    try:
        import docker

        client = docker.from_env(timeout=10)
        try:
            client.images.get(image)
        finally:
            client.close()
    except Exception as exc:
        return f"needs a Docker engine and the image {image} ({type(exc).__name__}: {exc})"
    return None


def agent_image() -> str:
    """The agent image for this source (the test fixture's rule: `legion-agent:latest` when
    current, else `legion-agent:src-<digest>`, which `legion images build --tag` makes)."""
    import docker

    from legion.fleet.images import image_exists, image_is_current, source_digest

    own = f"legion-agent:src-{source_digest()}"
    try:
        client = docker.from_env(timeout=10)
    except Exception:
        return "legion-agent:latest"
    try:
        if image_is_current(client, "legion-agent:latest"):
            return "legion-agent:latest"
        return own if image_exists(client, own) else "legion-agent:latest"
    finally:
        client.close()


def sweep(label: str) -> None:
    """Remove every container carrying `legion.home=label` (what a run left if it died)."""
    with contextlib.suppress(Exception):
        import docker

        client = docker.from_env(timeout=30)
        try:
            for row in client.api.containers(all=True, filters={"label": f"legion.home={label}"}):
                with contextlib.suppress(Exception):
                    client.api.remove_container(row["Id"], force=True)
        finally:
            client.close()


def bare_start(image: str, count: int, concurrency: int, home: Path) -> tuple[float, float]:
    """Start `count` bare containers like the agents', `concurrency` at a time: (seconds
    until all ran the runtime's imports and exited, seconds until all were started)."""
    import docker

    from legion.fleet.backend import AgentSpec
    from legion.fleet.docker_backend import create_arguments

    label = f"{home}/bare"
    client = docker.from_env(timeout=120, max_pool_size=concurrency + 2)
    specs = []
    for i in range(count):
        base = home / "bare" / f"b{i:03d}"
        for sub in ("data", "data/workspace", "run", "identity"):
            (base / sub).mkdir(parents=True, exist_ok=True)
            os.chmod(base / sub, 0o777)
        specs.append(
            AgentSpec(
                name=f"b{i:03d}",
                image=image,
                data_dir=base / "data",
                socket_dir=base / "run",
                identity_dir=base / "identity",
                uid=10001,
                gid=10001,
                memory_mb=384,
                cpus=0.5,
                pids=256,
            )
        )

    def start(spec: AgentSpec) -> str:
        args = create_arguments(client.api, spec, f"lgbare-{os.getpid()}-{spec.name}", label)
        args["entrypoint"] = BARE_COMMAND
        cid: str = client.api.create_container(**args)["Id"]
        client.api.start(cid)
        return cid

    try:
        t0 = time.perf_counter()
        # The slots hold a create+start, as the supervisor's do; the containers then run
        # on their own, as agents do, and the run ends when the last one has exited.
        with ThreadPoolExecutor(concurrency) as pool:
            ids = list(pool.map(start, specs))
        started = time.perf_counter() - t0
        for cid in ids:
            result = client.api.wait(cid)  # at once for one that exited already
            if result.get("StatusCode") != 0:
                logs = client.api.logs(cid, tail=5).decode(errors="replace")
                raise RuntimeError(f"bare container exited {result}: {logs}")
        return time.perf_counter() - t0, started
    finally:
        client.close()
        sweep(label)


# --- the host, in its own process ----------------------------------------------------------


async def _host(stack: contextlib.AsyncExitStack, kwargs: dict[str, Any]) -> dict[str, Any]:
    """In the server child: a host with N agents (in containers when Docker is there),
    timed from `Host.running` to every agent's first inbox poll."""
    from legion.config import parse_config
    from legion.fleet.docker_backend import DockerBackend
    from legion.gateway.vault import Vault
    from legion.host import Host
    from legion.paths import Paths

    home, count, docker = kwargs["home"], kwargs["count"], kwargs["docker"]
    os.environ["LEGION_HOME"] = home
    paths = Paths.resolve(home)
    paths.home.mkdir(parents=True, exist_ok=True)
    vault = Vault(paths.vault_db, paths.vault_key)
    vault.set("provider", KEY, tier="system")
    vault.close()
    text = CONFIG_HEAD.format(
        backend="docker" if docker else "none",
        image=kwargs["image"],
        max_tokens=MAX_TOKENS,
        model=PROVIDER_MODEL,
        api_base=kwargs["base"],
    )
    text += kwargs.get("extra", "")  # more config (e.g. a [host] section), for experiments
    text += "".join(CONFIG_AGENT.format(name=agent_name(i)) for i in range(count))
    config = parse_config(text)
    runtime = DockerBackend.for_starts(home, config.runtime.start_concurrency) if docker else None
    t0 = time.perf_counter()
    host = await stack.enter_async_context(
        Host.running(config, paths, runtime=runtime, preload_llm=True)  # as the daemon does
    )
    started = time.perf_counter() - t0
    polled = None
    if docker:
        names = [agent_name(i) for i in range(count)]
        while not all(n in host.last_poll for n in names):
            if time.perf_counter() - t0 > START_LIMIT_S:
                missing = [n for n in names if n not in host.last_poll]
                raise RuntimeError(f"{len(missing)} agents never polled, e.g. {missing[:3]}")
            await asyncio.sleep(0.01)
        polled = time.perf_counter() - t0
    return {
        "pid": os.getpid(),
        "sockets": [str(paths.agent_socket(agent_name(i))) for i in range(count)],
        "started_s": started,
        "polled_s": polled,
        "concurrency": config.runtime.start_concurrency,
    }


# --- one fleet size --------------------------------------------------------------------------


@dataclass
class Figures:
    count: int
    bare_s: float | None = None
    bare_started_s: float | None = None
    started_s: float = 0.0
    polled_s: float | None = None
    concurrency: int = 0
    idle_cpu: float | None = None  # CPUs busy (1.0 = one core)
    idle_dockerd: float | None = None
    idle_window_s: float = 0.0
    first_ms: float = 0.0  # host CPU per call, ms
    warm_ms: float = 0.0
    first_wall_s: float = 0.0
    warm_wall_s: float = 0.0
    legion: Phase = field(default_factory=Phase)
    direct: Phase = field(default_factory=Phase)


async def burst(streamers: list[Streamer], pid: int) -> tuple[float, float, Phase]:
    """Every agent's call at once: (host CPU ms per call, wall seconds, the phase)."""
    await quiet(pid)
    phase = Phase()
    before = cpu_ns(pid)
    t0 = time.perf_counter()
    await asyncio.gather(*(asyncio.wait_for(s(phase), STREAM_LIMIT_S) for s in streamers))
    wall = time.perf_counter() - t0
    await quiet(pid)
    if phase.failed:
        raise RuntimeError(f"{phase.failed} calls of a burst failed: {phase.errors}")
    return (cpu_ns(pid) - before) / 1e6 / len(streamers), wall, phase


async def measure(
    figures: Figures,
    info: dict[str, Any],
    base: str,
    provider_pid: int,
    idle_s: float,
    phases: int,
    phase_s: float,
    docker: bool,
) -> None:
    pid = info["pid"]
    figures.started_s, figures.polled_s = info["started_s"], info["polled_s"]
    figures.concurrency = info["concurrency"]
    if docker:
        engine = dockerd_pid()
        await asyncio.sleep(2.0)  # the agents' first requests after their poll
        await quiet(pid)
        before, engine_before = cpu_ns(pid), cpu_ns(engine) if engine else 0
        t0 = time.perf_counter()
        await asyncio.sleep(idle_s)
        window = time.perf_counter() - t0
        figures.idle_window_s = window
        figures.idle_cpu = (cpu_ns(pid) - before) / 1e9 / window
        if engine:
            figures.idle_dockerd = (cpu_ns(engine) - engine_before) / 1e9 / window
    clients: list[httpx.AsyncClient] = []
    legion: list[Streamer] = []
    direct: list[Streamer] = []

    def streamer(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> Streamer:
        clients.append(client)
        data = json.dumps(body).encode()
        return lambda phase: one_stream(client, url, data, phase)

    for i, path in enumerate(info["sockets"]):
        to_host = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=path),
            base_url="http://legion",
            timeout=STREAM_LIMIT_S,
            trust_env=False,
        )
        legion.append(
            streamer(to_host, "/v1/chat/completions", {"messages": prompt(i), "stream": True})
        )
        to_provider = httpx.AsyncClient(
            timeout=STREAM_LIMIT_S, trust_env=False, headers={"authorization": f"Bearer {KEY}"}
        )
        body = {
            "model": PROVIDER_MODEL.split("/", 1)[1],
            "messages": prompt(i),
            "stream": True,
            "max_tokens": MAX_TOKENS,
            "stream_options": {"include_usage": True},
        }
        direct.append(streamer(to_provider, base + "/chat/completions", body))
    try:
        figures.first_ms, figures.first_wall_s, _ = await burst(legion, pid)
        warm = [await burst(legion, pid) for _ in range(3)]
        figures.warm_ms = sum(w[0] for w in warm) / len(warm)
        figures.warm_wall_s = sum(w[1] for w in warm) / len(warm)
        warmup = Phase()
        await asyncio.gather(*(s(warmup) for s in direct))  # the direct side's connections
        pids = {"host": pid, "provider": provider_pid}
        results: dict[str, list[Phase]] = {"legion": [], "direct": []}
        for n in range(phases):
            order = ("legion", "direct") if n % 2 == 0 else ("direct", "legion")
            for side in order:
                await quiet(pid)
                streams = legion if side == "legion" else direct
                results[side].append(await run_phase(streams, phase_s, pids))
        figures.legion, figures.direct = merge(results["legion"]), merge(results["direct"])
    finally:
        for client in clients:
            await client.aclose()


def rate(p: Phase) -> float:
    return p.completed / p.elapsed if p.elapsed else 0.0


def show(f: Figures) -> None:
    line(f"-- {f.count} agents (start concurrency {f.concurrency}) --")
    if f.polled_s is not None and f.bare_s is not None:
        line(
            f"start: legion {f.polled_s:.2f} s to every first poll (containers started at "
            f"{f.started_s:.2f} s); bare {f.bare_s:.2f} s with the runtime's start-up, "
            f"{f.bare_started_s or 0:.2f} s create+start only; "
            f"{f.polled_s / f.bare_s:.2f}x"
        )
    if f.idle_cpu is not None:
        engine = f" (dockerd {f.idle_dockerd * 100:.2f}%)" if f.idle_dockerd is not None else ""
        line(f"idle: host {f.idle_cpu * 100:.3f}% of a CPU over {f.idle_window_s:.0f} s{engine}")
    line(
        f"first burst: {f.first_ms:.2f} ms host CPU per call ({f.first_wall_s:.2f} s wall); "
        f"warm {f.warm_ms:.2f} ms ({f.warm_wall_s:.2f} s wall); "
        f"{f.first_ms / f.warm_ms if f.warm_ms else 0:.2f}x"
    )
    for name, p in (("legion", f.legion), ("direct", f.direct)):
        cpu = ""
        if p.completed:
            cpu = "; CPU ms/stream " + ", ".join(
                f"{k} {v / p.completed * 1e3:.2f}" for k, v in p.cpu.items()
            )
        line(
            f"warm {name:6s} {rate(p):7.1f} streams/s ({p.completed} in {p.elapsed:.1f} s, "
            f"{p.failed} failed); stream p50 {percentile(p.duration, 50) * 1e3:.1f} ms "
            f"p99 {percentile(p.duration, 99) * 1e3:.1f} ms; TTFT p99 "
            f"{percentile(p.ttft, 99) * 1e3:.1f} ms{cpu}"
        )
        for error in p.errors:
            line(f"  error: {error}")


def one_size(
    figures: Figures,
    image: str,
    docker: bool,
    base: str,
    provider_pid: int,
    profile: str | None,
    quick: bool,
) -> None:
    """Every figure of one fleet size, on a fresh home."""
    from legion.config import RuntimeConfig

    idle_s, phases, phase_s = (8.0, 2, 2.0) if quick else (30.0, 3, 4.0)
    with short_home("lgs-") as home:
        try:
            if docker:
                concurrency = RuntimeConfig().start_concurrency
                figures.bare_s, figures.bare_started_s = bare_start(
                    image, figures.count, concurrency, home
                )
            kwargs = {
                "home": str(home / "h"),
                "count": figures.count,
                "docker": docker,
                "image": image,
                "base": base,
            }
            prof = profile_path(profile, f"fleet_scale_host_{figures.count}")

            async def go() -> None:
                async with server_process(
                    _host, kwargs, prof, ready_timeout_s=START_LIMIT_S + 60
                ) as info:
                    await measure(
                        figures, info, base, provider_pid, idle_s, phases, phase_s, docker
                    )

            asyncio.run(go())
        finally:
            sweep(str(home / "h"))


def run(
    quick: bool = False, profile: str | None = None, counts: tuple[int, ...] | None = None
) -> Report:
    from tests.fakes.provider import FakeProviderProcess

    report = Report("fleet_scale")
    counts = counts or (QUICK_COUNTS if quick else COUNTS)
    heading(f"fleet_scale: {', '.join(map(str, counts))} agents on one host")
    image = agent_image()
    problem = docker_problem(image)
    docker = problem is None
    line(f"load before: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs")
    if problem:
        line(f"start and idle not run: {problem}")
    all_figures: list[Figures] = []
    with FakeProviderProcess(latency_ms=LATENCY_MS) as provider:
        assert provider.proc is not None
        for count in counts:
            figures = Figures(count)
            one_size(figures, image, docker, provider.base_url, provider.proc.pid, profile, quick)
            show(figures)
            all_figures.append(figures)
    line(f"load after: {os.getloadavg()[0]:.2f} (1 min)")
    small, large = all_figures[0], all_figures[-1]
    n = large.count
    if large.polled_s is not None and large.bare_s:
        ratio = large.polled_s / large.bare_s
        report.check(
            f"start of {n} agents vs bare containers",
            ratio <= TARGET_START,
            f"{large.polled_s:.2f} s vs {large.bare_s:.2f} s = {ratio:.2f}x "
            f"(target <= {TARGET_START}x)",
        )
    else:
        report.check(f"start of {n} agents vs bare containers", False, f"not run: {problem}")
    if large.idle_cpu is not None and small.idle_cpu:
        ratio = large.idle_cpu / small.idle_cpu
        report.check(
            f"idle CPU at {n} vs {small.count} agents",
            ratio <= TARGET_IDLE,
            f"{large.idle_cpu * 100:.3f}% vs {small.idle_cpu * 100:.3f}% of a CPU = "
            f"{ratio:.2f}x (target <= {TARGET_IDLE}x)",
        )
    else:
        report.check(f"idle CPU at {n} vs {small.count} agents", False, f"not run: {problem}")
    ratio = large.first_ms / large.warm_ms if large.warm_ms else float("inf")
    report.check(
        f"first-burst CPU per call at {n} agents vs warm",
        ratio <= TARGET_FIRST,
        f"{large.first_ms:.2f} ms vs {large.warm_ms:.2f} ms = {ratio:.2f}x "
        f"(target <= {TARGET_FIRST}x)",
    )
    d_rate, l_rate = rate(large.direct), rate(large.legion)
    ratio = l_rate / d_rate if d_rate else 0.0
    report.check(
        f"warm throughput at {n} agents vs direct",
        ratio >= TARGET_THROUGHPUT and large.legion.failed == 0,
        f"{l_rate:.1f} vs {d_rate:.1f} streams/s = {ratio:.2f}x (target >= {TARGET_THROUGHPUT}x)",
    )
    l99, d99 = percentile(large.legion.duration, 99), percentile(large.direct.duration, 99)
    ratio = l99 / d99 if d99 else float("inf")
    report.check(
        f"warm stream p99 at {n} agents vs direct",
        ratio <= TARGET_P99,
        f"{l99 * 1e3:.1f} ms vs {d99 * 1e3:.1f} ms = {ratio:.2f}x (target <= {TARGET_P99}x)",
    )
    return report


def main(argv: list[str] | None = None) -> int:
    parser: argparse.ArgumentParser = base_args(
        (__doc__ or "").splitlines()[0], prog="python -m bench.fleet_scale"
    )
    parser.add_argument(
        "--agents", help="fleet sizes, comma-separated (default 10,100; --quick: 4,16)"
    )
    args = parser.parse_args(argv)
    counts = tuple(int(n) for n in args.agents.split(",")) if args.agents else None
    run(quick=args.quick, profile=args.profile, counts=counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
