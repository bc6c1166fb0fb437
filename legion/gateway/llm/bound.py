"""The prompt bound: an upper bound on the prompt tokens of anything an agent can send.

The rule (docs/llm.md, "Budgets"): the bound is computed from the exact bytes of the JSON
body the host forwards upstream, so no parameter the allowlist lets through can escape it:

    bytes of the body (every allowlisted field the agent sent, compact UTF-8 JSON, plus
    the fields the host sets: model, max_tokens, stream options)
    + 4 per message (the chat template's role markers)
    + 16 per request
    + 8192 per image or audio part (its bytes, often a URL, say nothing of its tokens;
      no provider charges more than a few thousand tokens for one image)
    + the model's context window per document part (a file, a PDF, a video: a few bytes can
      hold a thousand pages, and no provider accepts a prompt beyond its window)
    + 1024 once when the request carries tools or a response_format (the preamble a
      provider writes around tool definitions or a schema)

No tokenizer yields more tokens than the bytes of the text it reads (byte-level BPE
tokens are at least one byte each), and the JSON framing only adds bytes, so the bound
holds for any tokenizer. On the direct path the body the provider receives is byte for byte
the one measured here (`UpstreamBody.direct`); LiteLLM re-encodes the same fields.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

MESSAGE_OVERHEAD_TOKENS = 4
REQUEST_OVERHEAD_TOKENS = 16
NON_TEXT_PART_TOKENS = 8192
PREAMBLE_TOKENS = 1024
# The document bound when the model's context window is known neither from the config
# (`context_window`) nor from LiteLLM's model table.
DOCUMENT_TOKENS_UNKNOWN = 2_000_000
# The longest token, in bytes, of any tokenizer LiteLLM ships (Anthropic's: 1024; OpenAI's
# cl100k and o200k: 128). A reply whose text is longer than max_tokens times this holds
# more than max_tokens tokens by any of them: the provider ignored the limit the host sent.
MAX_TOKEN_BYTES = 1024


def reply_text_cap(max_tokens: int) -> int:
    """The most text (UTF-8 bytes: content, reasoning, refusal, tool arguments) a reply
    limited to `max_tokens` can hold; a provider sending more is cut off (docs/llm.md)."""
    return max_tokens * MAX_TOKEN_BYTES


# Content part types whose tokens are the bytes of their text; every other part type
# (image_url, input_audio, file, and any type a provider adds later) is non-text.
TEXT_PARTS = frozenset({"text", "input_text", "output_text", "refusal"})
# Non-text parts whose cost is bounded only by the model's window (pages, frames).
DOCUMENT_PARTS = frozenset(
    {"file", "input_file", "document", "video", "video_url", "input_video", "file_url"}
)


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def encode(body: dict[str, Any]) -> bytes:
    """The one encoding the host forwards: compact UTF-8 JSON (as httpx and the OpenAI SDK
    write it); NaN and infinities are refused (they are not JSON)."""
    return _ENCODER.encode(body).encode()


@functools.lru_cache(maxsize=1024)
def host_fields(model: str, max_tokens: int, stream: bool) -> bytes:
    """The fields the host sets, as a JSON object's members (no braces)."""
    fields: dict[str, Any] = {"model": model, "max_tokens": max_tokens}
    if stream:
        fields["stream"] = True
        fields["stream_options"] = {"include_usage": True}
    return encode(fields)[1:-1]


def _non_text(value: Any, documents: list[int]) -> int:
    """Non-text parts in a content value (a string, a list of parts, or one part), nested
    content included (a tool result holding images counts itself and each image); document
    parts are counted in `documents[0]` instead."""
    if isinstance(value, str) or value is None:
        return 0
    if isinstance(value, list):
        return sum(_non_text(part, documents) for part in value)
    if isinstance(value, dict):
        kind = value.get("type", "text" if "text" in value else None)
        count = 0
        if kind in DOCUMENT_PARTS:
            documents[0] += 1
        elif kind not in TEXT_PARTS:
            count = 1
        return count + _non_text(value.get("content"), documents)
    return 1  # a number or a bool where a part belongs: count it rather than trust it


def non_text_parts(messages: list[dict[str, Any]]) -> tuple[int, int]:
    """(image or audio parts, document parts) in `messages`."""
    count = 0
    documents = [0]
    for message in messages:
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            count += _non_text(content, documents)
        if message.get("audio") is not None:  # a reference to earlier audio output
            count += 1
    return count, documents[0]


@dataclass(frozen=True)
class UpstreamBody:
    """The agent's part of the upstream body, encoded once, and its bound."""

    agent_bytes: bytes  # a JSON object: `{"messages":[...],...}`
    extra_tokens: int  # the overheads and surcharges of the rule above, documents aside
    documents: int  # document parts, each bounded by the model's context window

    @classmethod
    def build(cls, body: dict[str, Any]) -> UpstreamBody:
        messages = body.get("messages") or []
        media, documents = non_text_parts(messages)
        extra = (
            REQUEST_OVERHEAD_TOKENS
            + MESSAGE_OVERHEAD_TOKENS * len(messages)
            + NON_TEXT_PART_TOKENS * media
        )
        if body.get("tools") or body.get("response_format") or body.get("functions"):
            extra += PREAMBLE_TOKENS
        return cls(encode(body), extra, documents)

    def direct(self, model: str, max_tokens: int, stream: bool) -> bytes:
        """The exact body the direct path posts: the agent's bytes, then the host's fields."""
        return b"".join((self.agent_bytes[:-1], b",", host_fields(model, max_tokens, stream), b"}"))

    def prompt_bound(
        self, model: str, max_tokens: int, stream: bool, context_window: int | None
    ) -> int:
        """The bound for one hop: the model id is part of the body, and its context window
        (None: unknown) bounds each document part."""
        host = len(host_fields(model, max_tokens, stream)) + 1  # and its comma
        per_document = context_window or DOCUMENT_TOKENS_UNKNOWN
        return len(self.agent_bytes) + host + self.extra_tokens + self.documents * per_document
