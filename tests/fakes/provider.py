"""A fake OpenAI-compatible LLM provider: a real HTTP/1.1 server on 127.0.0.1.

LiteLLM (and anything else that speaks the OpenAI API) talks to it over TCP like to any
provider::

    with FakeProvider() as fp:
        fp.script(Reply(content="hello"), Reply(status=429, retry_after=2))
        await litellm.acompletion(model="openai/fake-model", api_base=fp.base_url, api_key="k", ...)
        assert fp.requests[0].headers["authorization"] == "Bearer k"

Endpoints (``/v1`` prefix optional):

- ``POST /v1/chat/completions``: JSON, or SSE when ``"stream": true`` (chunked transfer
  encoding, one ``data: {...}`` event per HTTP chunk, ending with ``data: [DONE]``).
- ``POST /v1/embeddings``: deterministic vectors (see :func:`embed`), float or base64.
- ``GET /v1/models``: the configured model names.
- Control (never recorded): ``POST /_fake/script`` (``{"replies": [...], "model": null,
  "endpoint": "chat"}``), ``POST /_fake/reset``, ``GET /_fake/requests``, ``POST /_fake/config``
  (``latency_s``, ``chunk_delay_s``, ``chunk_chars``, ``stream_usage``, ``api_key``).

Scripting: each request to an endpoint takes the next :class:`Reply` from the queue for its
model (``script(..., model="m")``), else from the shared queue, else ``default_reply``, else the
default answer ``"echo: <text of the last user message>"``.

Timing of one response: the server waits ``latency_s`` (the reply's, else the server's) plus
``first_byte_delay_s`` before it sends the status line; a stream then waits ``chunk_delay_s``
(the reply's, else the server's) before every event after the first.

Token counting (used whenever a reply does not set ``usage``), see :func:`count_tokens`:

- a text has one token per word (``\\w+``) and one per punctuation character (``[^\\w\\s]``);
- ``prompt_tokens`` = for every message, 3 + tokens of its text content (string, or the ``text``
  of its content parts) + tokens of the name and arguments of its ``tool_calls``; tool
  definitions are not counted;
- ``completion_tokens`` = tokens of the generated content + tokens of each tool call's name
  and arguments;
- embeddings: ``prompt_tokens`` = ``total_tokens`` = tokens of all inputs.

With ``prompt_count="bytes"`` (the server's setting, or a reply's), a chat's ``prompt_tokens``
is instead the byte length of the request body as received: a provider whose own count is as
high as any tokenizer's can be (no tokenizer yields more tokens than bytes).

``max_tokens`` / ``max_completion_tokens`` truncate the generated content to that many tokens
(finish reason ``length``), as a real provider would.

Run as a process: ``python -m tests.fakes.provider --port 0 --latency-ms 20`` prints the base
URL (``http://127.0.0.1:PORT/v1``) on stdout when it is ready; :class:`FakeProviderProcess`
does this and scripts it over HTTP with the same API as :class:`FakeProvider`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import math
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal

HOST = "127.0.0.1"
MESSAGE_OVERHEAD_TOKENS = 3
DEFAULT_EMBEDDING_DIM = 64
DEFAULT_MODELS = ("fake-model", "fake-embedding")
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024

Endpoint = Literal["chat", "embeddings"]
StreamUsage = Literal["always", "requested", "never"]
PromptCount = Literal["tokens", "bytes"]

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


# ---------------------------------------------------------------------------------------------
# Deterministic token counts and embeddings


def count_tokens(text: str) -> int:
    """Tokens of `text`: one per word (``\\w+``), one per punctuation character."""
    return len(_TOKEN_RE.findall(text))


def message_text(content: Any) -> str:
    """The text of a message's ``content``: a string, or the ``text`` of its parts joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict)]
        return "\n".join(p for p in parts if isinstance(p, str))
    return str(content)


def prompt_tokens(messages: Iterable[dict[str, Any]]) -> int:
    """Prompt tokens of a chat request (see the module docstring for the rule)."""
    total = 0
    for message in messages:
        total += MESSAGE_OVERHEAD_TOKENS + count_tokens(message_text(message.get("content")))
        for call in message.get("tool_calls") or []:
            fn = call.get("function") or {}
            total += count_tokens(str(fn.get("name") or ""))
            total += count_tokens(str(fn.get("arguments") or ""))
    return total


