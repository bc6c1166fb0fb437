"""Redaction of a streamed chat completion, delta by delta (both upstream paths).

Each text a provider streams in pieces (a choice's content, reasoning and refusal, each tool
call's arguments) runs through its own redactor, so a vault value split across any number of
deltas is masked before any of it leaves the host. The HTTP server's own per-chunk
redaction cannot do this: each delta reaches it JSON-framed on its own.

Two readers, two redactors (docs/vault.md, "Redaction"):

* the agent's stream goes through a `WindowRedactor`: it holds back a fixed number of
  characters (the longest masked form, less one), so when text reaches the agent never
  depends on whether it could begin a secret. The agent steers what a model writes (a model
  echoes its prompt); a hold-back that depends on the text would tell it, a character at a
  time, which guesses begin a provider key.
* the operator's `token_delta` events go through a `StreamRedactor`, which holds back only
  an end that could begin a provider key (usually nothing): the operator is no guesser, and
  the TUI streams with no added latency. (The control socket masks every vault value in
  each event as it leaves; a `StreamRedactor` over the whole vault would cost ~0.35 ms of
  loop time per delta with 200 credentials, so the bus is not redacted that way.)

What a redactor holds goes out with the next delta of the same text, with the choice's
finishing delta, or in one last chunk when the stream ends early.
"""

from __future__ import annotations

from typing import Any

from legion.gateway.redact import Redactor, StreamRedactor, WindowRedactor

# Delta fields that carry one text in pieces, concatenated by the client.
TEXT_FIELDS = ("content", "reasoning_content", "reasoning", "refusal")

Key = tuple[int, str, int]  # (choice index, field, tool call index or -1)


class DeltaRedactor:
    """The redactors of one streamed response, keyed by choice, field and tool call."""

    def __init__(self, redactor: Redactor) -> None:
        redactor.refresh()  # once per stream; the pieces use the forms known now
        self.redactor = redactor
        self.streams: dict[Key, WindowRedactor] = {}  # what the agent receives
        self.shown: dict[int, StreamRedactor] = {}  # the content the operator is shown

    def _feed(self, key: Key, text: str) -> str:
        stream = self.streams.get(key)
        if stream is None:
            stream = self.streams[key] = WindowRedactor(self.redactor)
        return stream.feed(text)

    def _show(self, index: int, text: str) -> str:
        stream = self.shown.get(index)
        if stream is None:
            stream = self.shown[index] = StreamRedactor(self.redactor)
        return stream.feed(text)

    def _show_flush(self, index: int) -> str:
        stream = self.shown.pop(index, None)
        return stream.flush() if stream is not None else ""

    def chunk(self, data: dict[str, Any]) -> str:
        """Redact `data`'s deltas in place (for the agent); returns the content text the
        operator is shown now (the TokenDelta event)."""
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
                    if field == "content":
                        shown += self._show(index, text)
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
                shown += self._show_flush(index)
        return shown

    def _flush_into(self, index: int, delta: dict[str, Any]) -> None:
        """Append what the agent's redactors of choice `index` hold to `delta`."""
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
        """Characters held back across all texts (the agent's and the operator's)."""
        return sum(s.held for s in self.streams.values()) + sum(s.held for s in self.shown.values())

    def flush(self, template: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
        """Everything still held: for the agent, one last chunk shaped like `template`
        (None when nothing is held for it); for the operator, the content text to show."""
        shown = "".join(self._show_flush(index) for index in sorted(self.shown))
        if not any(s.held for s in self.streams.values()):
            self.streams.clear()
            return None, shown
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
        return chunk, shown
