"""Tool calls seen by the gateway become events (issue 9: the TUI's tool lines): started when
a model's reply asks for a tool, finished when the agent's next request carries the result.
Both upstream paths, streaming and not."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from legion.gateway.llm.toolcalls import MAX_TEXT
from legion.wire.events import ToolCallFinished, ToolCallStarted
from tests.conftest import agent_client
from tests.fakes.provider import FakeProvider, Reply, ToolCall
from tests.gateway.test_gateway import chat, gateway_host, sse, upstream_path

pytestmark = pytest.mark.anyio
__all__ = ["upstream_path"]  # autouse: every test here runs on both upstream paths

TOOLS = [
    {
        "type": "function",
        "function": {"name": "read_file", "parameters": {"type": "object", "properties": {}}},
    }
]


async def collect(sub: Any, kind: type, count: int) -> list[Any]:
    out: list[Any] = []
    async with asyncio.timeout(10):
        while len(out) < count:
            event = await sub.get()
            if isinstance(event, kind):
                out.append(event)
    return out


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
async def test_a_tool_call_starts_and_finishes(home: Path, stream: bool) -> None:
    call = ToolCall("read_file", {"path": "notes.md"}, id="call_7")
    async with (
        FakeProvider(chunk_chars=3) as fake,
        gateway_host(home, fake) as host,
        agent_client(host.paths, "alice") as alice,
        host.bus.subscribe() as sub,
    ):
        fake.script(Reply(tool_calls=[call]), Reply(content="done"))
        body = chat("read it", tools=TOOLS, stream=stream)
        if stream:
            async with alice.stream("POST", "/v1/chat/completions", json=body) as response:
                await sse(response)
        else:
            (await alice.post("/v1/chat/completions", json=body)).raise_for_status()
        [started] = await collect(sub, ToolCallStarted, 1)
        assert (started.agent, started.call_id, started.name) == ("alice", "call_7", "read_file")
        assert json.loads(started.arguments) == {"path": "notes.md"}
        follow_up = {
            "messages": [
                {"role": "user", "content": "read it"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "call_7",
                            "type": "function",
                            "function": {"name": "read_file", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_7", "content": "# notes\nline one"},
            ],
            "tools": TOOLS,
        }
        (await alice.post("/v1/chat/completions", json=follow_up)).raise_for_status()
        [finished] = await collect(sub, ToolCallFinished, 1)
        assert (finished.agent, finished.call_id, finished.name) == ("alice", "call_7", "read_file")
        assert finished.result == "# notes\nline one"


async def test_results_for_calls_never_asked_are_ignored_and_texts_are_bounded(home: Path) -> None:
    """An agent cannot make the host announce a tool call the model never asked for, and a
    huge argument or result is cut before it becomes an event."""
    huge = ToolCall("read_file", {"path": "x" * (3 * MAX_TEXT)}, id="call_big")
    async with (
        FakeProvider() as fake,
        gateway_host(home, fake) as host,
        agent_client(host.paths, "alice") as alice,
        host.bus.subscribe() as sub,
    ):
        forged = {
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "tool", "tool_call_id": "never-asked", "content": "forged"},
            ]
        }
        fake.script(Reply(content="ok"), Reply(tool_calls=[huge]), Reply(content="ok"))
        (await alice.post("/v1/chat/completions", json=forged)).raise_for_status()
        (await alice.post("/v1/chat/completions", json=chat(tools=TOOLS))).raise_for_status()
        [started] = await collect(sub, ToolCallStarted, 1)
        assert len(started.arguments) <= MAX_TEXT + 1
        result = {"role": "tool", "tool_call_id": "call_big", "content": "y" * (3 * MAX_TEXT)}
        (
            await alice.post(
                "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "a"}, result]},
            )
        ).raise_for_status()
        [finished] = await collect(sub, ToolCallFinished, 1)
        assert finished.call_id == "call_big" and len(finished.result) <= MAX_TEXT + 1
        seen = []
        while not sub.queue.empty():
            seen.append(sub.queue.get_nowait())
        assert not any(getattr(e, "call_id", None) == "never-asked" for e in seen)
