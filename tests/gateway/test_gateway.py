"""The LLM gateway through real agent sockets, LiteLLM, and the fake provider over HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from legion.config import parse_config
from legion.gateway.llm.budget import Budgets
from legion.gateway.vault import Vault
from legion.host import Host
from legion.mesh import audit
from legion.paths import Paths
from legion.store import Store
from tests.conftest import agent_client
from tests.fakes.provider import FakeProvider, Reply, ToolCall

pytestmark = pytest.mark.anyio

KEY = "sk-fake-provider-key-0123456789"
PATH = {"direct": True}


@pytest.fixture(autouse=True, params=["direct", "litellm"])
def upstream_path(request: pytest.FixtureRequest) -> str:
    """Every gateway test runs both ways: the direct OpenAI-compatible path and LiteLLM."""
    PATH["direct"] = request.param == "direct"
    return str(request.param)


def config_text(
    base_url: str, *, daily: float | None = None, fleet: float | None = None, extra: str = ""
) -> str:
    budget = f"[agents.alice.budget]\ndaily_usd = {daily}\n" if daily is not None else ""
    fleet_line = f"fleet_daily_usd = {fleet}\n" if fleet is not None else ""
    direct = "true" if PATH["direct"] else "false"
    return f"""
[llm]
default_max_tokens = 100
{fleet_line}
[llm.models.fast]
model = "openai/fake-fast"
api_base = "{base_url}"
credential = "provider"
passthrough = {direct}
failover = ["backup"]
input_cost_per_mtok = 10.0
output_cost_per_mtok = 20.0

[llm.models.backup]
model = "openai/fake-backup"
api_base = "{base_url}"
credential = "provider"
passthrough = {direct}
input_cost_per_mtok = 30.0
output_cost_per_mtok = 60.0

[llm.models.unpriced]
model = "openai/no-such-model-anywhere"
api_base = "{base_url}"

