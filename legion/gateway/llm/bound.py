"""The prompt bound: an upper bound on the prompt tokens of anything an agent can send.

The rule (docs/llm.md, "Budgets"): the bound is computed from the exact bytes of the JSON
body the host forwards upstream, so no parameter the allowlist lets through can escape it:

    bytes of the body (every allowlisted field the agent sent, compact UTF-8 JSON, plus
    the fields the host sets: model, max_tokens, stream options)
    + 4 per message (the chat template's role markers)
    + 16 per request
    + 8192 per non-text content part (an image, audio, a file: its bytes, often a URL,
      say nothing about the tokens it costs)
    + 1024 once when the request carries tools or a response_format (the preamble a
      provider writes around tool definitions or a schema)

No tokenizer yields more tokens than the bytes of the text it reads (byte-level BPE
tokens are at least one byte each), and the JSON framing only adds bytes, so the bound
holds for any tokenizer. On the direct path the body the provider receives is byte for byte
the one measured here (`UpstreamBody.direct`); LiteLLM re-encodes the same fields.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MESSAGE_OVERHEAD_TOKENS = 4
REQUEST_OVERHEAD_TOKENS = 16
NON_TEXT_PART_TOKENS = 8192
PREAMBLE_TOKENS = 1024

# Content part types whose tokens are the bytes of their text; every other part type
# (image_url, input_audio, file, and any type a provider adds later) is non-text.
TEXT_PARTS = frozenset({"text", "input_text", "output_text", "refusal"})


def encode(body: dict[str, Any]) -> bytes:
    """The one encoding the host forwards: compact UTF-8 JSON (as httpx and the OpenAI SDK
    write it); NaN and infinities are refused (they are not JSON)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _non_text(value: Any) -> int:
    """Non-text parts in a content value (a string, a list of parts, or one part), nested
    content included (a tool result holding images counts itself and each image)."""
    if isinstance(value, str) or value is None:
        return 0
    if isinstance(value, list):
        return sum(_non_text(part) for part in value)
    if isinstance(value, dict):
        kind = value.get("type", "text" if "text" in value else None)
        count = 0 if kind in TEXT_PARTS else 1
        return count + _non_text(value.get("content"))
    return 1  # a number or a bool where a part belongs: count it rather than trust it


def non_text_parts(messages: list[dict[str, Any]]) -> int:
    count = 0
    for message in messages:
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            count += _non_text(content)
        if message.get("audio") is not None:  # a reference to earlier audio output
            count += 1
    return count


@dataclass(frozen=True)
class UpstreamBody:
    """The agent's part of the upstream body, encoded once, and its bound."""

    agent_bytes: bytes  # a JSON object: `{"messages":[...],...}`
    extra_tokens: int  # the overheads and surcharges of the rule above

    @classmethod
    def build(cls, body: dict[str, Any]) -> UpstreamBody:
        messages = body.get("messages") or []
        extra = (
            REQUEST_OVERHEAD_TOKENS
            + MESSAGE_OVERHEAD_TOKENS * len(messages)
            + NON_TEXT_PART_TOKENS * non_text_parts(messages)
        )
        if body.get("tools") or body.get("response_format") or body.get("functions"):
            extra += PREAMBLE_TOKENS
        return cls(encode(body), extra)

    def host_fields(self, model: str, max_tokens: int, stream: bool) -> dict[str, Any]:
        fields: dict[str, Any] = {"model": model, "max_tokens": max_tokens}
        if stream:
            fields["stream"] = True
            fields["stream_options"] = {"include_usage": True}
        return fields

    def direct(self, model: str, max_tokens: int, stream: bool) -> bytes:
        """The exact body the direct path posts: the agent's bytes, then the host's fields."""
        host = encode(self.host_fields(model, max_tokens, stream))
        return self.agent_bytes[:-1] + b"," + host[1:]

    def prompt_bound(self, model: str, max_tokens: int, stream: bool) -> int:
        """The bound for one hop (the model id is part of the body)."""
        host = encode(self.host_fields(model, max_tokens, stream))
        return len(self.agent_bytes) + len(host) + self.extra_tokens
