"""MeshClient: the agent's typed client of its host, over the one Unix socket it has.

Every route of the agent socket has a method here. Responses are parsed into the
`legion.wire` models; error bodies (`{"error": {code, message, status, detail}}`) raise
`MeshError`. Transport failures are split in two, because the work loop treats them
differently: `HostUnavailable` (the socket is missing, refuses, or drops the connection:
the host is restarting, so the current inbox item must not be acked) and `MeshTimeout`
(the host is there but did not answer in time: a tool reports it to the model).

Request bodies are plain dicts and the wire models are imported on first use, not at
module import: the first inbox poll goes out before pydantic is loaded, so the host sees
a freshly started agent as early as possible (docs/decisions.md).
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

if TYPE_CHECKING:
    from legion.wire.agent import ReplyAccepted, SelfStatus, WorkspaceUpdated
    from legion.wire.api import (
        BlackboardDeleted,
        BlackboardEntry,
        BlackboardList,
        Claim,
        InboxItem,
        MessageQueued,
        Published,
        Released,
        Subscriptions,
        WatchResponse,
    )
    from legion.wire.egress import EgressResponse

BASE_URL = "http://legion"
CONNECT_TIMEOUT_S = 5.0
# Between two streamed chunks: a model may think for minutes before its first token.
STREAM_READ_TIMEOUT_S = 600.0
# The host's own egress limit applies first; this only stops a wedged connection.
EGRESS_TIMEOUT_S = 660.0
# An embedding is a small call; memory falls back to keywords rather than wait long.
EMBED_TIMEOUT_S = 20.0
EMBED_MAX_DIM = 8192


class MeshError(Exception):
    """A typed error the host answered with (status, stable code, message, detail)."""

    def __init__(
        self, status: int, code: str, message: str, detail: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{code} ({status}): {message}")
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail or {}


class HostUnavailable(ConnectionError):
    """The socket cannot be reached or dropped the connection (the host is restarting)."""


class MeshTimeout(TimeoutError):
    """The host accepted the request but did not answer within the client's timeout."""


