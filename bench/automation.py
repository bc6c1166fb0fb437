"""Cron firing lateness: 200 jobs due in the same minute while 16 agents stream.

The host runs in its own process (durability "full", the default) with 16 agents; 200
message-mode jobs (`* * * * *`) are spread over them. Meanwhile 16 clients, one per
agent socket, stream chat completions back to back through the gateway from the fake
provider (its own process, a delta every 10 ms), so the host's loop is busy relaying
tokens when the minute turns.

Lateness of a run: from the minute (its slot) to the commit of its inbox item (the
`cron_run` event's `lateness_s`), for every run of every round. Baseline, in the same
run and on the same loop: a bare asyncio timer set for the same minute (how late the
busy loop wakes up at all). Target: lateness p99 <= 50 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench._common import (
    Report,
    heading,
    line,
    percentile,
    run_alone,
    server_process,
    short_home,
    start_host,
)

AGENTS = 16
JOBS = 200
TARGET_P99_MS = 50.0
KEY = "sk-bench-automation-key-0123456789"
WORDS = " ".join(f"word{i}" for i in range(120))

CONFIG_HEAD = """
[llm]
default_max_tokens = 2000

[llm.models.fast]
model = "openai/fake-model"
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


async def _servers(stack: contextlib.AsyncExitStack, kwargs: dict[str, Any]) -> dict[str, Any]:
    """In the child: the host, and the baseline timer for each coming minute."""
    from legion.gateway.vault import Vault
    from legion.paths import Paths

    home = kwargs["home"]
    paths = Paths.resolve(home)
    vault = Vault(paths.vault_db, paths.vault_key)
    vault.set("provider", KEY, tier="system")
    vault.close()
    text = CONFIG_HEAD.format(api_base=kwargs["base"])
    text += "".join(CONFIG_AGENT.format(name=agent_name(i)) for i in range(AGENTS))
    host = await start_host(stack, text)
    await host.litellm.get()  # its import holds the GIL for seconds: not during a round
    out = Path(home) / "baseline.jsonl"

    async def baseline() -> None:
        while True:
            slot = (int(time.time()) // 60 + 1) * 60
            await asyncio.sleep(max(0.0, slot - time.time()))
            late = time.time() - slot
            with out.open("a") as handle:
                handle.write(json.dumps({"slot": slot, "late": late}) + "\n")

    task = asyncio.create_task(baseline())
    stack.callback(task.cancel)
    return {
        "control": str(paths.control_socket),
        "sockets": [str(paths.agent_socket(agent_name(i))) for i in range(AGENTS)],
    }


async def _stream_forever(socket: str, stop: asyncio.Event, counts: list[int]) -> None:
    body = {
        "messages": [{"role": "user", "content": WORDS}],
        "stream": True,
        "max_tokens": 1000,
    }
    async with httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(uds=socket), base_url="http://legion", timeout=60
    ) as client:
        while not stop.is_set():
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                async for _ in response.aiter_lines():
                    if stop.is_set():
                        break
            counts[0] += 1


async def _drain(sockets: list[str]) -> None:
    """Play the agents between rounds: take and ack every queued run (no overlap skips)."""
    for socket in sockets:
        async with httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=socket), base_url="http://legion", timeout=30
        ) as agent:
            while True:
                items = (await agent.post("/v1/inbox/poll", json={"max_items": 100})).json()[
                    "items"
                ]
                if not items:
                    break
                await agent.post("/v1/inbox/ack", json={"ids": [i["id"] for i in items]})


async def _drain_minute(sockets: list[str]) -> None:
    """Let the coming minute pass (its runs are not measured), then take them all."""
    await asyncio.sleep(60 - time.time() % 60 + 1)
    await _drain(sockets)


async def _measure(info: dict[str, Any], rounds: int) -> tuple[list[float], int, int]:
    control = httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(uds=info["control"]),
        base_url="http://legion",
        timeout=60,
    )
    async with control:
        for n in range(JOBS):
            r = await control.post(
                "/v1/cron/jobs",
                json={
                    "agent": agent_name(n % AGENTS),
                    "name": f"job-{n:03d}",
                    "schedule": "* * * * *",
                    "message": f"run {n}",
                },
            )
            r.raise_for_status()
        stop = asyncio.Event()
        streamed = [0]
        streams = [asyncio.create_task(_stream_forever(s, stop, streamed)) for s in info["sockets"]]
        lateness: list[float] = []
        failed = 0
        try:
            async with asyncio.timeout(60):  # every stream under way before a round
                while streamed[0] < AGENTS:
                    await asyncio.sleep(0.1)
            if 60 - time.time() % 60 < 5:  # too close: skip to the next minute
                await _drain_minute(info["sockets"])
            async with control.stream("GET", "/v1/events", timeout=None) as events:
                lines = events.aiter_lines()
                for _ in range(rounds):
                    got = 0
                    line(
                        f"{streamed[0]} streams so far; waiting for the minute "
                        f"({60 - time.time() % 60:.0f} s) ..."
                    )
                    async with asyncio.timeout(130):
                        while got < JOBS:
                            event = json.loads(await anext(lines))
                            if event.get("type") != "cron_run":
                                continue
                            if event["status"] == "dispatched":
                                lateness.append(event["lateness_s"])
                                got += 1
                            elif event["status"] in ("failed", "overlap"):
                                failed += 1
                                got += 1
                    await _drain(info["sockets"])
        finally:
            stop.set()
            for task in streams:
                task.cancel()
            await asyncio.gather(*streams, return_exceptions=True)
    return lateness, failed, streamed[0]


def run(quick: bool = False, profile: str | None = None) -> Report:
    from tests.fakes.provider import FakeProviderProcess

    report = Report("automation")
    rounds = 1 if quick else 2
    heading(f"automation: cron lateness, {JOBS} jobs due in one minute, {AGENTS} agents streaming")
    with (
        FakeProviderProcess(chunk_delay_ms=10.0, chunk_chars=8) as provider,
        short_home() as home,
    ):

        async def main() -> tuple[list[float], int, int]:
            kwargs = {"home": str(home), "base": provider.base_url}
            async with server_process(_servers, kwargs, profile) as info:
                return await _measure(info, rounds)

        lateness, failed, streamed = asyncio.run(main())
        baseline_file = home / "baseline.jsonl"
        baseline = (
            [
                json.loads(raw)["late"]
                for raw in baseline_file.read_text().splitlines()
                if raw.strip()
            ]
            if baseline_file.exists()
            else []
        )
    p50, p99 = percentile(lateness, 50) * 1e3, percentile(lateness, 99) * 1e3
    worst = max(lateness) * 1e3 if lateness else float("nan")
    base = max(baseline) * 1e3 if baseline else float("nan")
    line(
        f"{len(lateness)} runs in {rounds} round(s) while {streamed} streams completed; "
        f"lateness p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms"
    )
    line(
        f"baseline (a bare timer for the same minute, same loop): {base:.1f} ms late; "
        f"cron p99 / baseline {p99 / base if base else float('nan'):.1f}x"
    )
    report.check(
        "cron lateness p99",
        p99 <= TARGET_P99_MS and failed == 0 and len(lateness) == rounds * JOBS,
        f"{p99:.1f} ms (target <= {TARGET_P99_MS:.0f} ms)"
        + (f"; {failed} runs failed or skipped" if failed else ""),
    )
    return report


if __name__ == "__main__":
    sys.exit(run_alone(run, __doc__, "automation"))
