"""Lanes and steering (issue 12): a steer reaches a running turn between two tool rounds,
with the runtime as a process against the fake provider; queue depth is visible."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.agent_container.harness import next_event, send, until
from tests.agent_container.test_process import agent_process
from tests.automation.conftest import config, host_at
from tests.conftest import agent_client, control_client
from tests.fakes.provider import FakeProvider, Reply, ToolCall

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

WAIT_FOR_GO = "while [ ! -f go ]; do sleep 0.05; done; echo waited"


async def test_a_steer_reaches_the_running_turn_between_tool_rounds(home: Path) -> None:
    """issue 12: the steer is read before the turn's next model call, not after the turn."""
    workspace = home / "ws"
    async with (
        FakeProvider() as fake,
        host_at(home, config(fake.base_url)) as host,
        agent_process(host, workspace),
    ):
        fake.script(
            Reply(tool_calls=[ToolCall("run_command", {"command": WAIT_FOR_GO})]),
            Reply(content="switched to plan B"),
        )
        first = await send(host, "alice", "work on plan A")
        await send(host, "alice", "a later message, queued behind")
        assert await until(lambda: len(fake.requests) == 1, 30)  # the tool round is running
        async with control_client(host.paths) as operator:
            r = await operator.post("/v1/steer", json={"to": "alice", "text": "use plan B"})
            assert r.status_code == 200, r.text
            steer_id = r.json()["item_id"]
            status = (await operator.get("/v1/status")).json()
        alice = next(a for a in status["agents"] if a["name"] == "alice")
        assert alice["steers_waiting"] == 1 and alice["in_progress"] >= 1

        async def release() -> None:
            (workspace / "go").write_text("")

        taken = await next_event(
            host, lambda e: e.type == "steer_taken" and e.item_id == steer_id, release, 30
        )
        assert taken.sender == "operator"
        reply = await next_event(host, lambda e: e.type == "agent_reply" and e.in_reply_to == first)
        assert reply.text == "switched to plan B"
        messages = fake.requests[1].body["messages"]
        tool_at = next(i for i, m in enumerate(messages) if m["role"] == "tool")
        assert "waited" in messages[tool_at]["content"]
        steer = messages[tool_at + 1]
        assert steer["role"] == "user" and "use plan B" in steer["content"]
        assert "the operator steers you" in steer["content"]
        # the steer was acked with its turn; the queued message is handled after
        await next_event(host, lambda e: e.type == "agent_reply" and e.in_reply_to != first)
        assert await until(lambda: host.inboxes.depth("alice") == 0)
        assert host.store.execute(
            "SELECT COUNT(*) FROM inbox WHERE id = ?", (steer_id,)
        ).fetchone() == (0,)


async def test_a_steer_to_an_idle_agent_is_its_next_turn_and_agents_need_can_steer(
    home: Path,
) -> None:
    async with (
        FakeProvider() as fake,
        host_at(home, config(fake.base_url)) as host,
        agent_process(host, home / "ws"),
    ):
        assert await until(lambda: "alice" in host.last_poll, 30)
        async with agent_client(host.paths, "bob") as bob:
            denied = await bob.post("/v1/steer", json={"to": "alice", "text": "stop"})
            assert denied.status_code == 403
        async with agent_client(host.paths, "alice") as alice:

            async def steer_bob() -> None:
                allowed = await alice.post("/v1/steer", json={"to": "bob", "text": "hurry"})
                assert allowed.status_code == 200  # alice's can_steer names bob

            depth = await next_event(
                host, lambda e: e.type == "queue_depth" and e.agent == "bob", steer_bob, 5
            )
            assert (depth.waiting, depth.steers) == (1, 1)
            unknown = await alice.post("/v1/steer", json={"to": "zed", "text": "x"})
            assert unknown.status_code == 403
        assert host.inboxes.depth("bob") == 1
        async with control_client(host.paths) as operator:
            r = await operator.post("/v1/steer", json={"to": "alice", "text": "status please"})
        steer_id = r.json()["item_id"]
        reply = await next_event(
            host, lambda e: e.type == "agent_reply" and e.in_reply_to == steer_id
        )
        assert reply.text == "echo: [steer from the operator] status please"
