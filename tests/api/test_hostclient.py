"""HostClient (issue 9): one client, two transports (in-process and the control socket),
the same answers and the same typed events; `open_host` attaches or embeds."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from legion.api.hostclient import AgentDraft, ApiError, HostClient, open_host
from legion.daemon import AlreadyRunning, acquire_lock
from legion.paths import Paths
from legion.wire.events import AgentReply, BlackboardChanged, TokenDelta
from tests.conftest import Daemon
from tests.fakes.provider import FakeProvider
from tests.fleetproc import agent_process, fleet_config, prepare_home

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

Opener = Callable[[], Any]


@pytest.fixture(params=["embedded", "attached"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def fake() -> Any:
    with FakeProvider(chunk_chars=2) as provider:
        yield provider


@pytest.fixture
def connect(home: Path, fake: FakeProvider, daemon: Callable[[], Daemon], mode: str) -> Opener:
    """`async with connect() as client:` on a home with one agent (alice), in `mode`."""
    paths = prepare_home(home, fleet_config(fake.base_url))

    @asynccontextmanager
    async def opened() -> AsyncIterator[HostClient]:
        if mode == "attached":
            daemon().start()
        async with open_host(paths) as client:
            yield client

    return opened


async def test_the_mode_is_what_runs_on_the_home(connect: Opener, mode: str) -> None:
    async with connect() as client:
        assert client.mode == mode
        status = await client.status()
        assert [a.name for a in status.agents] == ["alice"]
        if mode == "attached":
            assert client.label == f"attached to daemon pid {status.pid}"
        else:
            assert client.label == "embedded host" and status.pid > 0


async def test_blackboard_and_its_events(connect: Opener) -> None:
    async with connect() as client, client.subscribe() as events:
        entry = await client.bb_put("notes/plan", {"step": 1}, ttl_s=60)
        assert entry.version == 1 and entry.writer == "operator" and entry.expires_at
        event = await anext(events)
        while not isinstance(event, BlackboardChanged):
            event = await anext(events)
        assert (event.key, event.op, event.version) == ("notes/plan", "put", 1)
        assert (await client.bb_get("notes/plan")).value == {"step": 1}
        assert [e.key for e in (await client.bb_list("notes/")).entries] == ["notes/plan"]
        assert (await client.bb_delete("notes/plan")).deleted
        with pytest.raises(ApiError) as missing:
            await client.bb_get("notes/plan")
        assert missing.value.status == 404


async def test_read_outs(connect: Opener) -> None:
    async with connect() as client:
        costs = await client.costs()
        assert [a.agent for a in costs.agents] == ["alice"]
        assert costs.agents[0].daily_cap_usd == 1.0 and costs.fleet_daily_cap_usd == 5.0
        await client.bb_put("notes/x", 1)
        page = await client.audit(actor="operator", limit=10)
        assert page.records and page.records[-1].action == "bb.put"
        assert all(r.actor == "operator" for r in page.records)
        assert not (await client.audit(decision="deny")).records
        verdict = await client.audit_verify()
        assert verdict.ok and verdict.checked >= len(page.records)
        check = await client.config_check()
        assert check.ok and check.agents == ["alice"]
        vault = await client.vault_list()
        assert [(v.name, v.tier) for v in vault.entries] == [("provider", "system")]
        assert (await client.claims()).claims == []
        with pytest.raises(ApiError) as bad:
            await client.audit(decision="maybe")
        assert bad.value.code == "bad_filter"


async def test_errors_are_typed(connect: Opener) -> None:
    async with connect() as client:
        with pytest.raises(ApiError) as unknown:
            await client.send("ghost", "hi")
        assert unknown.value.code == "unknown_agent" and unknown.value.status == 404
        with pytest.raises(ApiError) as no_runtime:
            await client.agent_action("alice", "restart")
        assert no_runtime.value.code == "no_runtime"


async def test_chat_streams_then_replies(connect: Opener, home: Path) -> None:
    async with connect() as client:
        with agent_process(Paths.resolve(home), "alice"):
            seen = [e async for e in client.chat("alice", "hello there")]
    deltas = [e for e in seen if isinstance(e, TokenDelta)]
    assert len(deltas) > 3  # two characters per chunk: token by token
    assert "".join(d.text for d in deltas) == "echo: hello there"
    assert isinstance(seen[-1], AgentReply) and seen[-1].text == "echo: hello there"


async def test_add_and_remove_an_agent(connect: Opener, home: Path) -> None:
    async with connect() as client:
        result = await client.add_agent(AgentDraft(name="bob", model="m", budget_daily=0.5))
        assert result.added == ["bob"]
        assert [a.name for a in (await client.agents()).agents] == ["alice", "bob"]
        assert "[agents.bob.budget]" in (home / "legion.toml").read_text()
        with pytest.raises(ApiError) as invalid:
            await client.add_agent(AgentDraft(name="carol", model="nope"))
        assert invalid.value.code == "config_invalid"
        assert "carol" not in (home / "legion.toml").read_text()  # nothing half-applied
        assert (await client.remove_agent("bob")).removed == ["bob"]
        assert [a.name for a in (await client.agents()).agents] == ["alice"]


async def test_embedded_host_holds_the_lock(home: Path, fake: FakeProvider) -> None:
    paths = prepare_home(home, fleet_config(fake.base_url))
    async with open_host(paths) as client:
        assert client.mode == "embedded"
        with pytest.raises(AlreadyRunning):
            acquire_lock(paths).close()
        # a second TUI on the same home attaches to the first one's control socket
        async with open_host(paths) as second:
            assert second.mode == "attached"
            assert (await second.status()).pid == (await client.status()).pid
    acquire_lock(paths).close()  # released when the embedded host stopped
    assert not paths.control_socket.exists()


async def test_events_are_the_same_bytes_on_both_transports(home: Path, fake: FakeProvider) -> None:
    """The in-process stream passes the control route's redaction: a vault value written
    to the blackboard never reaches the TUI, embedded or not."""
    paths = prepare_home(home, fleet_config(fake.base_url))
    async with open_host(paths) as client, client.subscribe() as events:
        from tests.fleetproc import PROVIDER_KEY

        with pytest.raises(ApiError):
            await client.send("ghost", PROVIDER_KEY)  # refused; audited with the key masked
        async with asyncio.timeout(10):
            async for event in events:
                assert PROVIDER_KEY not in event.model_dump_json()
                if event.type == "audit_appended":
                    break


async def test_an_agent_name_cannot_inject_toml(connect: Opener, home: Path) -> None:
    """issue 9 (attack pass): the name becomes a table header in legion.toml."""
    before = (home / "legion.toml").read_text()
    async with connect() as client:
        with pytest.raises(ApiError) as bad:
            await client.add_agent(AgentDraft(name='x]\n[host]\nlog_level = "debug"\n[agents.y'))
        assert bad.value.code == "invalid_name"
    assert (home / "legion.toml").read_text() == before


async def test_the_embedded_host_logs_to_a_private_file(home: Path, fake: FakeProvider) -> None:
    paths = prepare_home(home, fleet_config(fake.base_url))
    log_file = home / "logs" / "tui-host.log"
    async with open_host(paths, log_file=log_file) as client:
        assert client.mode == "embedded"
    assert log_file.stat().st_mode & 0o777 == 0o600
