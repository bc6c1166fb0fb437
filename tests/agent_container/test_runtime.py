"""The agent runtime in-process against a real host and the fake provider (no Docker)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from agent_container.loop import AgentRuntime
from legion.config import parse_config
from legion.host import Host
from legion.paths import Paths
from legion.vault import Vault
from tests.conftest import control_client
from tests.fakes.provider import FakeProvider, Reply, ToolCall

pytestmark = pytest.mark.anyio


def config_text(base_url: str, mode: str = "chat") -> str:
    return f"""
[llm.models.m]
model = "openai/fake"
api_base = "{base_url}"
credential = "provider"
input_cost_per_mtok = 1.0
output_cost_per_mtok = 1.0

[agents.alice]
model = "m"
mode = "{mode}"
max_tool_rounds = 3
max_task_steps = 4
[agents.alice.permissions]
blackboard_read = ["**"]
blackboard_write = ["notes/**"]
can_message = ["bob"]

[agents.bob]
model = "m"
"""


@asynccontextmanager
async def running_agent(
    home: Path, fake: FakeProvider, mode: str = "chat"
) -> AsyncIterator[tuple[Host, Path]]:
    paths = Paths.resolve(home)
    paths.home.mkdir(parents=True, exist_ok=True)
    vault = Vault(paths.vault_db, paths.vault_key)
    vault.set("provider", "sk-runtime-test", tier="system")
    vault.close()
    workspace = home / "ws"
    async with Host.running(parse_config(config_text(fake.base_url, mode)), paths) as host:
        runtime = AgentRuntime(
            socket_path=str(paths.agent_socket("alice")), workspace=str(workspace)
        )
        task = asyncio.create_task(runtime.run())
        try:
            yield host, workspace
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def ask(host: Host, payload: Any, timeout_s: float = 20) -> Any:
    async with host.bus.subscribe() as sub, control_client(host.paths) as operator:
        queued = (
            await operator.post("/v1/messages", json={"to": "alice", "payload": payload})
        ).json()
        while True:
            event = await asyncio.wait_for(sub.get(), timeout_s)
            if event.type == "agent_reply" and event.in_reply_to == queued["item_id"]:
                return event


async def acked(host: Host, agent: str = "alice", timeout_s: float = 5) -> bool:
    """The reply comes before the ack: wait for the ack."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while host.inboxes.depth(agent) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    return host.inboxes.depth(agent) == 0


async def test_a_chat_turn_with_tools(home: Path) -> None:
    async with FakeProvider() as fake, running_agent(home, fake) as (host, workspace):
        fake.script(
            Reply(tool_calls=[ToolCall("write_file", {"path": "a/b.txt", "content": "hi"})]),
            Reply(
                tool_calls=[
                    ToolCall("blackboard_write", {"key": "notes/x", "value": [1]}),
                    ToolCall("read_file", {"path": "../../etc/passwd"}),
                ]
            ),
            Reply(content="all done"),
        )
        reply = await ask(host, {"text": "do things"})
        assert reply.text == "all done" and reply.kind == "chat"
        assert (workspace / "a" / "b.txt").read_text() == "hi"
        assert host.blackboard.get("notes/x").value == [1]  # type: ignore[union-attr]
        tool_results = [m for m in fake.requests[-1].body["messages"] if m["role"] == "tool"]
        assert any(
            "outside the workspace" in m["content"] or "leads outside" in m["content"]
            for m in tool_results
        )
        assert await acked(host)  # acked after the reply
        # the system prompt carries the runtime context
        system = fake.requests[0].body["messages"][0]["content"]
        assert "You are alice" in system and "bob" in system


async def test_tool_errors_go_back_to_the_model(home: Path) -> None:
    async with FakeProvider() as fake, running_agent(home, fake) as (host, _):
        fake.script(
            Reply(
                tool_calls=[
                    ToolCall("blackboard_write", {"key": "secret/x", "value": 1}),
                    ToolCall("no_such_tool", {}),
                    ToolCall("write_file", {"path": "x"}),
                ]
            ),
            Reply(content="recovered"),
        )
        reply = await ask(host, "go")
        assert reply.text == "recovered"
        results = [m["content"] for m in fake.requests[-1].body["messages"] if m["role"] == "tool"]
        assert results[0].startswith("error: the host refused") and "403" in results[0]
        assert "no tool named" in results[1]
        assert "needs content" in results[2]


async def test_tool_rounds_are_capped(home: Path) -> None:
    async with FakeProvider() as fake, running_agent(home, fake) as (host, _):
        loop = Reply(tool_calls=[ToolCall("list_files", {})])
        fake.script(loop, loop, loop, loop)
        reply = await ask(host, "loop forever")
        assert "stopped after 3 tool rounds" in reply.text
        assert len(fake.requests) == 3


async def test_task_mode_ends_in_a_structured_result(home: Path) -> None:
    async with FakeProvider() as fake, running_agent(home, fake, mode="task") as (host, _):
        fake.script(
            Reply(tool_calls=[ToolCall("blackboard_write", {"key": "notes/r", "value": 42})]),
            Reply(tool_calls=[ToolCall("finish_task", {"status": "done", "output": "42"})]),
        )
        reply = await ask(host, {"task": "compute the answer"})
        assert reply.kind == "task_result"
        assert reply.result == {"status": "done", "output": "42", "blackboard_writes": ["notes/r"]}


async def test_a_budget_refusal_ends_the_turn_with_an_explanation(home: Path) -> None:
    async with FakeProvider() as fake, running_agent(home, fake) as (host, _):
        host.config.agents["alice"].budget.daily_usd = 0.0
        reply = await ask(host, "anything")
        assert "budget" in reply.text and "[budget_exceeded]" in reply.text
        assert await acked(host)


async def test_run_command_timeout_and_cap(tmp_path: Path) -> None:
    from agent_container.tools import OUTPUT_CAP, run_command

    slow = await run_command("sleep 5; echo never", str(tmp_path), 0.5)
    assert "timed out" in slow
    big = await run_command("head -c 200000 /dev/zero | tr '\\0' x", str(tmp_path), 10)
    assert "truncated" in big and len(big) < OUTPUT_CAP + 200
    ok = await run_command("echo hi; exit 3", str(tmp_path), 10)
    assert ok.startswith("exit code 3") and "hi" in ok


def test_workspace_confinement(tmp_path: Path) -> None:
    from agent_container.workspace import Workspace, WorkspaceError

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("no")
    ws = Workspace(tmp_path / "ws")
    (ws.root / "link").symlink_to(outside)
    (ws.root / "file-link").symlink_to(outside / "secret.txt")
    for bad in (
        "../outside/secret.txt",
        "/etc/passwd",
        "link/secret.txt",
        "file-link",
        str(outside / "secret.txt"),
        "",
    ):
        with pytest.raises(WorkspaceError):
            ws.read(bad)
    with pytest.raises(WorkspaceError):
        ws.write("link/new.txt", "x")
    assert not (outside / "new.txt").exists()
    ws.write("ok/inside.txt", "fine")
    assert ws.read(str(ws.root / "ok" / "inside.txt")) == "fine"
    assert ws.list() == ["file-link", "link/", "ok/"] or "ok/" in ws.list()
    assert json.dumps(ws.list("ok")) == '["ok/inside.txt"]'
