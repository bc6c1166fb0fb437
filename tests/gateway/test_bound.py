"""Issue 7 item 2: the reservation covers whatever an agent sends, and a call booked beyond
it is an audited anomaly that stops the agent while it is over a cap. Both upstream paths."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from legion.config import parse_config
from legion.gateway.llm.bound import UpstreamBody
from legion.gateway.llm.gateway import CHAT_PARAMS
from legion.gateway.vault import Vault
from legion.host import Host
from legion.mesh import audit
from legion.paths import Paths
from tests.conftest import agent_client
from tests.fakes.provider import FakeProvider, Reply

pytestmark = pytest.mark.anyio

KEY = "sk-fake-provider-key-0123456789"
BIG = 200 * 1024
IN_PRICE, OUT_PRICE = 10e-6, 20e-6  # USD per token (10 and 20 per million)


@pytest.fixture(params=["direct", "litellm"])
def direct(request: pytest.FixtureRequest) -> bool:
    """Every test here runs both ways: the direct OpenAI-compatible path and LiteLLM."""
    return bool(request.param == "direct")


def config_text(base_url: str, direct: bool, *, daily: float | None, fleet: float | None) -> str:
    flag = "true" if direct else "false"
    budget = f"[agents.alice.budget]\ndaily_usd = {daily}\n" if daily is not None else ""
    fleet_line = f"fleet_daily_usd = {fleet}\n" if fleet is not None else ""
    return f"""
[host]
max_body_bytes = 4194304

[llm]
default_max_tokens = 50
{fleet_line}
[llm.models.fast]
model = "openai/fake-fast"
api_base = "{base_url}"
credential = "provider"
passthrough = {flag}
input_cost_per_mtok = 10.0
output_cost_per_mtok = 20.0

[llm.models.free]
model = "openai/fake-free"
api_base = "{base_url}"
passthrough = {flag}
input_cost_per_mtok = 0.0
output_cost_per_mtok = 0.0

