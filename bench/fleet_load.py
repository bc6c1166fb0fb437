"""A fleet streaming at once: 32 agents, each its own socket, through legion vs direct.

Legion: 32 agents are configured on one host (its own process, durability "full", the
default); 32 concurrent clients, one per agent socket, each run streaming chat completions
(`stream: true`) back to back through the gateway (permission + audit, reserve, key,
LiteLLM, relay with a TokenDelta event per delta, settle).

Baseline: 32 concurrent httpx clients streaming the same completions straight from the
provider, in the same run. For context, a third side: 32 concurrent streams through
LiteLLM alone (in the client process, with the gateway's arguments). Legion necessarily
includes LiteLLM, so this side tells LiteLLM's share of the gap from legion's own.

The provider is the fake OpenAI-compatible server in its own process, 20 ms before the
first byte; every answer is about 20 deltas. Legion and direct use the same client code
(httpx, one keep-alive client per stream loop); the sides take turns in phases of a
bounded duration, in rotating order. Measured: completed streams per second, time to
first token (the first SSE event carrying text), whole-stream time, and CPU time per
stream of each process (host, provider, clients), which shows where a CPU-bound run goes.
Before each phase the run waits (up to 5 s) until all processes are idle: LiteLLM keeps
working (logging tasks) after its streams end, and no phase should pay for another.
Targets: legion throughput >= 0.6x direct; legion TTFT p99 - direct TTFT p99 <= 25 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench._common import (
    Report,
    heading,
    line,
    percentile,
    profile_path,
    run_alone,
    server_process,
    short_home,
    start_host,
)

AGENTS = 32
LATENCY_MS = 20.0
MIN_RATIO = 0.6
TTFT_ADDED_P99_MS = 25.0
MAX_TOKENS = 100
KEY = "sk-bench-provider-key-0123456789"
PROVIDER_MODEL = "openai/fake-model"
MAX_STREAMS_PER_PHASE = 100_000
STREAM_LIMIT_S = 30.0

CONFIG_HEAD = """
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
    return f"agent-{i:02d}"


def prompt(i: int) -> list[dict[str, str]]:
    text = f"agent {i:02d} here: report the status of task {i:02d} in one short sentence."
    return [{"role": "user", "content": text}]


async def _servers(stack: contextlib.AsyncExitStack, kwargs: dict[str, Any]) -> dict[str, Any]:
    """In the server child: seed the vault, start a host with 32 agents, preload LiteLLM."""
    from legion.gateway.vault import Vault
    from legion.paths import Paths

    home = kwargs["home"]
    os.environ["LEGION_HOME"] = home
    paths = Paths.resolve(home)
    vault = Vault(paths.vault_db, paths.vault_key)
    vault.set("provider", KEY, tier="system")
    vault.close()
    text = CONFIG_HEAD.format(max_tokens=MAX_TOKENS, model=PROVIDER_MODEL, api_base=kwargs["base"])
    text += "".join(CONFIG_AGENT.format(name=agent_name(i)) for i in range(AGENTS))
    host = await start_host(stack, text)
    await host.litellm.get()
    sockets = [str(paths.agent_socket(agent_name(i))) for i in range(AGENTS)]
    return {"sockets": sockets, "pid": os.getpid()}


# --- one stream ----------------------------------------------------------------------------


@dataclass
class Phase:
    completed: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    duration: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)


async def one_stream(client: httpx.AsyncClient, url: str, body: bytes, phase: Phase) -> None:
    t0 = time.perf_counter()
    first: float | None = None
    done = False
    try:
        async with client.stream("POST", url, content=body) as response:
            if response.status_code != 200:
                raise RuntimeError(
                    f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                )
            async for text in response.aiter_lines():
                if not text.startswith("data: "):
                    continue
                payload = text[6:]
                if payload == "[DONE]":
                    done = True
                    break
                if first is None:
                    event = json.loads(payload)
                    if "error" in event:
                        raise RuntimeError(f"stream error: {payload[:200]}")
                    for choice in event.get("choices") or []:
                        if (choice.get("delta") or {}).get("content"):
                            first = time.perf_counter()
    except Exception as exc:
        phase.failed += 1
        if len(phase.errors) < 5:
            phase.errors.append(f"{type(exc).__name__}: {exc}")
        return
    if not done or first is None:
        phase.failed += 1
        if len(phase.errors) < 5:
            phase.errors.append("stream ended without [DONE] or without text")
        return
    t1 = time.perf_counter()
    phase.completed += 1
    phase.ttft.append(first - t0)
    phase.duration.append(t1 - t0)


