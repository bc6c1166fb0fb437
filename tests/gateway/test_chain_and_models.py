"""Issue 8 (gateway parts): a failed chain reports its root failure and every hop, budget
refusals are audited with their reason, and GET /v1/models lists what the agent may use
(issue 11: with context window and output limit). Both upstream paths."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import openai
import pytest

from legion.config import parse_config
from legion.gateway.llm import models
from legion.gateway.vault import Vault
from legion.host import Host
from legion.mesh import audit
from legion.paths import Paths
from tests.conftest import agent_client
from tests.fakes.provider import FakeProvider, Reply

pytestmark = pytest.mark.anyio

KEY = "sk-fake-provider-key-0123456789"


@pytest.fixture(params=["direct", "litellm"])
def direct(request: pytest.FixtureRequest) -> bool:
    return bool(request.param == "direct")


def closed_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def config_text(base_url: str, direct: bool, dead_url: str) -> str:
    flag = "true" if direct else "false"
    return f"""
[llm]
default_max_tokens = 100

[llm.models.primary]
model = "openai/fake-primary"
api_base = "{dead_url}"
credential = "provider"
passthrough = {flag}
failover = ["nopriced"]
input_cost_per_mtok = 1.0
output_cost_per_mtok = 1.0
timeout_s = 5.0

[llm.models.nopriced]
model = "openai/no-such-model-anywhere"
api_base = "{base_url}"
passthrough = {flag}

[llm.models.fast]
model = "openai/fake-fast"
api_base = "{base_url}"
credential = "provider"
passthrough = {flag}
failover = ["dear"]
input_cost_per_mtok = 1.0
output_cost_per_mtok = 1.0
context_window = 32768
max_output_tokens = 1024

[llm.models.dear]
model = "openai/fake-dear"
api_base = "{base_url}"
credential = "provider"
passthrough = {flag}
input_cost_per_mtok = 100000.0
output_cost_per_mtok = 100000.0

[llm.models.known]
model = "openai/gpt-4o-mini"
api_base = "{base_url}"
credential = "provider"
passthrough = {flag}
input_cost_per_mtok = 1.0
output_cost_per_mtok = 1.0

[agents.alice]
model = "primary"
allowed_models = ["fast", "known", "fast"]

[agents.alice.budget]
daily_usd = 1.0