[agents.alice]
model = "fast"
allowed_models = ["free"]
{budget}
[agents.bob]
model = "fast"
"""


@asynccontextmanager
async def host_for(
    home: Path,
    fake: FakeProvider,
    direct: bool,
    *,
    daily: float | None = None,
    fleet: float | None = None,
) -> AsyncIterator[Host]:
    paths = Paths.resolve(home)
    vault = Vault(paths.vault_db, paths.vault_key)
    vault.set("provider", KEY, tier="system")
    vault.close()
    config = parse_config(config_text(fake.base_url, direct, daily=daily, fleet=fleet))
    async with Host.running(config, paths) as host:
        yield host


def ledger(host: Host) -> list[dict[str, Any]]:
    cols = ["model", "status", "cost_usd", "reserved_usd", "prompt_tokens", "completion_tokens"]
    rows = host.store.execute(f"SELECT {', '.join(cols)} FROM ledger ORDER BY id")
    return [dict(zip(cols, r, strict=True)) for r in rows]


def records(host: Host, action: str) -> list[audit.AuditRecord]:
    return [r for r in audit.query(host.store.conn) if r.action == action]


def user(text: str = "hi") -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def big_tools() -> list[dict[str, Any]]:
    tools = []
    while len(json.dumps(tools)) < BIG:
        n = len(tools)
        tools.append(
            {
                "type": "function",
                "function": {
                    "name": f"tool_{n}",
                    "description": "does a thing " * 20,
                    "parameters": {
                        "type": "object",
                        "properties": {f"arg_{i}": {"type": "string"} for i in range(10)},
                    },
                },
            }
        )
    return tools


def big_parts() -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    while len(json.dumps(parts)) < BIG:
        parts.append({"type": "text", "text": "part " * 40})
        parts.append(
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 2000}}
        )
        parts.append({"type": "input_audio", "input_audio": {"data": "B" * 1000, "format": "wav"}})
    return parts


# Every parameter the allowlist forwards, each with a large value (or its largest sensible
# form, for a number or a flag). A parameter added to CHAT_PARAMS without a case here fails
# test_the_sweep_covers_every_forwarded_parameter.
SWEEP: dict[str, dict[str, Any]] = {
    "messages": {"messages": user("word " * (BIG // 5))},
    "messages (content parts)": {"messages": [{"role": "user", "content": big_parts()}]},
    "messages (unicode)": {"messages": user("\u00e9\u4e2d\U0001f600" * (BIG // 9))},
    "messages (many)": {
        "messages": [{"role": "user", "content": "x"} for _ in range(BIG // 30)],
    },
    "tools": {"messages": user(), "tools": big_tools()},
    "tool_choice": {
        "messages": user(),
        "tools": big_tools()[:1],
        "tool_choice": {"type": "function", "function": {"name": "t" * BIG}},
    },
    "parallel_tool_calls": {"messages": user(), "parallel_tool_calls": False},
    "temperature": {"messages": user(), "temperature": 1.9999999999999},
    "top_p": {"messages": user(), "top_p": 0.123456789012345},
    "stop": {"messages": user(), "stop": ["s" * (BIG // 4)] * 4},
    "response_format": {
        "messages": user(),
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "big",
                "schema": {
                    "type": "object",
                    "properties": {f"field_{i}": {"type": "string"} for i in range(BIG // 30)},
                },
            },
        },
    },
    "seed": {"messages": user(), "seed": -9223372036854775807},
    "presence_penalty": {"messages": user(), "presence_penalty": -1.999999999999},
    "frequency_penalty": {"messages": user(), "frequency_penalty": -1.999999999999},
    "logit_bias": {"messages": user(), "logit_bias": {str(i): -100 for i in range(BIG // 12)}},
    "user": {"messages": user(), "user": "u" * BIG},
    "reasoning_effort": {"messages": user(), "reasoning_effort": "r" * BIG},
}


def test_the_sweep_covers_every_forwarded_parameter() -> None:
    """issue 7: a new allowed parameter must join the sweep below."""
    covered = {key for case in SWEEP.values() for key in case}
    assert covered == set(CHAT_PARAMS)


@pytest.mark.parametrize("case", list(SWEEP))
async def test_the_reservation_covers_the_providers_own_count(
    home: Path, direct: bool, case: str
) -> None:
    """issue 7: every byte forwarded counts in the prompt bound. The fake provider reports
    as prompt_tokens the bytes it received (as many as any tokenizer could count)."""
    body = SWEEP[case]
    async with (
        FakeProvider(prompt_count="bytes") as fake,
        host_for(home, fake, direct) as host,
        agent_client(host.paths, "alice") as alice,
    ):
        response = await alice.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text[:500]
        [sent] = fake.requests
        [row] = ledger(host)
        received = len(json.dumps(sent.body, ensure_ascii=False, separators=(",", ":")).encode())
        assert row["prompt_tokens"] >= received * 0.99  # the fake counted what it received
        assert row["status"] == "ok"
        # the reservation covers the provider's own count: the prompt bound held
        assert row["cost_usd"] <= row["reserved_usd"]
        bound = (row["reserved_usd"] - 50 * OUT_PRICE) / IN_PRICE
        assert row["prompt_tokens"] <= bound * (1 + 1e-9), (case, row, bound)
        assert records(host, "llm.over_reservation") == []
        # every agent parameter reached the provider, so the sweep measured it
        for key in body:
            assert key in sent.body or not direct, key
        if direct:  # the direct path posts the very bytes it measured
            upstream = UpstreamBody.build({k: v for k, v in body.items() if k in CHAT_PARAMS})
            assert row["prompt_tokens"] == len(upstream.direct("fake-fast", 50, False))


async def test_a_streamed_call_is_bounded_too(home: Path, direct: bool) -> None:
    """issue 7: the stream fields the host adds count as well."""
    body = {**SWEEP["tools"], "stream": True}
    async with (
        FakeProvider(prompt_count="bytes") as fake,
        host_for(home, fake, direct) as host,
        agent_client(host.paths, "alice") as alice,
    ):
        async with alice.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            await response.aread()
        [row] = ledger(host)
        assert row["status"] == "ok" and row["prompt_tokens"] > BIG * 0.9
        assert row["cost_usd"] <= row["reserved_usd"]
        assert records(host, "llm.over_reservation") == []


LIE = {"prompt_tokens": 1_000_000, "completion_tokens": 100_000}  # $10 + $2 = $12


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_an_over_reported_call_is_booked_audited_evented_and_stops_the_agent(
    home: Path, direct: bool, stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """issue 7: a provider that reports more than the reservation: the ledger shows what it
    reported, the anomaly is audited, evented and logged once, and the agent's next calls
    (a free model's too) are refused 402 while it is over its cap."""
    caplog.set_level(logging.WARNING, logger="legion.gateway")
    async with (
        FakeProvider() as fake,
        host_for(home, fake, direct, daily=1.0) as host,
        agent_client(host.paths, "alice") as alice,
        host.bus.subscribe() as sub,
    ):
        fake.script(Reply(content="fine", usage=LIE))
        body = {"messages": user(), "stream": stream}
        response = await alice.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        [row] = ledger(host)
        assert (row["prompt_tokens"], row["completion_tokens"]) == (1_000_000, 100_000)
        assert row["cost_usd"] == pytest.approx(12.0)
        assert row["reserved_usd"] < 0.01
        assert host.budgets.spent_today("alice") == pytest.approx(12.0)
        [anomaly] = records(host, "llm.over_reservation")
        assert anomaly.actor == "alice" and anomaly.target == "fast"
        assert anomaly.detail["cost_usd"] == pytest.approx(12.0)
        assert anomaly.detail["over_usd"] == pytest.approx(12.0 - row["reserved_usd"])
        assert "cost above the reservation" in anomaly.detail["reason"]
        events = []
        while not sub.queue.empty():
            events.append(sub.queue.get_nowait())
        [evented] = [e for e in events if e.type == "over_reservation"]
        assert evented.agent == "alice" and evented.cost_usd == pytest.approx(12.0)
        assert evented.prompt_tokens == 1_000_000 and evented.prompt_bound < 1000
        logged = [r for r in caplog.records if "beyond its reservation" in r.getMessage()]
        assert len(logged) == 1
        # over the cap: refused, whatever the call would cost
        for model in ("fast", "free"):
            again = await alice.post(
                "/v1/chat/completions", json={"messages": user(), "model": model}
            )
            assert again.status_code == 402, again.text
            error = again.json()["error"]
            assert error["code"] == "budget_exceeded"
            assert "overspent" in error["message"]
        assert len(fake.requests) == 1  # nothing reached the provider after the anomaly
        assert host.budgets.remaining("alice")["daily"] == 0.0


async def test_the_fleet_cap_stops_every_agent_after_an_anomaly(home: Path, direct: bool) -> None:
    """issue 7: one agent's over-reported call takes the fleet over its cap: the other
    agents are refused too."""
    async with (
        FakeProvider() as fake,
        host_for(home, fake, direct, fleet=1.0) as host,
        agent_client(host.paths, "alice") as alice,
        agent_client(host.paths, "bob") as bob,
    ):
        fake.script(Reply(content="fine", usage=LIE))
        assert (await alice.post("/v1/chat/completions", json={"messages": user()})).is_success
        refused = await bob.post("/v1/chat/completions", json={"messages": user()})
        assert refused.status_code == 402
        assert refused.json()["error"]["detail"]["window"] == "fleet_daily"
        free = await alice.post("/v1/chat/completions", json={"messages": user(), "model": "free"})
        assert free.status_code == 402
        assert len(fake.requests) == 1


async def test_a_zero_price_model_reporting_too_many_tokens_is_an_anomaly(
    home: Path, direct: bool
) -> None:
    """issue 7: at price 0 no money is at stake, but tokens above the bound still show a
    bound that was too low or a lying upstream."""
    async with (
        FakeProvider() as fake,
        host_for(home, fake, direct, daily=1.0) as host,
        agent_client(host.paths, "alice") as alice,
    ):
        fake.script(Reply(content="fine", usage=LIE))
        ok = await alice.post("/v1/chat/completions", json={"messages": user(), "model": "free"})
        assert ok.status_code == 200
        [anomaly] = records(host, "llm.over_reservation")
        assert "prompt tokens above the prompt bound" in anomaly.detail["reason"]
        assert "cost above" not in anomaly.detail["reason"]
        # not over any cap: the agent goes on
        again = await alice.post("/v1/chat/completions", json={"messages": user()})
        assert again.status_code == 200


@pytest.mark.parametrize(
    "lie",
    [
        {"prompt_tokens": 2**64, "completion_tokens": 1},
        {"prompt_tokens": 1e9, "completion_tokens": 5},
    ],
    ids=["overflow", "float"],
)
async def test_absurd_usage_is_booked_clamped_and_releases_the_reservation(
    home: Path, direct: bool, lie: dict[str, Any]
) -> None:
    """issue 7 (attack pass): a lying upstream's 2**64 tokens overflowed the ledger's
    insert and left the reservation held forever; a float count was ignored on one path.
    Both are booked (clamped to 2**53 - 1), as anomalies, and nothing stays reserved."""
    async with (
        FakeProvider() as fake,
        host_for(home, fake, direct) as host,
        agent_client(host.paths, "alice") as alice,
    ):
        fake.script(Reply(content="fine", usage=lie))
        response = await alice.post("/v1/chat/completions", json={"messages": user()})
        assert response.status_code == 200, response.text
        [row] = ledger(host)
        assert row["prompt_tokens"] == min(int(lie["prompt_tokens"]), 2**53 - 1)
        assert host.budgets.open == {}
        assert all(v == 0 for v in host.budgets.reserved.values())
        assert host.store.execute("SELECT COUNT(*) FROM reservations").fetchone()[0] == 0
        assert len(records(host, "llm.over_reservation")) == 1


def test_non_text_parts_and_preambles_count_beyond_their_bytes() -> None:
    """issue 7: an image's URL says nothing of its tokens; tools and schemas get a
    provider-written preamble."""
    plain = UpstreamBody.build({"messages": user()})
    image = UpstreamBody.build(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}],
                }
            ]
        }
    )
    nested = UpstreamBody.build(
        {
            "messages": [
                {
                    "role": "tool",
                    "content": [{"type": "tool_result", "content": [{"type": "image"}] * 3}],
                }
            ]
        }
    )
    schema = UpstreamBody.build({"messages": user(), "response_format": {"type": "json_object"}})
    pdf = UpstreamBody.build(
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "file", "file": {"file_data": "data:;base64,JVBE"}}],
                }
            ]
        }
    )
    assert image.extra_tokens - plain.extra_tokens == 8192
    assert nested.extra_tokens - plain.extra_tokens == 4 * 8192
    assert schema.extra_tokens - plain.extra_tokens == 1024
    # a few bytes of PDF can hold a thousand pages: a document counts the model's window
    assert pdf.documents == 1 and pdf.extra_tokens == plain.extra_tokens
    assert pdf.prompt_bound("m", 10, False, 128_000) >= 128_000
    assert pdf.prompt_bound("m", 10, False, None) >= 2_000_000
    with pytest.raises(ValueError):
        UpstreamBody.build({"messages": user(), "temperature": float("nan")})
