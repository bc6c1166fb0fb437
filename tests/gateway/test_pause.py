"""The kill switch (issue 9): `POST /v1/pause` cuts an agent's LLM calls in flight and
refuses its new ones until `POST /v1/resume`; through real sockets, LiteLLM and the direct
path, against the fake provider over HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from legion.config import parse_config
from legion.host import Host
from legion.paths import Paths
from tests.conftest import agent_client, control_client
from tests.fakes.provider import FakeProvider, Reply
from tests.gateway.test_gateway import chat, config_text, gateway_host, ledger
from tests.gateway.test_gateway import upstream_path as upstream_path  # both paths, autouse

pytestmark = pytest.mark.anyio

CUT_WITHIN_S = 1.0


async def pause(host: Host, **body: Any) -> dict[str, Any]:
    async with control_client(host.paths) as operator:
        response = await operator.post("/v1/pause", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def resume(host: Host, **body: Any) -> dict[str, Any]:
    async with control_client(host.paths) as operator:
        response = await operator.post("/v1/resume", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def settled(host: Host, rows: int = 1) -> list[dict[str, Any]]:
    """The ledger once `rows` rows are booked and no reservation is open."""
    async with asyncio.timeout(10):
        while len(ledger(host)) < rows or host.budgets.open:
            await asyncio.sleep(0.01)
    return ledger(host)


async def test_a_stream_in_flight_is_cut_within_a_second_and_settled(home: Path) -> None:
    """issue 9: the kill switch cuts a stream mid-way; what it produced is booked."""
    async with FakeProvider(chunk_delay_s=0.05) as fake, gateway_host(home, fake) as host:
        fake.script(Reply(content="word " * 400), model="fake-fast")  # ~20 s of stream
        async with (
            agent_client(host.paths, "alice") as alice,
            alice.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as response,
        ):
            lines = response.aiter_lines()
            got = 0
            while got < 5:
                if (await lines.__anext__()).startswith("data: "):
                    got += 1
            assert host.gateway.inflight.in_flight("alice") == 1
            started = time.monotonic()
            state = await pause(host, agent="alice", reason="runaway")
            assert state["cut"] == 1 and state["paused"] == ["alice"]
            rest = [line async for line in lines if line.startswith("data: ")]
            elapsed = time.monotonic() - started
        assert elapsed < CUT_WITHIN_S, f"the stream went on for {elapsed:.2f} s after the pause"
        error = json.loads(rest[-1][6:])["error"]
        assert error["code"] == "agent_paused" and error["status"] == 423
        assert "legion resume alice" in error["message"] and "runaway" in error["message"]
        [row] = await settled(host)
        assert row["status"] == "paused"
        assert 0 < row["completion_tokens"] < 400  # what was produced, not the worst case
        assert row["cost_usd"] < row["reserved_usd"]
        assert host.gateway.inflight.in_flight() == 0
        rows = host.store.execute(
            "SELECT actor, action, target, detail FROM audit WHERE action = 'llm.pause'"
        )
        [(actor, _, target, detail)] = list(rows)
        assert (actor, target) == ("operator", "alice") and json.loads(detail)["cut"] == 1


async def test_a_call_waiting_for_its_first_byte_is_cut(home: Path) -> None:
    """issue 9: a model that thinks for minutes before its first token is cut too."""
    async with FakeProvider() as fake, gateway_host(home, fake) as host:
        fake.script(Reply(content="late", first_byte_delay_s=30), model="fake-fast")
        async with agent_client(host.paths, "alice") as alice:
            request = asyncio.ensure_future(
                alice.post("/v1/chat/completions", json=chat(stream=True))
            )
            async with asyncio.timeout(10):
                while host.gateway.inflight.in_flight("alice") == 0 or not host.budgets.open:
                    await asyncio.sleep(0.01)
            started = time.monotonic()
            await pause(host, agent="alice")
            response = await request
            elapsed = time.monotonic() - started
        assert elapsed < CUT_WITHIN_S
        assert response.status_code == 423
        assert response.json()["error"]["code"] == "agent_paused"
        [row] = await settled(host)
        assert row["status"] == "paused" and row["completion_tokens"] == 0
        assert row["prompt_tokens"] > 0  # the prompt was sent: booked


async def test_a_non_streamed_call_in_flight_is_cut_at_its_worst_case(home: Path) -> None:
    """issue 9: an answer nobody saw may have been produced in full: booked at the reservation
    (over-counted, never under)."""
    async with FakeProvider() as fake, gateway_host(home, fake) as host:
        fake.script(Reply(content="late", first_byte_delay_s=30), model="fake-fast")
        async with agent_client(host.paths, "alice") as alice:
            request = asyncio.ensure_future(alice.post("/v1/chat/completions", json=chat()))
            async with asyncio.timeout(10):
                while not host.budgets.open:
                    await asyncio.sleep(0.01)
            await pause(host, agent="alice")
            response = await request
        assert response.status_code == 423
        [row] = await settled(host)
        assert row["status"] == "paused"
        assert row["cost_usd"] == pytest.approx(row["reserved_usd"])


async def test_a_paused_agent_is_refused_until_resumed(home: Path) -> None:
    """issue 9: new calls get a typed refusal naming how to resume; nothing is reserved;
    resume restores; other agents are untouched."""
    async with FakeProvider() as fake, gateway_host(home, fake) as host:
        await pause(host, agent="alice")
        async with (
            agent_client(host.paths, "alice") as alice,
            agent_client(host.paths, "bob") as bob,
        ):
            refused = await alice.post("/v1/chat/completions", json=chat())
            assert refused.status_code == 423
            error = refused.json()["error"]
            assert error["code"] == "agent_paused"
            assert "`legion resume alice`" in error["message"]
            assert "nothing was dispatched or reserved" in error["message"]
            streamed = await alice.post("/v1/chat/completions", json=chat(stream=True))
            assert streamed.status_code == 423
            embedded = await alice.post("/v1/embeddings", json={"model": "fast", "input": "x"})
            assert embedded.status_code == 423
            assert ledger(host) == [] and fake.requests == []  # nothing dispatched
            assert (await bob.post("/v1/chat/completions", json=chat())).status_code == 200
            refusals = list(
                host.store.execute(
                    "SELECT detail FROM audit WHERE action = 'llm.refused' AND actor = 'alice'"
                )
            )
            assert refusals and json.loads(refusals[0][0])["code"] == "agent_paused"
            state = await resume(host, agent="alice")
            assert state["paused"] == [] and state["fleet"] is False
            assert (await alice.post("/v1/chat/completions", json=chat())).status_code == 200


async def test_pause_all_then_resume_one_keeps_the_others_paused(home: Path) -> None:
    """issue 9: `--all` pauses every agent; resuming one while the fleet is paused leaves the
    rest paused; `resume --all` lifts everything."""
    async with FakeProvider() as fake, gateway_host(home, fake) as host:
        async with host.bus.subscribe() as sub:
            state = await pause(host, all=True)
            assert state["fleet"] is True and state["paused"] == ["alice", "bob"]
            event = await asyncio.wait_for(_next_of(sub, "pause_changed"), 5)
            assert event.action == "pause" and event.target == "*"
            assert event.paused == ["alice", "bob"] and event.fleet
        async with agent_client(host.paths, "bob") as bob:
            assert (await bob.post("/v1/chat/completions", json=chat())).status_code == 423
            state = await resume(host, agent="bob")
            assert state["fleet"] is False and state["paused"] == ["alice"]
            assert (await bob.post("/v1/chat/completions", json=chat())).status_code == 200
        state = await resume(host, all=True)
        assert state["paused"] == [] and state["pauses"] == []


async def test_a_pause_survives_a_host_restart(home: Path) -> None:
    """issue 9: pauses are stored in host.db: a restarted host still refuses."""
    async with FakeProvider() as fake:
        async with gateway_host(home, fake) as host:
            await pause(host, agent="alice", reason="overnight")
        paths = Paths.resolve(home)
        async with Host.running(parse_config(config_text(fake.base_url)), paths) as host:
            async with agent_client(paths, "alice") as alice:
                refused = await alice.post("/v1/chat/completions", json=chat())
            assert refused.status_code == 423 and "overnight" in refused.text
            await resume(host, agent="alice")
            async with agent_client(paths, "alice") as alice:
                assert (await alice.post("/v1/chat/completions", json=chat())).status_code == 200


async def test_an_agent_that_stops_reading_cannot_hold_a_cut_call_open(home: Path) -> None:
    """issue 9 (attack pass): an agent whose stream blocks on its full socket buffer is cut
    anyway (its task is cancelled after the grace time) and the call is settled."""
    async with FakeProvider(chunk_chars=60_000) as fake, gateway_host(home, fake) as host:
        fake.script(Reply(content="x" * 8_000_000), model="fake-fast")
        config = host.config.llm
        config.default_max_tokens = 10_000_000
        reader, writer = await asyncio.open_unix_connection(str(host.paths.agent_socket("alice")))
        body = json.dumps(chat(stream=True)).encode()
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
            % (len(body), body)
        )
        await writer.drain()
        await reader.readexactly(1000)  # the stream started; then this agent reads no more
        await asyncio.sleep(0.3)  # let the host fill the socket buffer (no condition to wait on)
        state = await pause(host, agent="alice")
        assert state["cut"] == 1
        started = time.monotonic()
        [row] = await settled(host)
        assert time.monotonic() - started < CUT_WITHIN_S + 0.5
        assert row["status"] == "paused"
        assert host.gateway.inflight.in_flight() == 0
        writer.close()


async def test_pause_needs_one_target(home: Path) -> None:
    async with FakeProvider() as fake, gateway_host(home, fake) as host:
        async with control_client(host.paths) as operator:
            for body in ({}, {"all": True, "agent": "alice"}, {"all": False}):
                response = await operator.post("/v1/pause", json=body)
                assert response.status_code == 422
                assert response.json()["error"]["code"] == "invalid_body"
            response = await operator.post("/v1/pause", json={"agent": "ghost"})
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "unknown_agent"
            response = await operator.post("/v1/pause", json={"agent": "../x"})
            assert response.status_code == 422
            assert (await operator.get("/v1/pause")).json()["paused"] == []
        agents = (await _agents(host))["agents"]
        assert all(a["paused"] is False for a in agents)


async def _agents(host: Host) -> dict[str, Any]:
    async with control_client(host.paths) as operator:
        result: dict[str, Any] = (await operator.get("/v1/agents")).json()
    return result


async def _next_of(sub: Any, kind: str) -> Any:
    while True:
        event = await sub.get()
        if event.type == kind:
            return event
