"""A direct path to OpenAI-compatible upstreams, without LiteLLM's per-chunk work.

For a model whose LiteLLM id is `openai/<name>` with an `api_base` (vLLM, Ollama, llama.cpp,
OpenAI-compatible proxies), the request already speaks the upstream's protocol: the host
posts it with the key injected and relays the events, parsing only what it needs (text
deltas, usage). LiteLLM stays the path for everything that needs translating. Measured in
bench/fleet_load.py: LiteLLM alone reaches ~0.1x of a direct client's streaming throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

import httpx

from legion.config import ModelConfig
from legion.gateway.llm.bound import MAX_TOKEN_BYTES, encode

ERROR_BODY_MAX = 64 * 1024  # of an error answer, only a message is read
AFTER_DONE_S = 1.0  # what an upstream sends after [DONE] is read this long at most
AFTER_DONE_MAX = 64 * 1024  # ... and this much, so the connection can go back to the pool


def reply_bytes_cap(max_tokens: int) -> int:
    """The longest body (or stream event) a reply limited to `max_tokens` can need: its
    text at most (`bound.reply_text_cap`), each byte JSON-escaped at most 6 bytes (\\u00XX),
    plus 1 MiB of framing. An upstream sending more is refused, never buffered."""
    return (1 << 20) + 6 * MAX_TOKEN_BYTES * max_tokens


async def _read_capped(response: httpx.Response, cap: int, what: str) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for piece in response.aiter_bytes():
        size += len(piece)
        if size > cap:
            raise UpstreamError(502, f"the upstream sent {what} over {cap} bytes; refused")
        parts.append(piece)
    return b"".join(parts)


async def _lines(response: httpx.Response, cap: int) -> AsyncGenerator[bytes, None]:
    """The body's lines (without their end), none longer than `cap` bytes."""
    pending = b""
    async for piece in response.aiter_bytes():
        pending += piece
        *whole, pending = pending.split(b"\n")
        for line in whole:
            yield line.removesuffix(b"\r")
        if len(pending) > cap:
            raise UpstreamError(502, f"the upstream sent a stream line over {cap} bytes; refused")
    if pending:
        yield pending.removesuffix(b"\r")


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


async def _drain(lines: AsyncIterator[bytes]) -> None:
    """Read what follows [DONE], within AFTER_DONE_S and AFTER_DONE_MAX; then give up."""
    size = 0
    with contextlib.suppress(Exception):
        async with asyncio.timeout(AFTER_DONE_S):
            async for line in lines:
                size += len(line) + 1
                if size > AFTER_DONE_MAX:
                    break


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
            try:
                raw = await _read_capped(response, ERROR_BODY_MAX, "an error body")
            except UpstreamError:
                raw = b""
            except httpx.HTTPError as exc:
                raw = f"(the error body could not be read: {exc})".encode()
            finally:
                await response.aclose()
            raise UpstreamError(
                response.status_code, _error_message(response.status_code, raw), response.headers
            )
        return response

    async def complete(
        self, agent: str, model: ModelConfig, key: str, content: bytes, max_tokens: int
    ) -> dict[str, Any]:
        client, request = await self._request(agent, model, key, "/chat/completions", content)
        response = await self._send(client, request, stream=True)
        try:
            raw = await _read_capped(response, reply_bytes_cap(max_tokens), "a body")
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(None, f"timed out: {exc}") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(None, f"the body was cut: {exc}") from None
        finally:
            await response.aclose()
        try:
            data: dict[str, Any] = json.loads(raw)
        except ValueError:
            raise UpstreamError(502, "the upstream sent a body that is not JSON") from None
        if not isinstance(data, dict):
            raise UpstreamError(502, "the upstream sent a body that is not a JSON object")
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
        self, agent: str, model: ModelConfig, key: str, content: bytes, max_tokens: int
    ) -> AsyncIterator[dict[str, Any]]:
        """Parsed stream events. The HTTP error, if any, raises at the first `__anext__`.
        An event longer than a reply of `max_tokens` can need is refused; after [DONE] the
        rest of the body is read for at most AFTER_DONE_S and AFTER_DONE_MAX (so an honest
        connection goes back to the pool, and a trickling one cannot hold the call open)."""
        client, request = await self._request(agent, model, key, "/chat/completions", content)
        response = await self._send(client, request, stream=True)
        done = False
        lines = _lines(response, reply_bytes_cap(max_tokens))
        try:
            async for line in lines:
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    done = True
                    break
                event = json.loads(payload)
                if isinstance(event, dict) and "error" in event and not event.get("choices"):
                    raise UpstreamError(502, _error_message(502, payload))
                yield event
            if not done:
                raise UpstreamError(None, "the stream ended without [DONE]")
            await _drain(lines)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(None, f"timed out mid-stream: {exc}") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(None, f"the stream was cut: {exc}") from None
        finally:
            await lines.aclose()
            await response.aclose()

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()
        if self._tls is not None and not self._tls.done():
            await asyncio.gather(self._tls, return_exceptions=True)
