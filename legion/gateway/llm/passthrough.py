"""A direct path to OpenAI-compatible upstreams, without LiteLLM's per-chunk work.

For a model whose LiteLLM id is `openai/<name>` with an `api_base` (vLLM, Ollama, llama.cpp,
OpenAI-compatible proxies), the request already speaks the upstream's protocol: the host
posts it with the key injected and relays the events, parsing only what it needs (text
deltas, usage). LiteLLM stays the path for everything that needs translating. Measured in
bench/fleet_load.py: LiteLLM alone reaches ~0.1x of a direct client's streaming throughput.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx

from legion.config import ModelConfig
from legion.gateway.llm.bound import encode


class UpstreamError(Exception):
    """An upstream failure, shaped like LiteLLM's so one classifier serves both paths."""

    def __init__(
        self, status_code: int | None, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.headers = dict(headers or {})


class UpstreamTimeout(UpstreamError):
    pass


def applies(model: ModelConfig) -> bool:
    return model.passthrough and model.model.startswith("openai/") and bool(model.api_base)


def upstream_model(model: ModelConfig) -> str:
    """The model name the upstream knows (the LiteLLM id without its `openai/`)."""
    return model.model.split("/", 1)[1]


def _error_message(status: int, raw: bytes) -> str:
    try:
        err = json.loads(raw).get("error")
        if isinstance(err, dict):
            return str(err.get("message") or err)
        if err:
            return str(err)
    except (ValueError, AttributeError):
        pass
    return raw[:500].decode(errors="replace") or f"HTTP {status}"


class Passthrough:
    """One small connection pool per agent: connections are reused (no handshake per call),
    and httpcore's pool bookkeeping, which scans every pooled connection on each request,
    stays cheap (one pool for the whole fleet cost 2x the CPU per stream in fleet_load).

    Every pool shares one TLS context, built once in a worker thread: building one (the CA
    bundle parsed and loaded) costs ~25 ms of CPU and ~1 MiB, which each agent's first call
    paid on the event loop when every pool built its own, even toward a plain-http upstream.
    """

    def __init__(self) -> None:
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._tls: asyncio.Task[ssl.SSLContext] | None = None

    def prepare(self) -> asyncio.Task[ssl.SSLContext]:
        """Start building the shared TLS context in a worker thread (the daemon does at
        start-up when a model uses the direct path, so no first call waits for it)."""
        if self._tls is None:
            self._tls = asyncio.create_task(
                asyncio.to_thread(httpx.create_ssl_context), name="tls-context"
            )
        return self._tls

    async def tls_context(self) -> ssl.SSLContext:
        """The one verifying TLS context of every pool (CA bundle and settings as httpx's
        default, SSL_CERT_FILE and SSL_CERT_DIR included), built off the loop, once."""
        # Shielded: a caller that goes away must not cancel what the others wait for.
        return await asyncio.shield(self.prepare())

    async def _client(self, agent: str) -> httpx.AsyncClient:
        client = self._clients.get(agent)
        if client is None:
            context = await self.tls_context()
            client = self._clients.get(agent)  # another call of this agent's made it meanwhile
            if client is None:
                client = httpx.AsyncClient(
                    timeout=None,
                    verify=context,
                    limits=httpx.Limits(max_connections=16, max_keepalive_connections=4),
                )
                self._clients[agent] = client
        return client

    async def _request(
        self, agent: str, model: ModelConfig, key: str, path: str, content: bytes
    ) -> tuple[httpx.AsyncClient, httpx.Request]:
        """`content` is the exact JSON body the upstream gets (see bound.UpstreamBody)."""
        assert model.api_base is not None
        client = await self._client(agent)
        request = client.build_request(
            "POST",
            model.api_base.rstrip("/") + path,
            content=content,
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            timeout=httpx.Timeout(model.timeout_s),
        )
        return client, request

    async def _send(
        self, client: httpx.AsyncClient, request: httpx.Request, stream: bool
    ) -> httpx.Response:
        try:
            response = await client.send(request, stream=stream)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(None, f"timed out: {exc}") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(None, f"connection failed: {exc}") from None
        if response.status_code >= 400:
            raw = await response.aread()
            await response.aclose()
            raise UpstreamError(
                response.status_code, _error_message(response.status_code, raw), response.headers
            )
        return response

    async def complete(
        self, agent: str, model: ModelConfig, key: str, content: bytes
    ) -> dict[str, Any]:
        client, request = await self._request(agent, model, key, "/chat/completions", content)
        response = await self._send(client, request, stream=False)
        try:
            data: dict[str, Any] = response.json()
        except ValueError:
            raise UpstreamError(502, "the upstream sent a body that is not JSON") from None
        return data

    async def embeddings(
        self, agent: str, model: ModelConfig, key: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        upstream = encode({**body, "model": upstream_model(model)})
        client, request = await self._request(agent, model, key, "/embeddings", upstream)
        response = await self._send(client, request, stream=False)
        data: dict[str, Any] = response.json()
        return data

    async def stream(
        self, agent: str, model: ModelConfig, key: str, content: bytes
    ) -> AsyncIterator[dict[str, Any]]:
        """Parsed stream events. The HTTP error, if any, raises at the first `__anext__`."""
        client, request = await self._request(agent, model, key, "/chat/completions", content)
        response = await self._send(client, request, stream=True)
        done = False
        try:
            async for line in response.aiter_lines():
                if done or not line.startswith("data:"):
                    continue  # read to the end, so the connection goes back to the pool
                payload = line[5:].strip()
                if payload == "[DONE]":
                    done = True
                    continue
                event = json.loads(payload)
                if isinstance(event, dict) and "error" in event and not event.get("choices"):
                    raise UpstreamError(502, _error_message(502, payload.encode()))
                yield event
            if not done:
                raise UpstreamError(None, "the stream ended without [DONE]")
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(None, f"timed out mid-stream: {exc}") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(None, f"the stream was cut: {exc}") from None
        finally:
            await response.aclose()

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()
        if self._tls is not None and not self._tls.done():
            await asyncio.gather(self._tls, return_exceptions=True)
