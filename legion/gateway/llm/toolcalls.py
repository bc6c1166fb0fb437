"""Tool calls as the host sees them: asked for in a model's reply, answered in the next request.

Tools run inside the agent's container, but both halves of every call cross the gateway: the
model's reply names the tool and its arguments, and the agent's next request carries the
result (a `role: tool` message with the call's id). `ToolCalls` turns them into
`ToolCallStarted` and `ToolCallFinished` events for the operator's TUI. It does nothing
while nobody listens, and remembers a bounded number of open calls per agent.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from legion.events import EventBus
from legion.wire.events import ToolCallFinished, ToolCallStarted

MAX_TEXT = 4000  # characters of arguments or result carried by one event
MAX_OPEN_PER_AGENT = 64  # open calls remembered per agent; the oldest are forgotten first


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "…"


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and "text" in p
        )
    return "" if content is None else json.dumps(content, default=str)


class StreamedCalls:
    """Accumulates the `tool_calls` fragments of one streamed reply, by index."""

    def __init__(self) -> None:
        self.calls: dict[int, dict[str, str]] = {}

    def add(self, fragments: Any) -> None:
        if not isinstance(fragments, list):
            return
        for fragment in fragments[:MAX_OPEN_PER_AGENT]:
            if not isinstance(fragment, dict):
                continue
            index = fragment.get("index", 0)
            if not isinstance(index, int) or not 0 <= index < MAX_OPEN_PER_AGENT:
                continue
            call = self.calls.setdefault(index, {"id": "", "name": "", "arguments": ""})
            function = fragment.get("function") or {}
            if isinstance(fragment.get("id"), str):
                call["id"] = fragment["id"][:200]
            if isinstance(function, dict):
                if isinstance(function.get("name"), str):
                    call["name"] = (call["name"] + function["name"])[:200]
                if isinstance(function.get("arguments"), str) and len(call["arguments"]) < MAX_TEXT:
                    call["arguments"] += function["arguments"]

    def finished(self) -> list[dict[str, Any]]:
        return [
            {"id": c["id"], "function": {"name": c["name"], "arguments": c["arguments"]}}
            for _, c in sorted(self.calls.items())
        ]


class ToolCalls:
    def __init__(self, bus: EventBus, clock: Callable[[], float]) -> None:
        self.bus = bus
        self.clock = clock
        self._open: dict[str, OrderedDict[str, str]] = {}  # agent -> call id -> tool name

    def request(self, agent: str, messages: list[dict[str, Any]]) -> None:
        """An agent's request: results of calls it was asked for finish them."""
        open_calls = self._open.get(agent)
        if not open_calls or not self.bus.subscriber_count:
            return
        for message in messages:
            if not isinstance(message, dict) or message.get("role") != "tool":
                continue
            call_id = message.get("tool_call_id")
            name = open_calls.pop(call_id, None) if isinstance(call_id, str) else None
            if name is None:
                continue
            self.bus.publish(
                ToolCallFinished(
                    at=self.clock(),
                    agent=agent,
                    call_id=str(call_id),
                    name=name,
                    result=_cut(_text_of(message.get("content"))),
                )
            )

    def reply(self, agent: str, request_id: str, tool_calls: Any) -> None:
        """A model's reply (streamed and assembled, or whole) asked for these tools."""
        if not isinstance(tool_calls, list) or not tool_calls or not self.bus.subscriber_count:
            return
        open_calls = self._open.setdefault(agent, OrderedDict())
        for call in tool_calls[:MAX_OPEN_PER_AGENT]:
            if not isinstance(call, dict):
                continue
            function = call.get("function") or {}
            name = str(function.get("name") or "?")[:200] if isinstance(function, dict) else "?"
            arguments = function.get("arguments", "") if isinstance(function, dict) else ""
            call_id = str(call.get("id") or "")[:200]
            if call_id:
                open_calls[call_id] = name
                while len(open_calls) > MAX_OPEN_PER_AGENT:
                    open_calls.popitem(last=False)
            self.bus.publish(
                ToolCallStarted(
                    at=self.clock(),
                    agent=agent,
                    request_id=request_id,
                    call_id=call_id,
                    name=name,
                    arguments=_cut(
                        arguments if isinstance(arguments, str) else json.dumps(arguments)
                    ),
                )
            )

    def forget(self, agent: str) -> None:
        self._open.pop(agent, None)
