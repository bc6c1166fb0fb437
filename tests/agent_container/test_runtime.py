"""The agent runtime in-process against a real host and the fake provider (no Docker).

The operator sends a message on the control socket, the runtime long-polls it from the
agent socket, calls the model through the host's gateway, runs the tools, replies
(`POST /v1/replies`, seen as an `agent_reply` event) and acks.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from agent_container.loop import AgentRuntime
from legion.paths import Paths
from tests.agent_container.harness import (
    ask,
    config_text,
    next_event,
    running_fleet,
    running_host,
    runtime_task,
    send,
    tool_results,
    until,
)
from tests.conftest import agent_client
from tests.fakes.provider import FakeProvider, Reply, ToolCall

pytestmark = pytest.mark.anyio


async def test_a_chat_turn_writes_a_file_and_the_blackboard_then_answers(home: Path) -> None:
    async with FakeProvider() as fake, running_fleet(home, config_text(fake.base_url)) as fleet:
        fake.script(
            Reply(tool_calls=[ToolCall("write_file", {"path": "a/b.txt", "content": "hi"})]),
            Reply(tool_calls=[ToolCall("blackboard_write", {"key": "notes/x", "value": [1]})]),
            Reply(content="all done"),
        )
        reply = await ask(fleet.host, {"text": "do things"})
        assert reply.text == "all done" and reply.kind == "chat" and reply.to == "operator"
        assert (fleet.workspaces["alice"] / "a" / "b.txt").read_text() == "hi"
        entry = fleet.host.blackboard.get("notes/x")
        assert entry is not None and entry.value == [1] and entry.writer == "alice"
        # each round's tool results went back to the model in the next request
        assert tool_results(fake.requests[1].body["messages"]) == ["wrote 2 bytes to a/b.txt"]
        assert tool_results(fake.requests[2].body["messages"])[-1] == "wrote notes/x (version 1)"
        assert await until(lambda: fleet.host.inboxes.depth("alice") == 0)  # acked
        first = fake.requests[0].body
        assert {t["function"]["name"] for t in first["tools"]} >= {"write_file", "run_command"}
        system = first["messages"][0]["content"]
        for expected in ("You are alice", "researcher", "Be brief.", "red", "bob", "read_file"):
            assert expected in system
        assert str(fleet.workspaces["alice"]) in system
        assert first["messages"][-1] == {"role": "user", "content": "do things"}


async def test_tool_errors_go_back_to_the_model(home: Path) -> None:
    async with FakeProvider() as fake, running_fleet(home, config_text(fake.base_url)) as fleet:
        fake.script(
            Reply(
                tool_calls=[
                    ToolCall("blackboard_write", {"key": "secret/x", "value": 1}),
                    ToolCall("no_such_tool", {}),
                    ToolCall("write_file", {"path": "x"}),
                    ToolCall("read_file", {"path": "../../etc/passwd"}),
                    ToolCall("read_file", "{not json"),
                ]
            ),
            Reply(content="recovered"),
        )
        reply = await ask(fleet.host, "go")
        assert reply.text == "recovered"
        results = tool_results(fake.requests[-1].body["messages"])
        assert results[0].startswith("error: the host refused") and "403" in results[0]
        assert "no tool named 'no_such_tool'" in results[1]
        assert results[2] == "error: write_file needs content"
        assert results[3].startswith("error:") and "outside the workspace" in results[3]
        assert results[4].startswith("error: the arguments of read_file are not valid JSON")


async def test_tool_rounds_are_capped_then_the_model_must_answer(home: Path) -> None:
    async with FakeProvider() as fake, running_fleet(home, config_text(fake.base_url)) as fleet:
        again = Reply(tool_calls=[ToolCall("list_files", {})])
        fake.script(again, again, again, Reply(content="here is what I have"))
        reply = await ask(fleet.host, "loop forever")
        assert reply.text == "here is what I have"
        assert len(fake.requests) == 4  # 3 tool rounds (max_tool_rounds), then tools off
        final = fake.requests[-1].body
        assert final["tool_choice"] == "none"
        assert "used all 3 tool rounds" in final["messages"][-1]["content"]


async def test_history_is_kept_per_sender(home: Path) -> None:
    async with FakeProvider() as fake, running_fleet(home, config_text(fake.base_url)) as fleet:
        for n in range(3):
            assert (await ask(fleet.host, f"message {n}")).text == f"echo: message {n}"
        messages = fake.requests[-1].body["messages"]
        assert [m["content"] for m in messages[1:]] == [
            "message 0",
            "echo: message 0",
            "message 1",
            "echo: message 1",
            "message 2",
        ]
        assert "You are talking with the operator" in messages[0]["content"]
        # another sender has a conversation of its own
        async with agent_client(fleet.paths, "bob") as bob:
            queued = await bob.post("/v1/messages", json={"to": "alice", "payload": "hi"})
            assert queued.status_code == 200, queued.text
        assert await until(lambda: len(fake.requests) == 4)
        assert await until(lambda: fleet.host.inboxes.depth("bob") == 1)  # alice's answer
        messages = fake.requests[-1].body["messages"]
        assert [m["content"] for m in messages[1:]] == ["hi"]
        assert "You are talking with agent bob" in messages[0]["content"]
        sessions = fleet.runtimes["alice"].sessions
        assert len(sessions["operator"].messages) == 6 and len(sessions["bob"].messages) == 2


async def test_task_mode_ends_in_a_structured_result(home: Path) -> None:
    async with (
        FakeProvider() as fake,
        running_fleet(home, config_text(fake.base_url, mode="task")) as fleet,
    ):
        fake.script(
            Reply(tool_calls=[ToolCall("blackboard_write", {"key": "notes/r", "value": 42})]),
            Reply(content="thinking out loud"),  # no tool call: the runtime asks to go on
            Reply(
                tool_calls=[
                    ToolCall("blackboard_write", {"key": "notes/r", "value": 43}),
                    ToolCall("finish_task", {"status": "done", "output": "42"}),
                    ToolCall("write_file", {"path": "never.txt", "content": "x"}),
                ]
            ),
        )
        reply = await ask(fleet.host, "compute the answer")  # a chat payload, task mode
        assert reply.kind == "task_result" and reply.text == "42"
        assert reply.result == {"status": "done", "output": "42", "blackboard_writes": ["notes/r"]}
        assert not (fleet.workspaces["alice"] / "never.txt").exists()  # after finish_task
        assert "[runtime] Continue the task" in fake.requests[2].body["messages"][-1]["content"]
        system = fake.requests[0].body["messages"][0]["content"]
        assert "finish_task" in system


async def test_a_task_payload_runs_a_task_in_a_chat_agent_and_can_give_up(home: Path) -> None:
    async with FakeProvider() as fake, running_fleet(home, config_text(fake.base_url)) as fleet:
        fake.script(
            Reply(tool_calls=[ToolCall("finish_task", {"status": "maybe", "output": "?"})]),
            Reply(content="step"),
            Reply(content="still thinking"),
            Reply(content="still thinking"),
        )
        reply = await ask(fleet.host, {"task": "count sheep", "sheep": 3})
        assert reply.kind == "task_result"
        assert reply.result == {
            "status": "gave_up",
            "output": "still thinking",
            "blackboard_writes": [],
        }
        assert len(fake.requests) == 4  # max_task_steps
        assert "status must be one of done, failed, gave_up" in str(
            fake.requests[1].body["messages"]
        )
        assert '"sheep": 3' in fake.requests[0].body["messages"][1]["content"]


async def test_a_budget_refusal_ends_the_turn_with_an_explanation(home: Path) -> None:
    async with FakeProvider() as fake, running_fleet(home, config_text(fake.base_url)) as fleet:
        fleet.host.config.agents["alice"].budget.daily_usd = 0.0
        reply = await ask(fleet.host, "anything")
        assert "budget" in reply.text and "[budget_exceeded]" in reply.text
        assert await until(lambda: fleet.host.inboxes.depth("alice") == 0)  # acked all the same
        assert fake.requests == []


async def test_llm_errors_end_the_turn_with_an_explanation(home: Path) -> None:
    async with FakeProvider() as fake, running_fleet(home, config_text(fake.base_url)) as fleet:
        fake.script(Reply(status=400, error="this model does not like you"))
        reply = await ask(fleet.host, "first")
        assert reply.text.startswith("I could not finish this turn:")
        assert "does not like you" in reply.text
        fake.script(Reply(content="a long answer that will be cut", cut_after_chunks=3))
        reply = await ask(fleet.host, "second")
        assert reply.text.startswith("I could not finish this turn:"), reply.text
        assert await until(lambda: fleet.host.inboxes.depth("alice") == 0)


async def test_replies_from_other_agents_go_to_the_conversation_not_back(home: Path) -> None:
    async with (
        FakeProvider() as fake,
        running_fleet(home, config_text(fake.base_url), ("alice", "bob")) as fleet,
    ):
        fake.script(
            Reply(tool_calls=[ToolCall("send_message", {"to": "bob", "payload": "what is 6*7?"})]),
            Reply(content="I asked bob."),
            Reply(content="bob says 42; noted."),
            model="fake",
        )
        fake.script(Reply(content="42"), model="fake-b")
        events: list[object] = []

        def done(event: object) -> bool:
            events.append(event)
            return getattr(event, "text", None) == "bob says 42; noted."

        async def go() -> None:
            await send(fleet.host, "alice", "ask bob")

        await next_event(fleet.host, done, go)
        replies = [
            (e.agent, e.text, e.to)  # type: ignore[attr-defined]
            for e in events
            if getattr(e, "type", "") == "agent_reply"
        ]
        assert sorted(replies[:2]) == [
            ("alice", "I asked bob.", "operator"),
            ("bob", "42", "alice"),
        ]
        assert replies[2:] == [("alice", "bob says 42; noted.", None)]
        # bob's answer landed in alice's conversation with the operator
        last = [r for r in fake.requests if r.model == "fake"][-1].body["messages"]
        assert [m["content"] for m in last if m["role"] == "user"] == [
            "ask bob",
            "[reply from bob]\n42",
        ]
        assert await until(
            lambda: fleet.host.inboxes.depth("alice") == fleet.host.inboxes.depth("bob") == 0
        )
        await asyncio.sleep(0.3)  # nothing bounces back and forth
        assert len(fake.requests) == 4


async def test_the_runtime_survives_a_host_restart_and_redoes_the_unacked_item(
    home: Path,
) -> None:
    async with FakeProvider() as fake:
        text = config_text(fake.base_url)
        runtime = AgentRuntime(
            socket_path=str(Paths.resolve(home).agent_socket("alice")),
            workspace=str(home / "ws"),
            max_backoff_s=0.3,
        )
        async with runtime_task(runtime):  # before the host: it waits for the socket
            async with running_host(home, text) as host:
                fake.script(Reply(content="too late", first_byte_delay_s=30), Reply(content="ok"))
                item = await send(host, "alice", "survive this")
                assert await until(lambda: len(fake.requests) == 1)
            # the host stopped while the model call was under way: nothing was acked
            async with running_host(home, text) as host:
                reply = await next_event(
                    host, lambda e: e.type == "agent_reply" and e.in_reply_to == item
                )
                assert reply.text == "ok"
                assert await until(lambda: host.inboxes.depth("alice") == 0)
        assert [r.body["messages"][-1]["content"] for r in fake.requests] == ["survive this"] * 2


async def test_items_handed_out_too_often_are_answered_and_acked(home: Path) -> None:
    text = config_text("http://127.0.0.1:9/v1")
    text = text.replace("visibility_timeout_s = 30", "visibility_timeout_s = 0.05")
    async with running_host(home, text) as host:
        item = await send(host, "alice", "poison")
        async with agent_client(host.paths, "alice") as raw:
            for _ in range(6):  # as if a runtime crashed on it six times
                polled = await raw.post("/v1/inbox/poll", json={"wait_s": 1})
                assert polled.json()["items"][0]["id"] == item
                await asyncio.sleep(0.06)
        runtime = AgentRuntime(str(host.paths.agent_socket("alice")), str(home / "ws"))

        async def start() -> None:
            await stack.enter_async_context(runtime_task(runtime))

        async with contextlib.AsyncExitStack() as stack:
            reply = await next_event(host, lambda e: e.type == "agent_reply", start)
            assert reply.in_reply_to == item and "handed out 7 times" in reply.text
            assert await until(lambda: host.inboxes.depth("alice") == 0)