def truncate_tokens(text: str, limit: int) -> str:
    """The prefix of `text` holding its first `limit` tokens."""
    end = 0
    for i, match in enumerate(_TOKEN_RE.finditer(text)):
        if i == limit:
            break
        end = match.end()
    return text[:end]


@functools.lru_cache(maxsize=1 << 16)
def _trigram_slot(trigram: str, dim: int) -> tuple[int, float]:
    h = int.from_bytes(hashlib.blake2b(trigram.encode(), digest_size=8).digest(), "little")
    return h % dim, 1.0 if (h >> 63) & 1 else -1.0


def embed(text: str, dim: int = DEFAULT_EMBEDDING_DIM) -> list[float]:
    """A deterministic unit vector for `text`: a signed, hashed bag of character trigrams.

    The text is lower-cased and its whitespace collapsed, so texts sharing many trigrams
    (similar wording) have a high cosine; unrelated texts are near orthogonal. An empty text
    gives the zero vector.
    """
    norm_text = " " + " ".join(text.lower().split()) + " "
    vec = [0.0] * dim
    for i in range(len(norm_text) - 2):
        slot, sign = _trigram_slot(norm_text[i : i + 3], dim)
        vec[slot] += sign
    norm = math.sqrt(sum(v * v for v in vec))
    return [v / norm for v in vec] if norm else vec


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0


# ---------------------------------------------------------------------------------------------
# Scripted replies and recorded requests


@dataclass
class ToolCall:
    """A tool call the fake model makes. `arguments` may be a dict (sent JSON-encoded)."""

    name: str
    arguments: str | dict[str, Any] = "{}"
    id: str | None = None

    @property
    def arguments_json(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments, separators=(",", ":"))

    @classmethod
    def coerce(cls, value: ToolCall | dict[str, Any]) -> ToolCall:
        """From a ToolCall, ``{"name", "arguments", "id"}`` or an OpenAI-shaped tool call."""
        if isinstance(value, ToolCall):
            return value
        if "function" in value:
            fn = value["function"]
            return cls(fn["name"], fn.get("arguments", "{}"), value.get("id"))
        return cls(value["name"], value.get("arguments", "{}"), value.get("id"))


@dataclass
class Reply:
    """One scripted response. Every field is optional; unset fields take the server defaults.

    - content: the assistant text (default: ``"echo: <last user message>"``, or none when
      `tool_calls` is set).
    - tool_calls: tool calls made after the content (finish reason ``tool_calls``).
    - finish_reason: overrides ``stop`` / ``tool_calls`` / ``length``.
    - usage: ``{"prompt_tokens", "completion_tokens"[, "total_tokens"]}`` sent as is
      (``total_tokens`` filled in); default: computed (module docstring).
    - status: an HTTP status >= 400 makes this a fault: the body is `error` (a dict sent as
      is, or a message wrapped in OpenAI's error envelope; default: a message per status).
    - retry_after: seconds for the ``Retry-After`` header (429 sends ``1`` when unset).
    - headers: extra response headers.
    - latency_s: delay before the first byte (default: the server's `latency_s`).
    - first_byte_delay_s: extra delay before the first byte (a slow provider, a timeout).
    - chunk_delay_s: delay between stream events (default: the server's `chunk_delay_s`).
    - chunk_chars: characters of content / tool arguments per stream event (default: server's).
    - cut_after_chunks: a stream sends this many ``data:`` events (the first is the role
      event) and then closes the connection with no final chunk, no ``[DONE]`` and no
      chunked-encoding terminator; a non-streaming response sends its headers and half its
      body, then closes.
    - stream_usage: send the final usage event in a stream (default: server's `stream_usage`).
    - prompt_count: ``"bytes"`` reports the request body's byte length as ``prompt_tokens``
      (default: server's `prompt_count`); ignored when `usage` is set.
    """

    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    status: int = 200
    error: dict[str, Any] | str | None = None
    retry_after: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    latency_s: float | None = None
    first_byte_delay_s: float = 0.0
    chunk_delay_s: float | None = None
    chunk_chars: int | None = None
    cut_after_chunks: int | None = None
    stream_usage: bool | None = None
    prompt_count: PromptCount | None = None

    def __post_init__(self) -> None:
        if self.tool_calls is not None:
            self.tool_calls = [ToolCall.coerce(c) for c in self.tool_calls]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Reply:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown Reply fields: {sorted(unknown)}")
        return cls(**data)