async def litellm_stream(litellm: Any, kwargs: dict[str, Any], phase: Phase) -> None:
    """One stream through LiteLLM alone (as the gateway calls it), consumed chunk by chunk."""
    t0 = time.perf_counter()
    first: float | None = None
    try:
        stream = await litellm.acompletion(**kwargs)
        async for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter()
    except Exception as exc:
        phase.failed += 1
        if len(phase.errors) < 5:
            phase.errors.append(f"{type(exc).__name__}: {exc}")
        return
    if first is None:
        phase.failed += 1
        if len(phase.errors) < 5:
            phase.errors.append("LiteLLM stream without text")
        return
    phase.completed += 1
    phase.ttft.append(first - t0)
    phase.duration.append(time.perf_counter() - t0)


def _litellm() -> Any:
    """LiteLLM configured exactly as the host configures it."""
    from legion.gateway.llm.runtime import load_blocking

    return load_blocking()


# --- CPU accounting ------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux /proc), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def settle(pids: dict[str, int], limit_s: float = 5.0) -> float:
    """Wait until every process is idle (LiteLLM keeps logging after a stream ends), so a
    phase never pays for the one before; returns the seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s:
        before = sum(cpu_seconds(pid) for pid in pids.values()) + time.process_time()
        await asyncio.sleep(0.1)
        after = sum(cpu_seconds(pid) for pid in pids.values()) + time.process_time()
        if after - before < 0.01:
            break
    return time.perf_counter() - t0


# --- phases --------------------------------------------------------------------------------


Streamer = Callable[[Phase], Awaitable[None]]


async def run_phase(streamers: list[Streamer], duration_s: float, pids: dict[str, int]) -> Phase:
    phase = Phase()
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    own = time.process_time()
    t0 = time.perf_counter()
    end = t0 + duration_s

    async def loop(stream: Streamer) -> None:
        while time.perf_counter() < end and phase.completed < MAX_STREAMS_PER_PHASE:
            await asyncio.wait_for(stream(phase), STREAM_LIMIT_S)

    await asyncio.gather(*(loop(stream) for stream in streamers))
    phase.elapsed = time.perf_counter() - t0
    phase.cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    phase.cpu["clients"] = time.process_time() - own
    return phase


def merge(phases: list[Phase]) -> Phase:
    out = Phase()
    for p in phases:
        out.completed += p.completed
        out.failed += p.failed
        out.errors += p.errors
        out.ttft += p.ttft
        out.duration += p.duration
        out.elapsed += p.elapsed
        for name, seconds in p.cpu.items():
            out.cpu[name] = out.cpu.get(name, 0.0) + seconds
    return out


SIDES = ("direct", "litellm", "legion")


async def _measure(
    info: dict[str, Any], base: str, provider_pid: int, phases: int, phase_s: float
) -> dict[str, Phase]:
    litellm = await asyncio.to_thread(_litellm)
    # LiteLLM's import leaves ~400k objects; without this, each full collection in this
    # (client) process stalls every client for ~200 ms and the baseline's p99 with it.
    gc.freeze()
    clients: list[httpx.AsyncClient] = []
    streamers: dict[str, list[Streamer]] = {side: [] for side in SIDES}

    def http_streamer(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> Streamer:
        clients.append(client)
        data = json.dumps(body).encode()
        return lambda phase: one_stream(client, url, data, phase)

    for i, path in enumerate(info["sockets"]):
        legion = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=path),
            base_url="http://legion",
            timeout=STREAM_LIMIT_S,
            trust_env=False,
        )
        body = {"messages": prompt(i), "stream": True}
        streamers["legion"].append(http_streamer(legion, "/v1/chat/completions", body))
        direct = httpx.AsyncClient(
            timeout=STREAM_LIMIT_S, trust_env=False, headers={"authorization": f"Bearer {KEY}"}
        )
        # What LiteLLM sends the provider for the gateway's call.
        body = {
            "model": PROVIDER_MODEL.split("/", 1)[1],
            "messages": prompt(i),
            "stream": True,
            "max_tokens": MAX_TOKENS,
            "stream_options": {"include_usage": True},
        }
        streamers["direct"].append(http_streamer(direct, base + "/chat/completions", body))
        # The arguments the gateway passes LiteLLM (Gateway._kwargs + stream options).
        kwargs = {
            "messages": prompt(i),
            "stream": True,
            "max_tokens": MAX_TOKENS,
            "model": PROVIDER_MODEL,
            "api_key": KEY,
            "api_base": base,
            "timeout": 120.0,
            "num_retries": 0,
            "max_retries": 0,
            "stream_options": {"include_usage": True},
        }
        streamers["litellm"].append(
            lambda phase, kw=kwargs: litellm_stream(litellm, kw, phase)  # type: ignore[misc]
        )
    pids = {"host": info["pid"], "provider": provider_pid}
    results: dict[str, list[Phase]] = {side: [] for side in SIDES}
    try:
        # Warm-up: connections, each agent's first call, LiteLLM's first streams.
        for side in SIDES:
            warm = Phase()
            for _ in range(2):
                await asyncio.gather(*(stream(warm) for stream in streamers[side]))
            if warm.failed:
                raise RuntimeError(f"{side} warm-up streams failed: {warm.errors}")
        for n in range(phases):
            for side in SIDES[n % 3 :] + SIDES[: n % 3]:
                await settle(pids)
                results[side].append(await run_phase(streamers[side], phase_s, pids))
    finally:
        for client in clients:
            await client.aclose()
    return {side: merge(ps) for side, ps in results.items()}


def _print(name: str, p: Phase) -> None:
    rate = p.completed / p.elapsed if p.elapsed else 0.0
    line(
        f"  {name:7s} {rate:8.1f} streams/s  ({p.completed} in {p.elapsed:.1f} s, "
        f"{p.failed} failed)"
    )
    line(
        f"          TTFT p50 {percentile(p.ttft, 50) * 1e3:7.2f} ms  "
        f"p90 {percentile(p.ttft, 90) * 1e3:7.2f} ms  p99 {percentile(p.ttft, 99) * 1e3:7.2f} ms"
    )
    line(
        f"          whole stream p50 {percentile(p.duration, 50) * 1e3:7.2f} ms  "
        f"p99 {percentile(p.duration, 99) * 1e3:7.2f} ms"
    )
    if p.completed:
        parts = ", ".join(
            f"{proc} {seconds / p.completed * 1e3:.2f}" for proc, seconds in p.cpu.items()
        )
        busy = sum(p.cpu.values()) / p.elapsed
        line(f"          CPU ms per stream: {parts}; {busy:.2f} of {os.cpu_count()} CPUs busy")
    for error in p.errors:
        line(f"          error: {error}")


def run(quick: bool = False, profile: str | None = None) -> Report:
    from tests.fakes.provider import FakeProviderProcess

    report = Report("fleet_load")
    heading(f"fleet_load: {AGENTS} concurrent streaming agents via legion vs direct to provider")
    phases, phase_s = (3, 1.5) if quick else (3, 3.5)
    with FakeProviderProcess(latency_ms=LATENCY_MS) as provider, short_home() as home:
        assert provider.proc is not None
        provider_pid = provider.proc.pid
        line(
            f"fake provider {provider.base_url}: own process, {LATENCY_MS:.0f} ms to first byte; "
            f"{phases} phases of {phase_s:.1f} s per side, in rotating order"
        )
        kwargs = {"home": str(home), "base": provider.base_url}
        prof = profile_path(profile, "fleet_load_host")

        async def go() -> dict[str, Phase]:
            async with server_process(_servers, kwargs, prof) as info:
                return await _measure(info, provider.base_url, provider_pid, phases, phase_s)

        res = asyncio.run(go())
    direct, alone, legion = (res[side] for side in SIDES)
    _print("direct", direct)
    _print("litellm", alone)
    _print("legion", legion)
    d_rate, a_rate, l_rate = (p.completed / p.elapsed if p.elapsed else 0.0 for p in res.values())
    ratio = l_rate / d_rate if d_rate else 0.0
    added = (percentile(legion.ttft, 99) - percentile(direct.ttft, 99)) * 1e3
    added50 = (percentile(legion.ttft, 50) - percentile(direct.ttft, 50)) * 1e3
    line(
        f"  legion/direct throughput {ratio:.2f}x, LiteLLM-alone/direct "
        f"{a_rate / d_rate if d_rate else 0.0:.2f}x, legion/LiteLLM-alone "
        f"{l_rate / a_rate if a_rate else 0.0:.2f}x; legion TTFT added p50 +{added50:.2f} ms"
    )
    if legion.completed and alone.completed:
        host = legion.cpu["host"] / legion.completed * 1e3
        lite = alone.cpu["clients"] / alone.completed * 1e3
        line(
            f"  host CPU per legion stream {host:.2f} ms vs LiteLLM alone {lite:.2f} ms per "
            f"stream (its client process, consumer included): legion's own ~{host - lite:.2f} ms"
        )
    report.check(
        "throughput vs direct",
        ratio >= MIN_RATIO and legion.failed == 0,
        f"{l_rate:.1f} vs {d_rate:.1f} streams/s = {ratio:.2f}x (target >= {MIN_RATIO}x)"
        + (f"; {legion.failed} legion streams failed" if legion.failed else ""),
    )
    report.check(
        "added TTFT p99",
        added <= TTFT_ADDED_P99_MS,
        f"+{added:.2f} ms (legion {percentile(legion.ttft, 99) * 1e3:.2f} ms - direct "
        f"{percentile(direct.ttft, 99) * 1e3:.2f} ms; target <= {TTFT_ADDED_P99_MS:.0f} ms)",
    )
    return report


if __name__ == "__main__":
    sys.exit(run_alone(run, __doc__, "fleet_load"))