[agents.alice]
model = "fast"
allowed_models = ["unpriced"]
{budget}
[agents.bob]
model = "backup"
{extra}
"""


@asynccontextmanager
async def gateway_host(home: Path, fake: FakeProvider, **kw: Any) -> AsyncIterator[Host]:
    paths = Paths.resolve(home)
    vault = Vault(paths.vault_db, paths.vault_key)
    vault.set("provider", KEY, tier="system")
    vault.close()
    async with Host.running(parse_config(config_text(fake.base_url, **kw)), paths) as host:
        yield host


def chat(content: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], **extra}


def ledger(host: Host) -> list[dict[str, Any]]:
    cols = [
        "agent",
        "model",
        "status",
        "cost_usd",
        "reserved_usd",
        "prompt_tokens",
        "completion_tokens",
        "kind",
    ]
    rows = host.store.execute(f"SELECT {', '.join(cols)} FROM ledger ORDER BY id")
    return [dict(zip(cols, r, strict=True)) for r in rows]


async def sse(response: httpx.Response) -> list[Any]:
    events = []
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            payload = line[6:]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


async def test_chat_injects_the_key_and_books_the_cost(home: Path) -> None:
    async with (
        FakeProvider() as fake,
        gateway_host(home, fake) as host,
        agent_client(host.paths, "alice") as alice,
    ):
        response = await alice.post("/v1/chat/completions", json=chat("hello there"))
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["choices"][0]["message"]["content"] == "echo: hello there"
        assert body["model"] == "fast"
        [sent] = fake.requests
        assert sent.headers["authorization"] == f"Bearer {KEY}"
        assert sent.body["model"] == "fake-fast" and sent.body["max_tokens"] == 100
        [row] = ledger(host)
        usage = body["usage"]
        expected = usage["prompt_tokens"] * 10e-6 + usage["completion_tokens"] * 20e-6
        assert row["status"] == "ok" and row["cost_usd"] == pytest.approx(expected)
        assert row["reserved_usd"] >= row["cost_usd"]
        assert host.budgets.open == {}
        assert KEY not in response.text


async def test_streaming_relays_chunks_and_publishes_token_deltas(home: Path) -> None:
    async with (
        FakeProvider() as fake,
        gateway_host(home, fake) as host,
        agent_client(host.paths, "alice") as alice,
    ):
        async with host.bus.subscribe() as sub:
            async with alice.stream(
                "POST", "/v1/chat/completions", json=chat("stream me please", stream=True)
            ) as response:
                assert response.status_code == 200
                assert response.headers["content-type"] == "text/event-stream"
                events = await sse(response)
            seen = []
            while not sub.queue.empty():
                seen.append(sub.queue.get_nowait())
        assert events[-1] == "[DONE]"
        text = "".join(
            (e["choices"][0].get("delta") or {}).get("content") or ""
            for e in events[:-1]
            if e.get("choices")
        )
        assert text == "echo: stream me please"
        deltas = [e for e in seen if e.type == "token_delta"]
        assert len(deltas) > 1 and "".join(d.text for d in deltas) == text
        assert {d.agent for d in deltas} == {"alice"}
        assert any(e.type == "cost_updated" and e.cost_usd > 0 for e in seen)
        [row] = ledger(host)
        assert row["status"] == "ok" and row["completion_tokens"] > 0


async def test_a_model_outside_the_allow_list_is_refused_and_audited(home: Path) -> None:
    async with (
        FakeProvider() as fake,
        gateway_host(home, fake) as host,
        agent_client(host.paths, "alice") as alice,
    ):
        response = await alice.post("/v1/chat/completions", json=chat(model="backup"))
        assert response.status_code == 403
        assert "allowed_models" in response.json()["error"]["message"]
        assert fake.requests == []
        denials = [
            r
            for r in audit.query(host.store.conn, actor="alice")
            if r.action == "llm.call" and r.decision == "deny"
        ]
        assert denials and denials[0].target == "backup"


async def test_hundred_concurrent_calls_never_exceed_the_cap(home: Path) -> None:
    # worst case per call ~ (67 prompt-bound + 100 max) tokens: about $0.0027; cap fits ~10
    cap = 0.027
    async with FakeProvider(latency_s=0.3) as fake, gateway_host(home, fake, daily=cap) as host:
        clients = [agent_client(host.paths, "alice") for _ in range(100)]
        try:
            responses = await asyncio.gather(
                *(
                    c.post("/v1/chat/completions", json=chat(f"call {i:03d}"))
                    for i, c in enumerate(clients)
                )
            )
        finally:
            await asyncio.gather(*(c.aclose() for c in clients))
        ok = [r for r in responses if r.status_code == 200]
        refused = [r for r in responses if r.status_code == 402]
        assert len(ok) + len(refused) == 100
        assert 5 <= len(ok) <= 12, len(ok)
        for r in refused:
            error = r.json()["error"]
            assert error["code"] == "budget_exceeded"
            assert error["detail"]["window"] == "daily"
            assert error["detail"]["needed_usd"] > error["detail"]["remaining_usd"]
        rows = ledger(host)
        assert sum(r["cost_usd"] for r in rows) <= cap
        assert sum(r["reserved_usd"] for r in rows) <= cap + 1e-9
        assert host.budgets.open == {}
        assert len(fake.requests) == len(ok)


async def test_fleet_cap_applies_across_agents(home: Path) -> None:
    async with (
        FakeProvider() as fake,
        gateway_host(home, fake, fleet=0.0001) as host,
        agent_client(host.paths, "bob") as bob,
    ):
        response = await bob.post("/v1/chat/completions", json=chat())
        assert response.status_code == 402
        assert response.json()["error"]["detail"]["window"] == "fleet_daily"


async def test_failover_before_the_first_byte_reserves_again_and_is_audited(home: Path) -> None:
    async with (
        FakeProvider() as fake,
        gateway_host(home, fake) as host,
        agent_client(host.paths, "alice") as alice,
    ):
        fake.script(Reply(status=429, retry_after=7), model="fake-fast")
        async with host.bus.subscribe() as sub:
            response = await alice.post("/v1/chat/completions", json=chat("fail over"))
            events = []
            while not sub.queue.empty():
                events.append(sub.queue.get_nowait())
        assert response.status_code == 200, response.text
        assert response.json()["model"] == "backup"
        assert [r.body["model"] for r in fake.requests] == ["fake-fast", "fake-backup"]
        rows = ledger(host)
        assert (rows[0]["model"], rows[0]["status"], rows[0]["cost_usd"]) == (
            "fast",
            "failed_rate_limit",
            0.0,
        )
        assert rows[1]["model"] == "backup" and rows[1]["status"] == "ok"
        # the second hop reserved at its own (higher) price
        assert rows[1]["reserved_usd"] > rows[0]["reserved_usd"]
        failovers = [e for e in events if e.type == "model_failover"]
        assert failovers[0].from_model == "fast" and failovers[0].to_model == "backup"
        assert any(r.action == "llm.failover" for r in audit.query(host.store.conn))
        # fast cools down for at least Retry-After: the next call goes straight to backup
        assert host.health.cooldown_left("fast") >= 6
        fake.reset()
        again = await alice.post("/v1/chat/completions", json=chat("again"))
        assert again.json()["model"] == "backup"
        assert [r.body["model"] for r in fake.requests] == ["fake-backup"]


async def test_auth_errors_take_a_model_out_for_an_hour(home: Path) -> None:
    async with (
        FakeProvider() as fake,
        gateway_host(home, fake) as host,
        agent_client(host.paths, "alice") as alice,
    ):
        fake.script(Reply(status=401), model="fake-fast")
        response = await alice.post("/v1/chat/completions", json=chat())
        assert response.status_code == 200
        assert 3500 < host.health.cooldown_left("fast") <= 3600


async def test_no_failover_after_the_first_streamed_byte(home: Path) -> None:
    async with (
        FakeProvider() as fake,
        gateway_host(home, fake) as host,
        agent_client(host.paths, "alice") as alice,
    ):
        fake.script(
            Reply(content="a long answer that will be cut " * 5, cut_after_chunks=4),
            model="fake-fast",
        )
        async with alice.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as response:
            assert response.status_code == 200
            events = await sse(response)
        assert "[DONE]" not in events
        assert events[-1]["error"]["code"] == "provider_error"
        assert [r.body["model"] for r in fake.requests] == ["fake-fast"]
        [row] = ledger(host)
        assert row["status"] == "failed_mid_stream" and row["completion_tokens"] > 0
        assert 0 < row["cost_usd"] <= row["reserved_usd"]


async def test_every_hop_failing_gives_a_typed_error_without_the_key(home: Path) -> None:
    async with (
        FakeProvider() as fake,
        gateway_host(home, fake) as host,
        agent_client(host.paths, "alice") as alice,
    ):
        leak = {"error": {"message": f"invalid key {KEY} rejected", "type": "server_error"}}
        fake.script(Reply(status=500, error=leak), model="fake-fast")
        fake.script(Reply(status=503, error=leak), model="fake-backup")
        async with host.bus.subscribe() as sub:
            response = await alice.post("/v1/chat/completions", json=chat())
            events = []
            while not sub.queue.empty():
                events.append(sub.queue.get_nowait())
        assert response.status_code == 502
        assert KEY not in response.text and "[REDACTED]" in response.text
        dump = " ".join(e.model_dump_json() for e in events)
        assert KEY not in dump
        records = json.dumps([r.as_dict() for r in audit.query(host.store.conn)])
        assert KEY not in records
        assert host.budgets.open == {}


async def test_client_abort_settles_what_was_produced(home: Path) -> None:
    async with FakeProvider(chunk_delay_s=0.05) as fake, gateway_host(home, fake) as host:
        fake.script(Reply(content="word " * 200), model="fake-fast")
        async with (
            agent_client(host.paths, "alice") as alice,
            alice.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as response,
        ):
            lines = response.aiter_lines()
            got = 0
            while got < 3:
                if (await lines.__anext__()).startswith("data: "):
                    got += 1
        for _ in range(200):
            if ledger(host):
                break
            await asyncio.sleep(0.02)
        [row] = ledger(host)
        assert row["status"] == "aborted"
        assert 0 < row["completion_tokens"] < 200
        assert host.budgets.open == {}


async def test_embeddings_are_budgeted(home: Path) -> None:
    async with (
        FakeProvider() as fake,
        gateway_host(home, fake) as host,
        agent_client(host.paths, "alice") as alice,
    ):
        response = await alice.post("/v1/embeddings", json={"input": ["a cat", "a dog"]})
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        assert len(data) == 2 and len(data[0]["embedding"]) > 0
        [row] = ledger(host)
        assert row["kind"] == "embedding" and row["cost_usd"] > 0


async def test_a_model_without_a_price_is_refused(home: Path) -> None:
    async with (
        FakeProvider() as fake,
        gateway_host(home, fake) as host,
        agent_client(host.paths, "alice") as alice,
    ):
        response = await alice.post("/v1/chat/completions", json=chat(model="unpriced"))
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "price_unknown"
        assert "input_cost_per_mtok" in response.json()["error"]["message"]
        assert fake.requests == []


def test_reservations_left_by_a_crash_are_booked_in_full(home: Path) -> None:
    config = parse_config(config_text("http://127.0.0.1:9/v1", daily=1.0))
    store = Store(home / "host.db")
    budgets = Budgets(store, config)
    budgets.reserve("alice", "fast", "openai/fake-fast", "req_1", 0.4)
    store.close()  # the host dies without settling
    store = Store(home / "host.db")
    again = Budgets(store, config)
    assert again.spent_today("alice") == pytest.approx(0.4)
    assert again.remaining("alice")["daily"] == pytest.approx(0.6)
    statuses = [r[0] for r in store.execute("SELECT status FROM ledger")]
    assert statuses == ["unsettled_at_crash"]
    assert store.execute("SELECT COUNT(*) FROM reservations").fetchone()[0] == 0


async def test_tool_calls_pass_through_streaming_and_not(home: Path) -> None:
    call = ToolCall("blackboard_write", {"key": "notes/x", "value": {"n": 1}})
    tools = [
        {
            "type": "function",
            "function": {
                "name": "blackboard_write",
                "description": "write",
                "parameters": {"type": "object", "properties": {"key": {"type": "string"}}},
            },
        }
    ]
    async with (
        FakeProvider() as fake,
        gateway_host(home, fake) as host,
        agent_client(host.paths, "alice") as alice,
    ):
        fake.script(Reply(tool_calls=[call]), Reply(tool_calls=[call]))
        plain = (await alice.post("/v1/chat/completions", json=chat(tools=tools))).json()
        [made] = plain["choices"][0]["message"]["tool_calls"]
        assert made["function"]["name"] == "blackboard_write"
        assert json.loads(made["function"]["arguments"]) == {"key": "notes/x", "value": {"n": 1}}
        assert plain["choices"][0]["finish_reason"] == "tool_calls"
        assert fake.requests[0].body["tools"][0]["function"]["name"] == "blackboard_write"
        async with alice.stream(
            "POST", "/v1/chat/completions", json=chat(tools=tools, stream=True)
        ) as response:
            events = await sse(response)
        pieces: dict[str, str] = {}
        for event in events[:-1]:
            for choice in event.get("choices") or []:
                for delta in (choice.get("delta") or {}).get("tool_calls") or []:
                    fn = delta.get("function") or {}
                    if fn.get("name"):
                        pieces["name"] = fn["name"]
                    pieces["args"] = pieces.get("args", "") + (fn.get("arguments") or "")
        assert pieces["name"] == "blackboard_write"
        assert json.loads(pieces["args"]) == {"key": "notes/x", "value": {"n": 1}}
        assert len(ledger(host)) == 2


async def test_agent_parameters_cannot_redirect_the_key_or_multiply_the_cost(home: Path) -> None:
    """Regression (security review of issue 3): LiteLLM honours base_url/api_base/extra
    headers; an agent must never steer where the host's key goes, nor ask for n copies."""
    async with (
        FakeProvider() as fake,
        FakeProvider() as thief,
        gateway_host(home, fake) as host,
        agent_client(host.paths, "alice") as alice,
    ):
        evil = chat(
            base_url=thief.base_url,
            api_base=thief.base_url,
            n=8,
            extra_headers={"X-Leak": "1"},
            max_completion_tokens=1,
            max_tokens=50,
        )
        response = await alice.post("/v1/chat/completions", json=evil)
        assert response.status_code == 200, response.text
        assert thief.requests == []
        [sent] = fake.requests
        assert "n" not in sent.body and "x-leak" not in sent.headers
        assert sent.body["max_tokens"] == 50 and "max_completion_tokens" not in sent.body


async def test_a_stream_abandoned_before_its_first_byte_is_settled(home: Path) -> None:
    async with FakeProvider() as fake, gateway_host(home, fake) as host:
        fake.script(Reply(content="slow " * 50, chunk_delay_s=0.05))
        _reader, writer = await asyncio.open_unix_connection(str(host.paths.agent_socket("alice")))
        body = json.dumps(chat(stream=True)).encode()
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        await writer.drain()
        writer.close()  # gone before the host answers
        for _ in range(300):
            if ledger(host) and not host.budgets.open:
                break
            await asyncio.sleep(0.02)
        assert host.budgets.open == {}
        assert ledger(host)[0]["status"] in ("abandoned", "aborted")