@dataclass
class RecordedRequest:
    """One request as the provider received it. `headers` keys are lower-case."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    received_at: float = 0.0
    # 1, 2, 3, ... in order of arrival; ids in responses derive from it.
    seq: int = 0
    # None while the response is in progress; then "completed" (all of it was sent, faults
    # included), "cut" (a scripted cut_after_chunks) or "disconnected" (the client went away).
    outcome: str | None = None

    @property
    def model(self) -> str | None:
        return self.body.get("model") if isinstance(self.body, dict) else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _coerce_reply(reply: Reply | dict[str, Any]) -> Reply:
    return reply if isinstance(reply, Reply) else Reply.from_dict(reply)


_DEFAULT_ERRORS: dict[int, tuple[str, str, str]] = {
    400: ("Bad request.", "invalid_request_error", "bad_request"),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    402: ("Payment required: insufficient credits.", "insufficient_quota", "payment_required"),
    403: ("Forbidden.", "invalid_request_error", "forbidden"),
    404: ("Not found.", "invalid_request_error", "not_found"),
    429: ("Rate limit reached. Please retry later.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error processing your request.", "server_error", "server_error"),
    502: ("Bad gateway.", "server_error", "bad_gateway"),
    503: ("The engine is currently overloaded.", "server_error", "service_unavailable"),
}


def error_body(status: int, error: dict[str, Any] | str | None = None) -> dict[str, Any]:
    if isinstance(error, dict):
        return error
    message, kind, code = _DEFAULT_ERRORS.get(status, ("Error.", "server_error", str(status)))
    return {"error": {"message": error or message, "type": kind, "param": None, "code": code}}


# ---------------------------------------------------------------------------------------------
# The server


class _BadRequest(Exception):
    pass


@dataclass
class _Http:
    method: str
    target: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


class FakeServer:
    """The asyncio server. Use it through :class:`FakeProvider` unless you own the loop."""

    def __init__(
        self,
        *,
        latency_s: float = 0.0,
        chunk_delay_s: float = 0.0,
        chunk_chars: int = 4,
        stream_usage: StreamUsage = "always",
        api_key: str | None = None,
        default_reply: Reply | None = None,
        models: Iterable[str] = DEFAULT_MODELS,
        embedding_dim: int = DEFAULT_EMBEDDING_DIM,
        prompt_count: PromptCount = "tokens",
    ) -> None:
        self.latency_s = latency_s
        self.prompt_count: PromptCount = prompt_count
        self.chunk_delay_s = chunk_delay_s
        self.chunk_chars = chunk_chars
        self.stream_usage: StreamUsage = stream_usage
        self.api_key = api_key
        self.default_reply = default_reply
        self.models = list(models)
        self.embedding_dim = embedding_dim
        self.port = 0
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._queues: dict[tuple[str, str | None], deque[Reply]] = {}
        self._requests: list[RecordedRequest] = []
        self._seq = 0
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        # TCP connections accepted so far (keep-alive reuse shows as fewer connections).
        self.connections = 0

    # -- state (thread-safe) --

    def script(
        self,
        *replies: Reply | dict[str, Any],
        model: str | None = None,
        endpoint: Endpoint = "chat",
    ) -> None:
        if endpoint not in ("chat", "embeddings"):
            raise ValueError(f"endpoint must be 'chat' or 'embeddings', not {endpoint!r}")
        coerced = [_coerce_reply(r) for r in replies]
        with self._lock:
            self._queues.setdefault((endpoint, model), deque()).extend(coerced)

    def pending(self, model: str | None = None, endpoint: Endpoint = "chat") -> int:
        with self._lock:
            return len(self._queues.get((endpoint, model), ()))

    def _next_reply(self, endpoint: str, model: str | None) -> Reply | None:
        with self._lock:
            for key in ((endpoint, model), (endpoint, None)):
                queue = self._queues.get(key)
                if queue:
                    return queue.popleft()
        return None

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def reset(self) -> None:
        """Forget scripted replies and recorded requests (settings stay)."""
        with self._lock:
            self._queues.clear()
            self._requests.clear()
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
        """Block (never on the server's loop) until `predicate()` holds; it is re-checked
        whenever a request arrives or a response ends. TimeoutError after `timeout_s`."""
        with self._changed:
            if not self._changed.wait_for(predicate, timeout_s):
                raise TimeoutError(f"fake provider: condition not met within {timeout_s} s")

    def _settle(self, rec: RecordedRequest, outcome: str) -> None:
        with self._lock:
            rec.outcome = outcome
            self._changed.notify_all()

    def configure(self, **settings: Any) -> None:
        allowed = {
            "latency_s",
            "chunk_delay_s",
            "chunk_chars",
            "stream_usage",
            "api_key",
            "prompt_count",
        }
        unknown = set(settings) - allowed
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        for key, value in settings.items():
            setattr(self, key, value)

    def _record(self, req: _Http, body: Any) -> RecordedRequest:
        rec = RecordedRequest(req.method, req.target, dict(req.headers), body, time.time())
        with self._lock:
            self._seq += 1
            rec.seq = self._seq
            self._requests.append(rec)
            self._changed.notify_all()
        return rec

    # -- lifecycle --

    async def start(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(
            self._on_connection, HOST, port, limit=MAX_HEAD_BYTES, backlog=1024
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._conns):
            task.cancel()
        await asyncio.gather(*self._conns, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    # -- HTTP --

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            while True:
                try:
                    req = await self._read_request(reader, writer)
                except _BadRequest as exc:
                    await self._send_json(writer, 400, error_body(400, str(exc)), keep_alive=False)
                    break
                if req is None:
                    break
                if not await self._dispatch(req, writer):
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Only close() cancels these. End normally: asyncio (3.11) reports a cancelled
            # client_connected_cb task as an error.
            pass
        finally:
            self._conns.discard(task)
            self._writers.discard(writer)
            writer.close()

    async def _read_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> _Http | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                raise _BadRequest("incomplete request head") from exc
            return None
        except asyncio.LimitOverrunError as exc:
            raise _BadRequest("request head too large") from exc
        lines = head.decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError as exc:
            raise _BadRequest(f"bad request line {lines[0]!r}") from exc
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                raise _BadRequest(f"bad header line {line!r}")
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        if headers.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = b""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await self._read_chunked(reader)
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError as exc:
                raise _BadRequest("bad Content-Length") from exc
            if length < 0 or length > MAX_BODY_BYTES:
                raise _BadRequest("bad Content-Length")
            body = await reader.readexactly(length)
        conn = headers.get("connection", "").lower()
        keep_alive = "close" not in conn if version == "HTTP/1.1" else "keep-alive" in conn
        path = target.split("?", 1)[0]
        return _Http(method.upper(), target, path, headers, body, keep_alive)

    async def _read_chunked(self, reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            size_line = await reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError as exc:
                raise _BadRequest("bad chunk size") from exc
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers
                return b"".join(parts)
            total += size
            if total > MAX_BODY_BYTES:
                raise _BadRequest("body too large")
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)

    async def _dispatch(self, req: _Http, writer: asyncio.StreamWriter) -> bool:
        path = req.path.rstrip("/") or "/"
        if path.startswith("/_fake/"):
            return await self._control(req, path, writer)
        if path.startswith("/v1/"):
            path = path[3:]
        body: Any = None
        if req.body:
            try:
                body = json.loads(req.body)
            except ValueError:
                self._record(req, req.body.decode("utf-8", "replace"))
                return await self._send_json(
                    writer, 400, error_body(400, "body is not valid JSON"), req.keep_alive
                )
        rec = self._record(req, body)
        route = (req.method, path)
        if route not in {
            ("POST", "/chat/completions"),
            ("POST", "/embeddings"),
            ("GET", "/models"),
        }:
            return await self._send_json(
                writer, 404, error_body(404, f"no route {req.method} {req.path}"), req.keep_alive
            )
        if (
            self.api_key is not None
            and req.headers.get("authorization") != f"Bearer {self.api_key}"
        ):
            return await self._send_json(writer, 401, error_body(401), req.keep_alive)
        if route == ("GET", "/models"):
            data = [
                {"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models
            ]
            return await self._send_json(
                writer, 200, {"object": "list", "data": data}, req.keep_alive
            )
        if not isinstance(body, dict):
            return await self._send_json(
                writer, 400, error_body(400, "body must be a JSON object"), req.keep_alive
            )
        handler = self._embeddings if route == ("POST", "/embeddings") else self._chat
        try:
            keep_alive = await handler(req, rec, body, writer)
        except ConnectionError:
            self._settle(rec, "disconnected")
            raise
        self._settle(rec, rec.outcome or "completed")
        return keep_alive

    async def _control(self, req: _Http, path: str, writer: asyncio.StreamWriter) -> bool:
        try:
            body = json.loads(req.body) if req.body else {}
            if (req.method, path) == ("POST", "/_fake/script"):
                replies = body.get("replies") or ([body["reply"]] if "reply" in body else [])
                self.script(
                    *replies, model=body.get("model"), endpoint=body.get("endpoint", "chat")
                )
                result: Any = {"ok": True}
            elif (req.method, path) == ("POST", "/_fake/reset"):
                self.reset()
                result = {"ok": True}
            elif (req.method, path) == ("GET", "/_fake/requests"):
                result = {"requests": [r.to_dict() for r in self.requests]}
            elif (req.method, path) == ("POST", "/_fake/config"):
                self.configure(**body)
                result = {"ok": True}
            else:
                return await self._send_json(
                    writer, 404, error_body(404, f"no route {req.method} {path}"), req.keep_alive
                )
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return await self._send_json(writer, 400, error_body(400, str(exc)), req.keep_alive)
        return await self._send_json(writer, 200, result, req.keep_alive)

    # -- responses --

    @staticmethod
    def _head(status: int, headers: dict[str, str]) -> bytes:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Status"
        lines = [f"HTTP/1.1 {status} {reason}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _send_json(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        payload: Any,
        keep_alive: bool,
        extra: dict[str, str] | None = None,
        cut: bool = False,
    ) -> bool:
        data = json.dumps(payload, separators=(",", ":")).encode()
        headers = {
            "content-type": "application/json",
            "content-length": str(len(data)),
            "connection": "keep-alive" if keep_alive and not cut else "close",
            **(extra or {}),
        }
        if cut:
            data = data[: len(data) // 2]
        writer.write(self._head(status, headers) + data)
        await writer.drain()
        return keep_alive and not cut

    def _fault_headers(self, reply: Reply, seq: int) -> dict[str, str]:
        headers = {"x-request-id": f"req_fake{seq}", **reply.headers}
        if reply.retry_after is not None or reply.status == 429:
            value = 1.0 if reply.retry_after is None else reply.retry_after
            headers["retry-after"] = str(int(value)) if value == int(value) else str(value)
        return headers

    async def _delay_first_byte(self, reply: Reply) -> None:
        latency = self.latency_s if reply.latency_s is None else reply.latency_s
        delay = latency + reply.first_byte_delay_s
        if delay > 0:
            await asyncio.sleep(delay)

    async def _embeddings(
        self, req: _Http, rec: RecordedRequest, body: dict[str, Any], writer: asyncio.StreamWriter
    ) -> bool:
        model = body.get("model")
        reply = self._next_reply("embeddings", model) or Reply()
        await self._delay_first_byte(reply)
        headers = self._fault_headers(reply, rec.seq)
        if reply.status >= 400:
            payload = error_body(reply.status, reply.error)
            return await self._send_json(writer, reply.status, payload, req.keep_alive, headers)
        raw = body.get("input", "")
        if isinstance(raw, str) or (raw and isinstance(raw[0], int)):
            raw = [raw]
        texts = [x if isinstance(x, str) else " ".join(map(str, x)) for x in raw]
        dim = int(body.get("dimensions") or self.embedding_dim)
        as_base64 = body.get("encoding_format") == "base64"
        data = []
        for i, text in enumerate(texts):
            vec = embed(text, dim)
            value: Any = vec
            if as_base64:
                value = base64.b64encode(struct.pack(f"<{dim}f", *vec)).decode()
            data.append({"object": "embedding", "index": i, "embedding": value})
        tokens = sum(count_tokens(t) for t in texts)
        usage = reply.usage or {"prompt_tokens": tokens, "total_tokens": tokens}
        payload = {"object": "list", "data": data, "model": model, "usage": usage}
        cut = reply.cut_after_chunks is not None
        if cut:
            rec.outcome = "cut"
        return await self._send_json(writer, 200, payload, req.keep_alive, headers, cut)

    async def _chat(
        self, req: _Http, rec: RecordedRequest, body: dict[str, Any], writer: asyncio.StreamWriter
    ) -> bool:
        model = body.get("model")
        seq = rec.seq
        reply = self._next_reply("chat", model) or self.default_reply or Reply()
        await self._delay_first_byte(reply)
        headers = self._fault_headers(reply, rec.seq)
        if reply.status >= 400:
            payload = error_body(reply.status, reply.error)
            return await self._send_json(writer, reply.status, payload, req.keep_alive, headers)

        messages = body.get("messages") or []
        tool_calls = list(reply.tool_calls or [])
        content = reply.content
        if content is None and not tool_calls:
            last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
            content = "echo: " + message_text(last_user.get("content") if last_user else "")
        finish = "tool_calls" if tool_calls else "stop"
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if content is not None and isinstance(limit, int) and count_tokens(content) > limit:
            content = truncate_tokens(content, limit)
            finish = "length"
        finish = reply.finish_reason or finish
        calls: list[dict[str, Any]] = [
            {
                "id": c.id or f"call_fake{seq}_{i}",
                "type": "function",
                "function": {"name": c.name, "arguments": c.arguments_json},
            }
            for i, c in enumerate(tool_calls)
        ]
        if reply.usage is not None:
            usage = dict(reply.usage)
        else:
            completion = count_tokens(content or "") + sum(
                count_tokens(c.name) + count_tokens(c.arguments_json) for c in tool_calls
            )
            counting = reply.prompt_count or self.prompt_count
            prompt = len(req.body) if counting == "bytes" else prompt_tokens(messages)
            usage = {"prompt_tokens": prompt, "completion_tokens": completion}
        usage.setdefault(
            "total_tokens", usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
        )
        ident = f"chatcmpl-fake{seq}"
        created = int(time.time())

        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if calls:
                message["tool_calls"] = calls
            payload = {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "system_fingerprint": None,
                "choices": [
                    {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
                ],
                "usage": usage,
            }
            cut = reply.cut_after_chunks is not None
            if cut:
                rec.outcome = "cut"
            return await self._send_json(writer, 200, payload, req.keep_alive, headers, cut)

        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        if reply.stream_usage is not None:
            send_usage = reply.stream_usage
        else:
            send_usage = self.stream_usage == "always" or (
                self.stream_usage == "requested" and include_usage
            )
        step = max(1, reply.chunk_chars or self.chunk_chars)

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            out: dict[str, Any] = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": None,
                "choices": [
                    {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
                ],
            }
            if include_usage:
                out["usage"] = None
            return out

        def events() -> Iterator[dict[str, Any]]:
            yield chunk({"role": "assistant", "content": "" if content is not None else None})
            text = content or ""
            for i in range(0, len(text), step):
                yield chunk({"content": text[i : i + step]})
            for i, call in enumerate(calls):
                fn = call["function"]
                first = {
                    "index": i,
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": fn["name"], "arguments": ""},
                }
                yield chunk({"tool_calls": [first]})
                args = fn["arguments"]
                for j in range(0, len(args), step):
                    piece = {"index": i, "function": {"arguments": args[j : j + step]}}
                    yield chunk({"tool_calls": [piece]})
            yield chunk({}, finish)
            if send_usage:
                last = chunk({})
                last["choices"] = []
                last["usage"] = usage
                yield last

        stream_headers = {
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
            "transfer-encoding": "chunked",
            "connection": "keep-alive" if req.keep_alive else "close",
            **headers,
        }
        chunk_delay = self.chunk_delay_s if reply.chunk_delay_s is None else reply.chunk_delay_s
        writer.write(self._head(200, stream_headers))
        await writer.drain()
        for n, event in enumerate(events()):
            if n == reply.cut_after_chunks:
                rec.outcome = "cut"
                return False
            if n and chunk_delay > 0:
                await asyncio.sleep(chunk_delay)
            if writer.transport.is_closing():
                raise ConnectionResetError("client went away")
            await self._write_chunk(writer, b"data: " + _dumps(event) + b"\n\n")
        if reply.cut_after_chunks is not None:
            rec.outcome = "cut"
            return False
        await self._write_chunk(writer, b"data: [DONE]\n\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return req.keep_alive

    @staticmethod
    async def _write_chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(b"%x\r\n%s\r\n" % (len(data), data))
        await writer.drain()


def _dumps(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


# ---------------------------------------------------------------------------------------------
# The in-process handle


class FakeProvider:
    """The fake provider, in-process.

    ``with FakeProvider() as fp:`` serves from a background thread with its own event loop
    (works from sync and async tests alike); ``async with FakeProvider() as fp:`` serves on the
    running loop instead. Both give the same handle: `base_url`, `script`, `requests`, `reset`.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        latency_s: float = 0.0,
        chunk_delay_s: float = 0.0,
        chunk_chars: int = 4,
        stream_usage: StreamUsage = "always",
        api_key: str | None = None,
        default_reply: Reply | None = None,
        models: Iterable[str] = DEFAULT_MODELS,
        embedding_dim: int = DEFAULT_EMBEDDING_DIM,
        prompt_count: PromptCount = "tokens",
    ) -> None:
        self.server = FakeServer(
            latency_s=latency_s,
            chunk_delay_s=chunk_delay_s,
            chunk_chars=chunk_chars,
            stream_usage=stream_usage,
            api_key=api_key,
            default_reply=default_reply,
            models=models,
            embedding_dim=embedding_dim,
            prompt_count=prompt_count,
        )
        self._port = port
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    # -- settings (take effect for the next response) --

    @property
    def latency_s(self) -> float:
        return self.server.latency_s

    @latency_s.setter
    def latency_s(self, value: float) -> None:
        self.server.latency_s = value

    @property
    def chunk_delay_s(self) -> float:
        return self.server.chunk_delay_s

    @chunk_delay_s.setter
    def chunk_delay_s(self, value: float) -> None:
        self.server.chunk_delay_s = value

    @property
    def chunk_chars(self) -> int:
        return self.server.chunk_chars

    @chunk_chars.setter
    def chunk_chars(self, value: int) -> None:
        self.server.chunk_chars = value

    @property
    def prompt_count(self) -> PromptCount:
        return self.server.prompt_count

    @prompt_count.setter
    def prompt_count(self, value: PromptCount) -> None:
        self.server.prompt_count = value

    @property
    def default_reply(self) -> Reply | None:
        return self.server.default_reply

    @default_reply.setter
    def default_reply(self, value: Reply | None) -> None:
        self.server.default_reply = value

    # -- addresses and state --

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def connections(self) -> int:
        """TCP connections accepted so far."""
        return self.server.connections

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: the ``api_base`` for LiteLLM / OpenAI clients."""
        return self.server.base_url

    def script(
        self,
        *replies: Reply | dict[str, Any],
        model: str | None = None,
        endpoint: Endpoint = "chat",
    ) -> None:
        """Queue replies, served in order to requests for `model` (None: any model)."""
        self.server.script(*replies, model=model, endpoint=endpoint)

    def pending(self, model: str | None = None, endpoint: Endpoint = "chat") -> int:
        """Scripted replies not yet served from that queue."""
        return self.server.pending(model, endpoint)

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received (control requests excluded), oldest first; a copy."""
        return self.server.requests

    def reset(self) -> None:
        self.server.reset()

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
        """Block until `predicate()` holds, re-checked whenever a request arrives or a response
        ends; TimeoutError after `timeout_s`. Thread mode only (it would block the serving
        loop in async mode): from async code use :meth:`await_for`."""
        self.server.wait_for(predicate, timeout_s)

    def wait_for_requests(self, count: int, timeout_s: float = 10.0) -> list[RecordedRequest]:
        """Block until `count` requests were recorded; returns them (thread mode)."""
        self.server.wait_for(lambda: len(self.server.requests) >= count, timeout_s)
        return self.requests

    async def await_for(self, predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
        """:meth:`wait_for` for async code (either mode): waits in a worker thread."""
        await asyncio.to_thread(self.server.wait_for, predicate, timeout_s)

    async def await_requests(self, count: int, timeout_s: float = 10.0) -> list[RecordedRequest]:
        """:meth:`wait_for_requests` for async code (either mode)."""
        await self.await_for(lambda: len(self.server.requests) >= count, timeout_s)
        return self.requests

    # -- thread mode --

    def start(self) -> FakeProvider:
        if self._thread is not None:
            raise RuntimeError("already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                await self.server.start(self._port)
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            try:
                await self._stop.wait()
            finally:
                await self.server.close()

        self._thread = threading.Thread(
            target=asyncio.run, args=(serve(),), name="fake-provider", daemon=True
        )
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._thread = None

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- async mode --

    async def __aenter__(self) -> FakeProvider:
        await self.server.start(self._port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.close()


# ---------------------------------------------------------------------------------------------
# The out-of-process handle


class FakeProviderProcess:
    """``python -m tests.fakes.provider`` as a subprocess, scripted over HTTP.

    Same handle as :class:`FakeProvider`: `base_url`, `script`, `requests`, `reset`, plus
    `configure(latency_s=..., ...)`.
    """

    def __init__(
        self,
        *,
        latency_ms: float = 0.0,
        chunk_delay_ms: float = 0.0,
        chunk_chars: int = 4,
        api_key: str | None = None,
        port: int = 0,
        startup_timeout_s: float = 20.0,
    ) -> None:
        self.args = [
            "--port",
            str(port),
            "--latency-ms",
            str(latency_ms),
            "--chunk-delay-ms",
            str(chunk_delay_ms),
            "--chunk-chars",
            str(chunk_chars),
        ]
        if api_key is not None:
            self.args += ["--api-key", api_key]
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def start(self) -> FakeProviderProcess:
        root = Path(__file__).resolve().parents[2]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes.provider", *self.args],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        stdout = self.proc.stdout
        assert stdout is not None
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(stdout.readline()), daemon=True)
        reader.start()
        reader.join(self.startup_timeout_s)
        if not line or not line[0].startswith("http://"):
            stderr = ""
            if self.proc.poll() is not None and self.proc.stderr is not None:
                stderr = self.proc.stderr.read()
            self.stop()
            raise RuntimeError(f"fake provider did not start: {line!r} {stderr}")
        self.base_url = line[0].strip()
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        self.proc = None

    def __enter__(self) -> FakeProviderProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def root_url(self) -> str:
        return self.base_url.removesuffix("/v1")

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(
            self.root_url + path,
            data=data,
            method=method,
            headers={"content-type": "application/json"},
        )
        with self._opener.open(request, timeout=10) as response:
            return json.loads(response.read())

    def script(
        self,
        *replies: Reply | dict[str, Any],
        model: str | None = None,
        endpoint: Endpoint = "chat",
    ) -> None:
        dicts = [_coerce_reply(r).to_dict() for r in replies]
        self._call(
            "POST", "/_fake/script", {"replies": dicts, "model": model, "endpoint": endpoint}
        )

    @property
    def requests(self) -> list[RecordedRequest]:
        return [RecordedRequest(**r) for r in self._call("GET", "/_fake/requests")["requests"]]

    def reset(self) -> None:
        self._call("POST", "/_fake/reset", {})

    def configure(self, **settings: Any) -> None:
        self._call("POST", "/_fake/config", settings)


# ---------------------------------------------------------------------------------------------
# python -m tests.fakes.provider


async def _serve_forever(args: argparse.Namespace) -> None:
    server = FakeServer(
        latency_s=args.latency_ms / 1000,
        chunk_delay_s=args.chunk_delay_ms / 1000,
        chunk_chars=args.chunk_chars,
        stream_usage=args.stream_usage,
        api_key=args.api_key,
        embedding_dim=args.embedding_dim,
    )
    await server.start(args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(server.base_url, flush=True)
    await stop.wait()
    await server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.provider", description="A fake OpenAI-compatible provider."
    )
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before first byte")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="delay between events")
    parser.add_argument("--chunk-chars", type=int, default=4, help="characters per stream delta")
    parser.add_argument(
        "--stream-usage", choices=["always", "requested", "never"], default="always"
    )
    parser.add_argument("--api-key", default=None, help="require this bearer key (else any)")
    parser.add_argument("--embedding-dim", type=int, default=DEFAULT_EMBEDDING_DIM)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(args))


if __name__ == "__main__":
    main()
