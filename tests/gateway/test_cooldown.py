"""Model cooldowns: overlapping failures count once, the ladder climbs per failed attempt."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from legion.config import parse_config
from legion.gateway.llm.health import ModelHealth
from legion.gateway.vault import Vault
from legion.host import Host
from legion.paths import Paths
from tests.conftest import agent_client
from tests.fakes.provider import FakeProvider


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_issue_10_overlapping_failures_count_once() -> None:
    """issue 10: ten attempts in flight together that all fail are one failure (a 1 s
    cooldown), not ten (300 s)."""
    clock = Clock()
    health = ModelHealth(clock)
    began = clock()
    clock.now += 0.001
    cooldowns = []
    for _ in range(10):
        clock.now += 0.002  # the refusals arrive over 20 ms
        cooldowns.append(health.failure("m", "server", attempt_started=began))
    assert health.states["m"].failures == 1
    assert max(cooldowns) <= 1.0 and not health.available("m")
    clock.now += 1.0
    assert health.available("m")


def test_issue_10_the_ladder_climbs_per_failed_attempt_after_the_cooldown() -> None:
    """issue 10: each attempt made after the previous failure was counted, and failing,
    is the next rung: 1, 2, 4, 8 s ... capped at 300 s; a success resets it."""
    clock = Clock()
    health = ModelHealth(clock)
    seen = []
    for _ in range(11):
        began = clock()
        clock.now += 0.01
        seen.append(health.failure("m", "timeout", attempt_started=began))
        clock.now += health.cooldown_left("m")
    assert seen[:5] == pytest.approx([1.0, 2.0, 4.0, 8.0, 16.0]) and seen[-1] == pytest.approx(300)
    # a straggler, in flight since before the last failure was counted, does not climb
    clock.now += 1
    health.failure("m", "server", attempt_started=began)
    assert health.states["m"].failures == 11
    health.success("m")
    began = clock()
    assert health.failure("m", "server", attempt_started=began) == 1.0


def test_issue_10_an_overlapping_failure_may_lengthen_to_retry_after_and_hard_failures_hold() -> (
    None
):
    """issue 10: an overlapping 429 with a longer Retry-After lengthens the cooldown without
    climbing; an auth failure takes the model out for an hour, overlapping or not."""
    clock = Clock()
    health = ModelHealth(clock)
    began = clock()
    clock.now += 0.01
    health.failure("m", "server", attempt_started=began)
    left = health.failure("m", "rate_limit", retry_after=30, attempt_started=began)
    assert left == pytest.approx(30.0) and health.states["m"].failures == 1
    assert health.failure("m", "auth", attempt_started=began) == pytest.approx(3600.0)
    assert health.failure("m", "client", attempt_started=clock()) == 0.0  # never cools


KEY = "sk-cooldown-test-key-0123456789"
AGENTS = [f"a{i}" for i in range(10)]


def config(base_url: str) -> str:
    agents = "".join(f'[agents.{a}]\nmodel = "m"\n' for a in AGENTS)
    return f"""
[llm.models.m]
model = "openai/fake"
api_base = "{base_url}"
credential = "provider"
input_cost_per_mtok = 1.0
output_cost_per_mtok = 1.0

{agents}
"""


@pytest.mark.anyio
async def test_issue_10_fifty_refused_calls_leave_the_model_usable_two_seconds_later(
    home: Path,
) -> None:
    """issue 10: 50 concurrent calls (10 agents, 5 each) while the provider refuses
    connections for 1 s: the model cools down once, for 1 s, and answers 2 s after the
    burst began (it was 300 s when each refusal counted)."""
    paths = Paths.resolve(home)
    vault = Vault(paths.vault_db, paths.vault_key)
    vault.set("provider", KEY, tier="system")
    vault.close()
    probe = FakeProvider().start()
    port, base_url = probe.port, probe.base_url
    probe.stop()  # nothing listens on the port: every connection is refused
    async with Host.running(parse_config(config(base_url)), paths) as host:
        clients = [agent_client(paths, a) for a in AGENTS]
        try:
            body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
            began = time.monotonic()
            answers = await asyncio.gather(
                *(c.post("/v1/chat/completions", json=body) for c in clients for _ in range(5))
            )
            assert {a.status_code for a in answers} <= {502, 503}
            kinds = {a.json()["error"]["code"] for a in answers}
            assert "provider_error" in kinds  # refused connections, as such
            state = host.health.states["m"]
            assert state.failures == 1 and host.health.cooldown_left("m") <= 1.0
            await asyncio.sleep(max(0.0, began + 1.0 - time.monotonic()))  # the outage lasts 1 s
            with FakeProvider(port=port) as back:
                assert back.base_url == base_url
                while not host.health.available("m"):
                    assert time.monotonic() - began < 2.0, "still cooling down 2 s later"
                    await asyncio.sleep(0.01)
                ok: httpx.Response = await clients[0].post("/v1/chat/completions", json=body)
                assert ok.status_code == 200, ok.text
                assert time.monotonic() - began < 2.5
        finally:
            for client in clients:
                await client.aclose()