def error_from_body(status: int, raw: bytes) -> MeshError:
    """The MeshError of an error response; a body that is not the typed JSON still says why."""
    try:
        err = json.loads(raw)["error"]
        detail = err.get("detail")
        return MeshError(
            int(err.get("status") or status),
            str(err.get("code") or "error"),
            str(err.get("message") or ""),
            detail if isinstance(detail, dict) else None,
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return MeshError(status, "http_error", raw[:300].decode(errors="replace"))


def _transport_error(exc: httpx.TransportError, what: str) -> Exception:
    if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
        return MeshTimeout(f"{what}: the host did not answer in time ({exc.__class__.__name__})")
    return HostUnavailable(f"{what}: {exc.__class__.__name__}: {exc}".rstrip(": "))


def parse_sse_line(line: str) -> dict[str, Any] | None:
    """One SSE line of a streamed completion: the chunk, or None (comment, blank, [DONE]).

    Raises MeshError for an error event (`data: {"error": {...}}`).
    """
    if not line.startswith("data:"):
        return None
    payload = line[5:].strip()
    if not payload or payload == "[DONE]":
        return None
    try:
        chunk = json.loads(payload)
    except ValueError:
        raise MeshError(502, "bad_stream", f"undecodable stream event: {payload[:200]}") from None
    if not isinstance(chunk, dict):
        return None
    if "error" in chunk:
        raise error_from_body(502, payload.encode())
    return chunk


class MeshClient:
    """Async client of one agent socket. Identity is the socket: nothing here names the agent."""

    def __init__(self, socket_path: str, timeout_s: float = 60.0) -> None:
        self.socket_path = socket_path
        self._http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=socket_path),
            base_url=BASE_URL,
            timeout=httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S),
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """One request; returns the decoded JSON body or raises MeshError / HostUnavailable."""
        kwargs: dict[str, Any] = {}
        if body is not None:
            kwargs["json"] = body
        if params:
            kwargs["params"] = params
        if timeout_s is not None:
            kwargs["timeout"] = httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S)
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise _transport_error(exc, f"{method} {path}") from exc
        if response.status_code >= 400:
            raise error_from_body(response.status_code, response.content)
        try:
            return response.json()
        except ValueError as exc:
            raise MeshError(response.status_code, "bad_response", f"not JSON: {exc}") from exc

    # --- inbox and lifecycle ---------------------------------------------------------

    async def poll(
        self, wait_s: float = 30.0, max_items: int = 10, ack: list[int] | None = None
    ) -> list[InboxItem]:
        """Long-poll the inbox (acking `ack` first); items stay hidden until acked or timed out."""
        body = {"wait_s": wait_s, "max_items": max_items, "ack": ack or []}
        data = await self.call("POST", "/v1/inbox/poll", body, timeout_s=wait_s + 15)
        from legion.wire.api import PollResponse  # after the first poll went out

        return PollResponse.model_validate(data).items

    async def ack(self, ids: list[int]) -> int:
        data = await self.call("POST", "/v1/inbox/ack", {"ids": ids})
        return int(data["acked"])

    async def heartbeat(self, status: str = "ok") -> None:
        """Tell the host the agent is alive (the answer is not parsed: no pydantic needed)."""
        await self.call("POST", "/v1/heartbeat", {"status": status[:200]})

    async def self_status(self) -> SelfStatus:
        from legion.wire.agent import SelfStatus

        return SelfStatus.model_validate(await self.call("GET", "/v1/self"))

    async def reply(
        self,
        in_reply_to: int | None,
        text: str,
        kind: str = "chat",
        result: dict[str, Any] | None = None,
        *,
        error: dict[str, Any] | None = None,
    ) -> ReplyAccepted:
        """Answer an item; `error` ({code, message, status}: legion.wire.agent.TurnError)
        marks a turn that failed or was refused, so the asker can tell it from an answer."""
        from legion.wire.agent import ReplyAccepted

        body: dict[str, Any] = {
            "in_reply_to": in_reply_to,
            "text": text,
            "kind": kind,
            "result": result,
        }
        if error is not None:
            body["error"] = error
        return ReplyAccepted.model_validate(await self.call("POST", "/v1/replies", body))

    async def notify(self, text: str, level: str = "info") -> None:
        await self.call("POST", "/v1/notify", {"text": text, "level": level})

    # --- the LLM -------------------------------------------------------------------------

    async def stream_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        model: str | None = None,
        **extra: Any,
    ) -> AsyncIterator[dict[str, Any]]:
        """Stream a chat completion (the agent's own model unless `model` names another).

        Yields OpenAI chunks. A refusal before the stream (402 budget, 403, 502...) or an
        error event inside it raises MeshError; a dropped connection, HostUnavailable.
        """
        body: dict[str, Any] = {"messages": messages, **extra, "stream": True}
        if tools:
            body["tools"] = tools
        if model is not None:
            body["model"] = model
        timeout = httpx.Timeout(STREAM_READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
        try:
            async with self._http.stream(
                "POST", "/v1/chat/completions", json=body, timeout=timeout
            ) as response:
                if response.status_code >= 400:
                    raise error_from_body(response.status_code, await response.aread())
                done = False
                async for line in response.aiter_lines():
                    done = done or (line.startswith("data:") and line[5:].strip() == "[DONE]")
                    chunk = parse_sse_line(line)
                    if chunk is not None:
                        yield chunk
        except httpx.TransportError as exc:
            raise _transport_error(exc, "chat completion") from exc
        if not done:  # the gateway always ends with [DONE] or an error event
            raise HostUnavailable("chat completion: the stream ended without [DONE]")

    async def embed(self, texts: list[str], model: str | None) -> list[list[float]]:
        """Embeddings of `texts` (in order) through the host's gateway (budgeted, audited)."""
        body: dict[str, Any] = {"input": texts}
        if model is not None:
            body["model"] = model
        data = await self.call("POST", "/v1/embeddings", body, timeout_s=EMBED_TIMEOUT_S)
        try:
            rows = sorted(data["data"], key=lambda row: int(row.get("index", 0)))
            vectors = [[float(x) for x in row["embedding"]] for row in rows]
        except (KeyError, TypeError, ValueError) as exc:
            raise MeshError(
                502, "bad_embedding", f"undecodable embedding response: {exc}"
            ) from None
        if len(vectors) != len(texts) or any(len(v) != len(vectors[0]) for v in vectors):
            raise MeshError(502, "bad_embedding", "the embedding response does not match the input")
        if not 0 < len(vectors[0]) <= EMBED_MAX_DIM or not all(
            math.isfinite(x) for v in vectors for x in v
        ):
            raise MeshError(
                502, "bad_embedding", "the embedding has no, too many or non-finite values"
            )
        return vectors

    async def models(self) -> list[dict[str, Any]] | None:
        """`GET /v1/models` (OpenAI list; each entry may carry `legion: {context_window,
        max_output_tokens}`), or None when this host does not serve the route."""
        try:
            data = await self.call("GET", "/v1/models")
        except MeshError as exc:
            if exc.status in (404, 405):
                return None
            raise
        entries = data.get("data") if isinstance(data, dict) else None
        return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else None

    async def update_workspace(self, file: str, content: str, mode: str) -> WorkspaceUpdated:
        """Replace or append to USER.md, MEMORY.md or HEARTBEAT.md (the host keeps versions)."""
        from legion.wire.agent import WorkspaceUpdated

        data = await self.call(
            "PUT", "/v1/workspace/" + quote(file, safe=""), {"content": content, "mode": mode}
        )
        return WorkspaceUpdated.model_validate(data)

    # --- blackboard ------------------------------------------------------------------------

    @staticmethod
    def _key(key: str) -> str:
        return "/v1/blackboard/entries/" + quote(key, safe="")

    async def bb_get(self, key: str) -> BlackboardEntry:
        from legion.wire.api import BlackboardEntry

        return BlackboardEntry.model_validate(await self.call("GET", self._key(key)))

    async def bb_put(self, key: str, value: Any, ttl_s: float | None = None) -> BlackboardEntry:
        from legion.wire.api import BlackboardEntry

        body: dict[str, Any] = {"value": value}
        if ttl_s is not None:
            body["ttl_s"] = ttl_s
        return BlackboardEntry.model_validate(await self.call("PUT", self._key(key), body))

    async def bb_delete(self, key: str) -> BlackboardDeleted:
        from legion.wire.api import BlackboardDeleted

        return BlackboardDeleted.model_validate(await self.call("DELETE", self._key(key)))

    async def bb_list(self, prefix: str = "") -> BlackboardList:
        """Entries under `prefix` (`truncated`: more follow; list a longer prefix)."""
        from legion.wire.api import BlackboardList

        data = await self.call("GET", "/v1/blackboard/entries", params={"prefix": prefix})
        return BlackboardList.model_validate(data)

    async def bb_cas(
        self, key: str, expected_version: int, value: Any, ttl_s: float | None = None
    ) -> BlackboardEntry:
        from legion.wire.api import BlackboardEntry

        body: dict[str, Any] = {"key": key, "expected_version": expected_version, "value": value}
        if ttl_s is not None:
            body["ttl_s"] = ttl_s
        return BlackboardEntry.model_validate(await self.call("POST", "/v1/blackboard/cas", body))

    async def bb_claim(self, key: str, ttl_s: float = 300.0) -> Claim:
        from legion.wire.api import Claim

        body = {"key": key, "ttl_s": ttl_s}
        return Claim.model_validate(await self.call("POST", "/v1/blackboard/claim", body))

    async def bb_release(self, key: str) -> Released:
        from legion.wire.api import Released

        data = await self.call("POST", "/v1/blackboard/release", {"key": key})
        return Released.model_validate(data)

    async def bb_watch(
        self, pattern: str, cursor: int | None = None, wait_s: float = 0.0
    ) -> WatchResponse:
        from legion.wire.api import WatchResponse

        body = {"pattern": pattern, "cursor": cursor, "wait_s": wait_s}
        data = await self.call("POST", "/v1/blackboard/watch", body, timeout_s=wait_s + 15)
        return WatchResponse.model_validate(data)

    # --- pub/sub, messages, egress ------------------------------------------------------------

    async def publish(self, topic: str, payload: Any) -> Published:
        from legion.wire.api import Published

        data = await self.call("POST", "/v1/publish", {"topic": topic, "payload": payload})
        return Published.model_validate(data)

    async def subscribe(self, topic: str) -> Subscriptions:
        from legion.wire.api import Subscriptions

        data = await self.call("POST", "/v1/subscriptions", {"topic": topic})
        return Subscriptions.model_validate(data)

    async def send_message(self, to: str, payload: Any) -> MessageQueued:
        from legion.wire.api import MessageQueued

        data = await self.call("POST", "/v1/messages", {"to": to, "payload": payload})
        return MessageQueued.model_validate(data)

    async def egress(self, request: dict[str, Any]) -> EgressResponse:
        """An HTTP request performed by the host (fields of `EgressRequest`).

        `$CRED{name}` handles are sent as written; the host substitutes them.
        """
        from legion.wire.egress import EgressResponse

        data = await self.call("POST", "/egress/http", request, timeout_s=EGRESS_TIMEOUT_S)
        return EgressResponse.model_validate(data)
