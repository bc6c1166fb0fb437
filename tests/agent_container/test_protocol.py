"""Pure pieces of the runtime: stream assembly, SSE parsing, payload conventions, prompt."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent_container.bootstrap import Bootstrap
from agent_container.client import MeshError, error_from_body, parse_sse_line
from agent_container.completion import collect
from agent_container.prompt import parse_item
from legion.wire.agent import BudgetLeft, SelfStatus
from legion.wire.api import InboxItem

pytestmark = pytest.mark.anyio


async def stream(*chunks: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    for chunk in chunks:
        yield chunk


def delta(**d: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": d}]}


async def test_tool_calls_are_assembled_from_pieces() -> None:
    completion = await collect(
        stream(
            delta(role="assistant", content="Let me "),
            delta(content="look."),
            delta(tool_calls=[{"index": 0, "id": "c1", "function": {"name": "read_file"}}]),
            delta(tool_calls=[{"index": 0, "function": {"arguments": '{"pa'}}]),
            delta(tool_calls=[{"index": 1, "id": "c2", "function": {"name": "list_files"}}]),
            delta(tool_calls=[{"index": 0, "function": {"arguments": 'th": "a"}'}}]),
            delta(tool_calls=[{"index": 2, "function": {"name": "x", "arguments": "{}"}}]),
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
            {"choices": [], "usage": {"prompt_tokens": 3}},
        )
    )
    assert completion.text == "Let me look."
    assert [(c.id, c.name, c.arguments) for c in completion.tool_calls] == [
        ("c1", "read_file", '{"path": "a"}'),
        ("c2", "list_files", ""),
        ("call_2", "x", "{}"),
    ]
    assert completion.finish_reason == "tool_calls"
    message = completion.message()
    assert message["content"] == "Let me look."
    assert message["tool_calls"][0] == {
        "id": "c1",
        "type": "function",
        "function": {"name": "read_file", "arguments": '{"path": "a"}'},
    }


def test_sse_lines() -> None:
    assert parse_sse_line('data: {"choices": []}') == {"choices": []}
    assert parse_sse_line('data:{"a": 1}') == {"a": 1}
    assert parse_sse_line("data: [DONE]") is None
    assert parse_sse_line(": keep-alive") is None
    assert parse_sse_line("") is None
    with pytest.raises(MeshError) as info:
        parse_sse_line(
            'data: {"error": {"code": "provider_error", "message": "cut", "status": 502}}'
        )
    assert (info.value.status, info.value.code, info.value.message) == (
        502,
        "provider_error",
        "cut",
    )
    with pytest.raises(MeshError, match="bad_stream"):
        parse_sse_line("data: {not json")


def test_error_bodies() -> None:
    body = b'{"error": {"code": "budget_exceeded", "message": "no money", "status": 402, '
    body += b'"detail": {"left": 0}}}'
    err = error_from_body(402, body)
    assert (err.status, err.code, err.message, err.detail) == (
        402,
        "budget_exceeded",
        "no money",
        {"left": 0},
    )
    plain = error_from_body(500, b"<html>oops</html>")
    assert (plain.code, plain.message) == ("http_error", "<html>oops</html>")


def item(payload: Any, sender: str = "operator", **kw: Any) -> InboxItem:
    fields: dict[str, Any] = {
        "id": 7,
        "kind": "message",
        "topic": None,
        "sender": sender,
        "payload": payload,
        "created_at": 0.0,
        "deliveries": 1,
    }
    return InboxItem(**(fields | kw))


def test_payload_conventions() -> None:
    chat = parse_item(item("hello"), "chat")
    assert (chat.kind, chat.text, chat.conversation) == ("chat", "hello", "operator")
    assert parse_item(item({"text": "hi"}), "chat").text == "hi"
    task = parse_item(item({"task": "sum", "numbers": [1, 2]}, "bob"), "chat")
    assert (task.kind, task.conversation) == ("task", "bob")
    assert task.text == 'sum\n\nContext: {"numbers": [1, 2]}'
    assert parse_item(item({"x": 1}), "chat").text == '{"x": 1}'
    assert parse_item(item("do it"), "task").kind == "task"  # a task agent runs everything
    topic = parse_item(item({"text": "news!"}, "bob", kind="topic", topic="news/a"), "chat")
    assert topic.text == "[published on topic news/a by bob]\nnews!"
    reply = parse_item(
        item({"reply_to": 3, "text": "42", "kind": "task_result", "result": {"a": 1}}, "bob"),
        "task",
    )
    assert (reply.kind, reply.reply_to) == ("reply", 3)
    assert reply.text == (
        '[reply from bob with the result of the task you sent]\n42\nresult: {"a": 1}'
    )


def test_system_prompt_has_the_role_the_operator_prompt_and_the_runtime_context() -> None:
    me = SelfStatus(
        agent="alice",
        role="researcher",
        team="red",
        model="m",
        mode="chat",
        system_prompt="Be brief.",
        max_tool_rounds=8,
        max_task_steps=20,
        permissions={},
        budget_left=BudgetLeft(daily_usd=1.0, monthly_usd=None, fleet_daily_usd=None),
        fleet=["bob"],
    )
    prompt = Bootstrap(
        me, {}, "", ["read_file", "finish_task"], "/data/workspace", "bob", task=True
    ).render()
    assert prompt.startswith("You are alice, an autonomous agent in a legion fleet; your role")
    for part in (
        "Be brief.",
        "running a task for agent bob",
        "/data/workspace",
        "$CRED{name}",
        "teams/red/",
        "Agents you may message: bob.",
        "Tools: read_file, finish_task.",
        "at most 20 steps",
    ):
        assert part in prompt
