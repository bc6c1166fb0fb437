"""The direct path's connection pools share one TLS context, built off the event loop."""

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


async def test_issue_10_first_calls_of_ten_agents_build_one_tls_context_off_the_loop(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """issue 10: each agent's pool used to build its own TLS context (the CA bundle loaded,
    ~25 ms of CPU and ~1 MiB) on the event loop at its first call, even toward a plain-http
    upstream. Ten agents' first calls now load the CA bundle once, in a worker thread."""
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
            loop_thread = threading.current_thread().name
            clients = [agent_client(paths, a) for a in AGENTS]  # (each builds one)
            monkeypatch.setattr(ssl, "create_default_context", counted)
            body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
            try:
                answers = await asyncio.gather(
                    *(c.post("/v1/chat/completions", json=body) for c in clients)
                )
            finally:
                for client in clients:
                    await client.aclose()
            assert [a.status_code for a in answers] == [200] * len(AGENTS)
            assert len(host.gateway.passthrough._clients) == len(AGENTS)  # a pool per agent
            assert len(loads) == 1 and loads[0] != loop_thread, loads
