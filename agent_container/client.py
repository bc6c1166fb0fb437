"""MeshClient: the agent's typed client of its host socket."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

if TYPE_CHECKING:  # imported when first needed: the first inbox poll goes out before it
    from legion.wire.agent import SelfStatus


class MeshError(Exception):
    """A typed error from the host (status, stable code, message)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code} ({status}): {message}")
        self.status = status
        self.code = code
        self.message = message


def _error(response: httpx.Response, body: bytes | None = None) -> MeshError:
    raw = body if body is not None else response.content
    try:
        err = json.loads(raw)["error"]
        return MeshError(response.status_code, err.get("code", "error"), err.get("message", ""))
    except (ValueError, KeyError, TypeError):
        return MeshError(response.status_code, "http_error", raw[:300].decode(errors="replace"))


class MeshClient:
    def __init__(self, socket_path: str, timeout_s: float = 60.0) -> None:
        self.socket_path = socket_path
        self._http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=socket_path),
            base_url="http://legion",
            timeout=httpx.Timeout(timeout_s, connect=5.0),
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        kwargs: dict[str, Any] = {}
        if body is not None:
            kwargs["json"] = body
        if params:
            kwargs["params"] = params
        if timeout_s is not None:
            kwargs["timeout"] = timeout_s
        response = await self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise _error(response)
        return response.json()

    # --- inbox and lifecycle ---------------------------------------------------------

    async def self_status(self) -> SelfStatus:
        from legion.wire.agent import SelfStatus

        return SelfStatus.model_validate(await self.call("GET", "/v1/self"))

    async def poll(
        self, wait_s: float = 30.0, max_items: int = 10, ack: list[int] | None = None
    ) -> list[dict[str, Any]]:
        body = {"wait_s": wait_s, "max_items": max_items, "ack": ack or []}
        data = await self.call("POST", "/v1/inbox/poll", body, timeout_s=wait_s + 15)
        items: list[dict[str, Any]] = data["items"]
        return items

    async def ack(self, ids: list[int]) -> None:
        await self.call("POST", "/v1/inbox/ack", {"ids": ids})

    async def heartbeat(self, status: str = "ok") -> None:
        await self.call("POST", "/v1/heartbeat", {"status": status})

    async def reply(
        self,
        in_reply_to: int | None,
        text: str,
        kind: str = "chat",
        result: dict[str, Any] | None = None,
    ) -> None:
        await self.call(
            "POST",
            "/v1/replies",
            {"in_reply_to": in_reply_to, "text": text, "kind": kind, "result": result},
        )

    async def notify(self, text: str, level: str = "info") -> None:
        await self.call("POST", "/v1/notify", {"text": text, "level": level})

    # --- the LLM -------------------------------------------------------------------------

    async def stream_chat(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Stream a chat completion; yields OpenAI chunks. Errors raise MeshError."""
        async with self._http.stream(
            "POST", "/v1/chat/completions", json={**body, "stream": True}, timeout=None
        ) as response:
            if response.status_code >= 400:
                raise _error(response, await response.aread())
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                payload = line[6:]
                if payload == "[DONE]":
                    return
                chunk = json.loads(payload)
                if "error" in chunk:
                    err = chunk["error"]
                    raise MeshError(
                        err.get("status", 502),
                        err.get("code", "provider_error"),
                        err.get("message", ""),
                    )
                yield chunk

    # --- blackboard, messaging, egress ------------------------------------------------------

    @staticmethod
    def _key(key: str) -> str:
        return "/v1/blackboard/entries/" + quote(key, safe="")

    async def bb_get(self, key: str) -> Any:
        return await self.call("GET", self._key(key))

    async def bb_put(self, key: str, value: Any, ttl_s: float | None = None) -> Any:
        body: dict[str, Any] = {"value": value}
        if ttl_s is not None:
            body["ttl_s"] = ttl_s
        return await self.call("PUT", self._key(key), body)

    async def bb_list(self, prefix: str = "") -> Any:
        return await self.call("GET", "/v1/blackboard/entries", params={"prefix": prefix})

    async def bb_claim(self, key: str, ttl_s: float = 300.0) -> Any:
        return await self.call("POST", "/v1/blackboard/claim", {"key": key, "ttl_s": ttl_s})

    async def bb_release(self, key: str) -> Any:
        return await self.call("POST", "/v1/blackboard/release", {"key": key})

    async def bb_watch(self, pattern: str, cursor: int | None, wait_s: float) -> Any:
        return await self.call(
            "POST",
            "/v1/blackboard/watch",
            {"pattern": pattern, "cursor": cursor, "wait_s": wait_s},
            timeout_s=wait_s + 15,
        )

    async def publish(self, topic: str, payload: Any) -> Any:
        return await self.call("POST", "/v1/publish", {"topic": topic, "payload": payload})

    async def subscribe(self, topic: str) -> Any:
        return await self.call("POST", "/v1/subscriptions", {"topic": topic})

    async def send_message(self, to: str, payload: Any) -> Any:
        return await self.call("POST", "/v1/messages", {"to": to, "payload": payload})

    async def egress(self, request: dict[str, Any]) -> Any:
        return await self.call("POST", "/egress/http", request, timeout_s=660)
