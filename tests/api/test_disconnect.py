"""A poll whose client is gone, or whose agent was stopped, is never handed an item.

issue 8 (first bullet, the server side): the server watches a parked request's reader;
a client that hangs up cancels the long poll, and anything handed to it in the meantime
goes back at once; stopping or restarting an agent drops its parked polls.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from legion.config import parse_config
from legion.fleet.backend import FakeBackend
from legion.gateway.vault import Vault
from legion.host import Host
from legion.paths import Paths
from tests.api.process_backend import ProcessBackend
from tests.api.raw import RawConn, request
from tests.conftest import control_client
from tests.fakes.provider import FakeProvider

pytestmark = pytest.mark.anyio

CONFIG = "[host]\nvisibility_timeout_s = 60\n[agents.alice]\n"
POLL = request("POST", "/v1/inbox/poll", b'{"wait_s": 30}')


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.005)


def parked(host: Host, agent: str = "alice") -> int:
    return sum(1 for w in host.inboxes._parked.get(agent, []) if not w.done())


async def park(host: Host) -> RawConn:
    conn = await RawConn.open(host.paths.agent_socket("alice"))
    await conn.send(POLL)
    await until(lambda: parked(host) == 1)
    return conn


async def test_a_poll_whose_client_hung_up_gets_nothing(home: Path) -> None:
    """issue 8: the client of a parked poll disconnects; the next poller gets the item at
    once, delivered once (not after the 60 s visibility timeout)."""
    async with Host.running(parse_config(CONFIG), Paths.resolve(home)) as host:
        gone = await park(host)
        gone.writer.transport.abort()  # the process died: its socket is closed
        await until(lambda: parked(host) == 0)
        item = host.send("operator", "alice", {"text": "hello"})
        fresh = await RawConn.open(host.paths.agent_socket("alice"))
        try:
            started = time.monotonic()
            await fresh.send(request("POST", "/v1/inbox/poll", b'{"wait_s": 5}'))
            answer = await fresh.answer()
            assert time.monotonic() - started < 0.5
            items = json.loads(answer.body)["items"]
            assert [(i["id"], i["deliveries"]) for i in items] == [(item, 1)]
        finally:
            fresh.close()


async def test_an_item_handed_over_as_the_client_hangs_up_comes_back(home: Path) -> None:
    """The race: the item is handed to the parked poll in the same turn its client goes.
    It is taken back at once (deliveries undone) and the next poll gets it."""
    async with Host.running(parse_config(CONFIG), Paths.resolve(home)) as host:
        gone = await park(host)
        item = host.send("operator", "alice", {"text": "racing"})  # handed to the parked poll
        gone.writer.transport.abort()
        await until(lambda: host.http._serving[host.paths.agent_socket("alice")].conns == set())
        await until(
            lambda: (
                host.store.execute(
                    "SELECT visible_at <= ? FROM inbox WHERE id = ?", (time.time(), item)
                ).fetchone()[0]
                == 1
            )
        )
        fresh = await RawConn.open(host.paths.agent_socket("alice"))
        try:
            await fresh.send(request("POST", "/v1/inbox/poll", b'{"wait_s": 5}'))
            items = json.loads((await fresh.answer()).body)["items"]
            assert [(i["id"], i["deliveries"]) for i in items] == [(item, 1)]
        finally:
            fresh.close()


async def test_a_half_closed_client_still_gets_its_answer(home: Path) -> None:
    """Only a client that hung up entirely is gone: one that merely shut its writing half
    (a valid HTTP client) is answered."""
    async with Host.running(parse_config(CONFIG), Paths.resolve(home)) as host:
        conn = await park(host)
        conn.writer.write_eof()
        await asyncio.sleep(0.1)
        assert parked(host) == 1
        item = host.send("operator", "alice", {"text": "for you"})
        answer = await conn.answer()
        assert [i["id"] for i in json.loads(answer.body)["items"]] == [item]
        conn.close()


async def test_stopping_an_agent_drops_its_parked_polls(home: Path) -> None:
    """issue 8: a poll parked by a container that is stopped (its connection not yet seen
    closed) gets nothing; the item waits for the next container."""
    backend = FakeBackend()
    async with Host.running(parse_config(CONFIG), Paths.resolve(home), runtime=backend) as host:
        for action in ("stop", "restart"):
            conn = await park(host)
            async with control_client(host.paths) as operator:
                done = await operator.post(f"/v1/agents/alice/{action}")
                assert done.status_code == 200
            answer = await conn.answer()
            assert answer.status == 200 and json.loads(answer.body)["items"] == []
            conn.close()
            assert parked(host) == 0
            item = host.send("operator", "alice", {"after": action})
            assert host.inboxes._take("alice", 10)[0].id == item
            host.inboxes.ack("alice", [item])


def seed(paths: Paths) -> None:
    paths.home.mkdir(parents=True, exist_ok=True)
    vault = Vault(paths.vault_db, paths.vault_key)
    vault.set("provider", "sk-disconnect-test-provider-key", tier="system")
    vault.close()


async def reply_to(host: Host, text: str, timeout_s: float) -> float:
    """Send `text` to alice as the operator; seconds until her reply event."""
    async with host.bus.subscribe() as sub, control_client(host.paths) as operator:
        started = time.monotonic()
        queued = await operator.post("/v1/messages", json={"to": "alice", "payload": text})
        item = queued.json()["item_id"]
        async with asyncio.timeout(timeout_s):
            while True:
                event = await sub.get()
                if event.type == "agent_reply" and event.in_reply_to == item:
                    return time.monotonic() - started


@pytest.mark.slow
async def test_a_chat_right_after_a_restart_answers_at_once(home: Path) -> None:
    """issue 8: after `legion agents restart`, the next chat is answered in under 2 s by
    the new runtime (a real `python -m agent_container` process), not after the 60 s
    visibility timeout by way of the stopped runtime's poll."""
    paths = Paths.resolve(home)
    seed(paths)
    with FakeProvider() as fake:
        text = f"""
[host]
visibility_timeout_s = 60
[llm.models.m]
model = "openai/fake"
api_base = "{fake.base_url}"
credential = "provider"
input_cost_per_mtok = 1.0
output_cost_per_mtok = 1.0
[agents.alice]
model = "m"
"""
        backend = ProcessBackend()
        async with Host.running(parse_config(text), paths, runtime=backend) as host:
            await until(lambda: "alice" in host.last_poll, 30)
            assert await reply_to(host, "warm up", 30) < 30  # LiteLLM's first import etc.
            for _ in range(2):
                await until(lambda: parked(host) == 1, 10)
                async with control_client(paths) as operator:
                    restarted = await operator.post("/v1/agents/alice/restart")
                    assert restarted.status_code == 200
                took = await reply_to(host, "right after the restart", 10)
                assert took < 2.0, f"the chat after a restart took {took:.2f} s"
