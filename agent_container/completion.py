"""Assemble a streamed chat completion (OpenAI chunk format) into text and tool calls.

Tool calls arrive in pieces: the first delta of a call carries its `index`, `id` and
function name, later deltas with the same index append to its `arguments` string.
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str

    def message(self) -> dict[str, Any]:
        """The entry of an assistant message's `tool_calls`."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass
class Completion:
    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    # The provider's count of the prompt, when the stream reported usage (the context
    # manager calibrates its estimates with it).
    prompt_tokens: int | None = None

    def message(self) -> dict[str, Any]:
        """The assistant message to append to the conversation."""
        message: dict[str, Any] = {"role": "assistant", "content": self.text or None}
        if self.tool_calls:
            message["tool_calls"] = [call.message() for call in self.tool_calls]
        return message


@dataclass
class _Slot:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


async def collect(chunks: AsyncIterable[dict[str, Any]]) -> Completion:
    """Read a whole stream of chunks into one Completion (choice 0 only)."""
    text: list[str] = []
    slots: dict[int, _Slot] = {}
    finish: str | None = None
    prompt_tokens: int | None = None
    async for chunk in chunks:
        usage = chunk.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
            prompt_tokens = usage["prompt_tokens"]
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            finish = choice.get("finish_reason") or finish
            delta = choice.get("delta") or {}
            if delta.get("content"):
                text.append(str(delta["content"]))
            for piece in delta.get("tool_calls") or []:
                slot = slots.setdefault(int(piece.get("index") or 0), _Slot())
                slot.id = slot.id or str(piece.get("id") or "")
                fn = piece.get("function") or {}
                name = str(fn.get("name") or "")
                if name != slot.name:  # some providers repeat the whole name in every delta
                    slot.name += name
                if fn.get("arguments"):
                    slot.arguments.append(str(fn["arguments"]))
    calls = [
        ToolCall(slot.id or f"call_{n}", slot.name, "".join(slot.arguments))
        for n, slot in enumerate(slots[i] for i in sorted(slots))
    ]
    return Completion("".join(text), calls, finish, prompt_tokens)