[agents.bob]
model = "fast"
"""


@asynccontextmanager
async def host_for(home: Path, fake: FakeProvider, direct: bool) -> AsyncIterator[Host]:
    paths = Paths.resolve(home)
    vault = Vault(paths.vault_db, paths.vault_key)
    vault.set("provider", KEY, tier="system")
    vault.close()
    dead = f"http://127.0.0.1:{closed_port()}/v1"
    async with Host.running(parse_config(config_text(fake.base_url, direct, dead)), paths) as host:
        yield host


def chat(**extra: object) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": "hi"}], **extra}


def refusals(host: Host) -> list[audit.AuditRecord]:
    return [r for r in audit.query(host.store.conn) if r.action == "llm.refused"]


async def test_a_failed_chain_reports_the_root_failure_first_and_every_hop(
    home: Path, direct: bool
) -> None:
    """issue 8: the primary is unreachable and the failover model has no price: the error
    leads with the unreachable primary (today the missing price hid it)."""
    async with (
        FakeProvider() as fake,
        host_for(home, fake, direct) as host,
        agent_client(host.paths, "alice") as alice,
    ):
        response = await alice.post("/v1/chat/completions", json=chat())
        assert response.status_code == 502, response.text
        error = response.json()["error"]
        assert error["code"] == "provider_error"
        assert error["message"].startswith("model 'primary' failed (server)")
        assert "then model 'nopriced' was refused (price_unknown)" in error["message"]
        hops = error["detail"]["hops"]
        assert [(h["model"], h["kind"]) for h in hops] == [
            ("primary", "server"),
            ("nopriced", "price_unknown"),
        ]
        assert all(h["message"] for h in hops)
        assert error["detail"]["model"] == "primary" and error["detail"]["kind"] == "server"
        [refused] = refusals(host)
        assert refused.target == "nopriced" and refused.detail["code"] == "price_unknown"
        assert fake.requests == []
        # now the primary cools down: the root cause still leads
        again = (await alice.post("/v1/chat/completions", json=chat())).json()["error"]
        assert again["message"].startswith("model 'primary' is cooling down after server")
        assert again["code"] == "price_unknown"
        assert [h["kind"] for h in again["detail"]["hops"]] == ["cooldown", "price_unknown"]
        assert KEY not in response.text + str(again)
        assert host.budgets.open == {}


async def test_a_budget_refusal_is_audited_with_its_reason(home: Path, direct: bool) -> None:
    """issue 8: the audit record of a refusal says which window, the cap, what was left and
    what the call needed; a refusal at a failover hop too, with the root failure leading."""
    async with (
        FakeProvider() as fake,
        host_for(home, fake, direct) as host,
        agent_client(host.paths, "alice") as alice,
    ):
        refused = await alice.post(
            "/v1/chat/completions", json=chat(model="fast", max_tokens=2_000_000)
        )
        assert refused.status_code == 402
        detail = refused.json()["error"]["detail"]
        [record] = refusals(host)
        assert record.decision == "deny" and record.target == "fast"
        assert record.detail["code"] == "budget_exceeded"
        assert record.detail["window"] == "daily" and record.detail["scope"] == "alice"
        assert record.detail["cap_usd"] == 1.0
        assert record.detail["remaining_usd"] == pytest.approx(detail["remaining_usd"])
        assert record.detail["needed_usd"] == pytest.approx(detail["needed_usd"])
        assert record.detail["needed_usd"] > 1.0
        assert record.detail["request_id"].startswith("req_")
        # the first hop fails, the second cannot be afforded
        fake.script(Reply(status=503), model="fake-fast")
        failed = await alice.post("/v1/chat/completions", json=chat(model="fast"))
        assert failed.status_code == 502
        error = failed.json()["error"]
        assert error["message"].startswith("model 'fast' failed (server)")
        assert [h["kind"] for h in error["detail"]["hops"]] == ["server", "budget_exceeded"]
        dear = refusals(host)[-1]
        assert dear.target == "dear" and dear.detail["window"] == "daily"
        assert dear.detail["needed_usd"] > dear.detail["remaining_usd"]


async def test_v1_models_lists_what_the_agent_may_use_with_its_limits(
    home: Path, direct: bool
) -> None:
    """issue 8 and 11: the agent's own model first, then its allowed models, each once;
    context window and output limit from the config, LiteLLM's table, or the defaults."""
    async with (
        FakeProvider() as fake,
        host_for(home, fake, direct) as host,
        agent_client(host.paths, "alice") as alice,
        agent_client(host.paths, "bob") as bob,
    ):
        listed = await alice.get("/v1/models")
        assert listed.status_code == 200, listed.text
        body = listed.json()
        assert body["object"] == "list"
        entries = {m["id"]: m for m in body["data"]}
        assert [m["id"] for m in body["data"]] == ["primary", "fast", "known"]
        assert all(m["object"] == "model" and m["owned_by"] == "openai" for m in body["data"])
        assert entries["fast"]["legion"] == {
            "context_window": 32768,
            "max_output_tokens": 1024,
            "source": "config",
        }
        assert entries["primary"]["legion"]["source"] in ("default", "litellm")
        if direct:  # LiteLLM is never imported just to list direct models
            assert host.litellm._task is None
        else:  # LiteLLM's own model table knows gpt-4o-mini
            assert entries["known"]["legion"] == {
                "context_window": 128000,
                "max_output_tokens": 16384,
                "source": "litellm",
            }
        assert [m["id"] for m in (await bob.get("/v1/models")).json()["data"]] == ["fast"]
        assert fake.requests == []


def test_model_limits_default_without_litellm() -> None:
    """issue 11: without LiteLLM loaded and without overrides, the documented defaults."""
    config = parse_config(config_text("http://127.0.0.1:1/v1", True, "http://127.0.0.1:1/v1"))
    limits = models.limits(config.llm, "known", None)
    assert (limits.context_window, limits.max_output_tokens, limits.source) == (
        models.DEFAULT_CONTEXT_WINDOW,
        100,
        "default",
    )


async def test_the_openai_client_lists_models_over_the_socket(home: Path, direct: bool) -> None:
    """issue 8: frameworks list models first; the official client reads the list and keeps
    legion's limits as an extra field."""
    async with (
        FakeProvider() as fake,
        host_for(home, fake, direct) as host,
        httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(host.paths.agent_socket("bob")))
        ) as http,
    ):
        client = openai.AsyncOpenAI(
            base_url="http://legion/v1", api_key="unused", http_client=http, max_retries=0
        )
        page = await client.models.list()
        [model] = page.data
        assert model.id == "fast" and model.object == "model"
        assert model.to_dict()["legion"]["context_window"] == 32768
        reply = await client.chat.completions.create(
            model=model.id, messages=[{"role": "user", "content": "hello"}]
        )
        assert reply.choices[0].message.content == "echo: hello"
