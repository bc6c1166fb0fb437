"""The direct path's connections: one pool for the fleet, no TLS context for plain http."""

from __future__ import annotations

import asyncio
import ssl
import threading
from pathlib import Path
from typing import Any

import pytest

from legion.config import parse_config
from legion.gateway.vault import Vault
from legion.host import Host
from legion.paths import Paths
from tests.conftest import agent_client
from tests.fakes.provider import FakeProvider

pytestmark = pytest.mark.anyio

AGENTS = [f"a{i}" for i in range(10)]


async def test_issue_10_first_calls_of_ten_agents_build_no_tls_context_and_share_one_pool(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """issue 10: each agent's pool used to build its own TLS context (the CA bundle loaded,
    ~25 ms of CPU and ~1 MiB) on the event loop at its first call, even toward a plain-http
    upstream. Ten agents' first calls toward an http upstream now load no CA bundle at all,
    and their connections go back to one fleet-wide pool, reused by the next calls."""
    loads: list[str] = []
    create = ssl.create_default_context

    def counted(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        loads.append(threading.current_thread().name)
        return create(*args, **kwargs)

    paths = Paths.resolve(home)
    vault = Vault(paths.vault_db, paths.vault_key)
    vault.set("provider", "sk-tls-test-key-0123456789", tier="system")
    vault.close()
    async with FakeProvider() as fake:
        agents = "".join(f'[agents.{a}]\nmodel = "m"\n' for a in AGENTS)
        text = f"""
[llm.models.m]
model = "openai/fake"
api_base = "{fake.base_url}"
credential = "provider"
input_cost_per_mtok = 1.0
output_cost_per_mtok = 1.0
{agents}"""
        async with Host.running(parse_config(text), paths) as host:
            clients = [agent_client(paths, a) for a in AGENTS]  # (each builds one)
            monkeypatch.setattr(ssl, "create_default_context", counted)
            body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
            try:
                answers = await asyncio.gather(
                    *(c.post("/v1/chat/completions", json=body) for c in clients)
                )
                assert [a.status_code for a in answers] == [200] * len(AGENTS)
                pool = host.gateway.passthrough.pool
                assert pool.stats()["busy"] == 0
                opened = pool.stats()["idle"]
                assert 1 <= opened <= len(AGENTS)
                for _ in range(3):  # one after the other: one connection serves them all
                    again = await clients[0].post("/v1/chat/completions", json=body)
                    assert again.status_code == 200
                assert pool.stats() == {"idle": opened, "busy": 0, "agents_holding": 0}
            finally:
                for client in clients:
                    await client.aclose()
            assert loads == [], loads  # plain http: no CA bundle loaded, on the loop or off
