"""Redaction of a streamed chat completion, delta by delta (both upstream paths).

Each text a provider streams in pieces (a choice's content, reasoning and refusal, each tool
call's arguments) runs through its own `StreamRedactor`, so a vault value split across any
number of deltas is masked before any of it leaves the host. The HTTP server's own per-chunk
redaction cannot do this: each delta reaches it JSON-framed on its own. What a redactor holds
back goes out with the next delta of the same text, with the choice's finishing delta, or in
one last chunk when the stream ends early.
"""

from __future__ import annotations

from typing import Any

from legion.gateway.redact import Redactor, StreamRedactor

# Delta fields that carry one text in pieces, concatenated by the client.
TEXT_FIELDS = ("content", "reasoning_content", "reasoning", "refusal")

Key = tuple[int, str, int]  # (choice index, field, tool call index or -1)


class DeltaRedactor:
    """The redactors of one streamed response, keyed by choice, field and tool call."""

    def __init__(self, redactor: Redactor) -> None:
        redactor.refresh()  # once per stream; the pieces use the forms known now
        self.redactor = redactor
        self.streams: dict[Key, StreamRedactor] = {}

    def _feed(self, key: Key, text: str) -> str:
        stream = self.streams.get(key)
        if stream is None:
            stream = self.streams[key] = StreamRedactor(self.redactor)
        return stream.feed(text)

    def chunk(self, data: dict[str, Any]) -> str:
        """Redact `data`'s deltas in place; returns the content text it now carries (what
        the TokenDelta event shows)."""
        shown = ""
        for choice in data.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            index = index if isinstance(index, int) else 0
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                delta = choice["delta"] = {}
            for field in TEXT_FIELDS:
                text = delta.get(field)
                if isinstance(text, str) and text:
                    delta[field] = self._feed((index, field, -1), text)
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for position, call in enumerate(calls):
                    fn = call.get("function") if isinstance(call, dict) else None
                    if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                        slot = call.get("index", position)
                        slot = slot if isinstance(slot, int) else position
                        fn["arguments"] = self._feed((index, "tool", slot), fn["arguments"])
            legacy = delta.get("function_call")
            if isinstance(legacy, dict) and isinstance(legacy.get("arguments"), str):
                legacy["arguments"] = self._feed((index, "function_call", -1), legacy["arguments"])
            if choice.get("finish_reason"):
                self._flush_into(index, delta)
            content = delta.get("content")
            if isinstance(content, str):
                shown += content
        return shown

    def _flush_into(self, index: int, delta: dict[str, Any]) -> None:
        """Append what the redactors of choice `index` hold to `delta`."""
        for key in [k for k in self.streams if k[0] == index]:
            rest = self.streams.pop(key).flush()
            if not rest:
                continue
            _, field, slot = key
            if field in TEXT_FIELDS:
                delta[field] = (delta.get(field) or "") + rest
            elif field == "function_call":
                legacy = delta.setdefault("function_call", {})
                legacy["arguments"] = (legacy.get("arguments") or "") + rest
            else:
                calls = delta.get("tool_calls")
                if not isinstance(calls, list):
                    calls = delta["tool_calls"] = []
                for call in calls:
                    if isinstance(call, dict) and call.get("index") == slot:
                        fn = call.setdefault("function", {})
                        fn["arguments"] = (fn.get("arguments") or "") + rest
                        break
                else:
                    calls.append({"index": slot, "function": {"arguments": rest}})

    def held(self) -> int:
        """Characters held back across all texts."""
        return sum(stream.held for stream in self.streams.values())

    def flush(self, template: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        """Everything still held, as one last chunk shaped like `template` (None when
        nothing is held), and the content text it carries."""
        if not self.held():
            self.streams.clear()
            return None, ""
        choices: list[dict[str, Any]] = []
        for index in sorted({key[0] for key in self.streams}):
            delta: dict[str, Any] = {}
            self._flush_into(index, delta)
            if delta:
                choices.append({"index": index, "delta": delta, "finish_reason": None})
        self.streams.clear()
        chunk: dict[str, Any] = {
            k: template[k] for k in ("id", "object", "created", "model") if k in template
        }
        chunk.setdefault("object", "chat.completion.chunk")
        chunk["choices"] = choices
        shown = "".join(c["delta"].get("content") or "" for c in choices)
        return chunk, shown
