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
from collections.abc import AsyncIterator
from typing import Any

import httpx

from legion.config import ModelConfig
from legion.gateway.llm.bound import MAX_TOKEN_BYTES, encode
from legion.gateway.llm.upstream import (
    Pool,
    Response,
    UpstreamError,
    UpstreamTimeout,
    read_capped,
)

__all__ = ["Passthrough", "UpstreamError", "UpstreamTimeout", "applies", "upstream_model"]


def applies(model: ModelConfig) -> bool:
    return model.passthrough and model.model.startswith("openai/") and bool(model.api_base)


def upstream_model(model: ModelConfig) -> str:
    """The model name the upstream knows (the LiteLLM id without its `openai/`)."""
    return model.model.split("/", 1)[1]


MAX_ERROR_BODY = 65536  # of an upstream's error answer, read to report it
MAX_BODY = 64 * 1024 * 1024  # a whole (non-streamed) answer
AFTER_DONE_S = 1.0  # what an upstream sends after [DONE] is read this long at most
AFTER_DONE_MAX = 64 * 1024  # ... and this much, so an honest connection goes back to the pool


def reply_bytes_cap(max_tokens: int) -> int:
    """The longest body (or stream event) a reply limited to `max_tokens` can need: its
    text at most (`bound.reply_text_cap`), each byte JSON-escaped at most 6 bytes (\\u00XX),
    plus 1 MiB of framing. An upstream sending more is refused, never buffered."""
    return (1 << 20) + 6 * MAX_TOKEN_BYTES * max_tokens


async def _read_capped(response: httpx.Response, cap: int, *, cut: bool = False) -> bytes:
    """An httpx body, at most `cap` bytes (`upstream.read_capped`)."""
    return await read_capped(response.aiter_bytes(), cap, cut=cut)


async def _drain(pieces: AsyncIterator[bytes]) -> None:
    """Read what follows [DONE], within AFTER_DONE_S and AFTER_DONE_MAX, then give up (the
    connection is then closed, not reused): a trickling upstream cannot hold the call open."""
    size = 0
    with contextlib.suppress(Exception):
        async with asyncio.timeout(AFTER_DONE_S):
            async for piece in pieces:
                size += len(piece)
                if size > AFTER_DONE_MAX:
                    break


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
    """The direct path's client: one connection pool for the fleet (upstream.py), at most
    `upstream.PER_AGENT` connections per agent, reused across calls (no handshake per
    call), and no per-agent client to build at an agent's first call.

    Every TLS connection uses one context, built once in a worker thread (the CA bundle
    parsed and loaded costs ~25 ms of CPU and ~1 MiB); a plain-http upstream never builds
    one. An upstream reached through a proxy (HTTP(S)_PROXY in the daemon's environment,
    NO_PROXY honoured) goes through httpx, which speaks to proxies.
    """

    def __init__(self) -> None:
        self._tls: asyncio.Task[ssl.SSLContext] | None = None
        self.pool = Pool(self.tls_context)
        self._proxied: dict[str, httpx.AsyncClient] = {}
        self._proxy_of: dict[str, bool] = {}

    def prepare(self) -> asyncio.Task[ssl.SSLContext]:
        """Start building the shared TLS context in a worker thread (the daemon does at
        start-up when a direct-path model is reached over https, so no first call waits)."""
        if self._tls is None:
            self._tls = asyncio.create_task(
                asyncio.to_thread(httpx.create_ssl_context), name="tls-context"
            )
        return self._tls

    async def tls_context(self) -> ssl.SSLContext:
        """The one verifying TLS context (CA bundle and settings as httpx's default,
        SSL_CERT_FILE and SSL_CERT_DIR included), built off the loop, once."""
        # Shielded: a caller that goes away must not cancel what the others wait for.
        return await asyncio.shield(self.prepare())

    def _proxied_base(self, base: str) -> bool:
        known = self._proxy_of.get(base)
        if known is None:
            from urllib.request import getproxies, proxy_bypass

            split = httpx.URL(base)
            proxies = getproxies()
            known = bool(proxies.get(split.scheme) or proxies.get("all")) and not proxy_bypass(
                split.host
            )
            self._proxy_of[base] = known
        return known

    async def _post(
        self, agent: str, model: ModelConfig, key: str, path: str, content: bytes
    ) -> Response | httpx.Response:
        """`content` is the exact JSON body the upstream gets (see bound.UpstreamBody)."""
        assert model.api_base is not None
        headers = [("Authorization", f"Bearer {key}"), ("Content-Type", "application/json")]
        if self._proxied_base(model.api_base):
            return await self._post_proxied(agent, model, path, headers, content)
        response = await self.pool.post(
            agent, model.api_base, path, headers, content, model.timeout_s
        )
        if response.status_code >= 400:
            try:
                raw = await response.read(MAX_ERROR_BODY, cut=True)
            finally:
                response.aclose_now()
            raise UpstreamError(
                response.status_code, _error_message(response.status_code, raw), response.headers
            )
        return response

    async def _post_proxied(
        self,
        agent: str,
        model: ModelConfig,
        path: str,
        headers: list[tuple[str, str]],
        content: bytes,
    ) -> httpx.Response:
        assert model.api_base is not None
        client = self._proxied.get(agent)
        if client is None:
            context = await self.tls_context()
            client = self._proxied.setdefault(
                agent,
                httpx.AsyncClient(
                    timeout=None,
                    verify=context,
                    limits=httpx.Limits(max_connections=16, max_keepalive_connections=4),
                ),
            )
        request = client.build_request(
            "POST",
            model.api_base.rstrip("/") + path,
            content=content,
            headers=headers,
            timeout=httpx.Timeout(model.timeout_s),
        )
        try:
            response = await client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(None, f"timed out: {exc}") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(None, f"connection failed: {exc}") from None
        if response.status_code >= 400:
            try:
                raw = await _read_capped(response, MAX_ERROR_BODY, cut=True)
            except httpx.HTTPError as exc:
                raw = f"(the error body could not be read: {exc})".encode()
            finally:
                await response.aclose()
            raise UpstreamError(
                response.status_code,
                _error_message(response.status_code, raw),
                dict(response.headers),
            )
        return response

    async def _json(self, response: Response | httpx.Response, cap: int) -> dict[str, Any]:
        try:
            if isinstance(response, Response):
                try:
                    raw = await response.read(cap)
                finally:
                    response.aclose_now()
            else:
                try:
                    raw = await _read_capped(response, cap)
                finally:
                    await response.aclose()
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(None, f"timed out: {exc}") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(None, f"the response was cut: {exc}") from None
        try:
            data = json.loads(raw)
        except ValueError:
            raise UpstreamError(502, "the upstream sent a body that is not JSON") from None
        if not isinstance(data, dict):
            raise UpstreamError(502, "the upstream sent a body that is not a JSON object")
        return data

    async def complete(
        self, agent: str, model: ModelConfig, key: str, content: bytes, max_tokens: int
    ) -> dict[str, Any]:
        response = await self._post(agent, model, key, "/chat/completions", content)
        return await self._json(response, min(MAX_BODY, reply_bytes_cap(max_tokens)))

    async def embeddings(
        self, agent: str, model: ModelConfig, key: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        upstream = encode({**body, "model": upstream_model(model)})
        return await self._json(
            await self._post(agent, model, key, "/embeddings", upstream), MAX_BODY
        )

    async def stream(
        self, agent: str, model: ModelConfig, key: str, content: bytes, max_tokens: int
    ) -> AsyncIterator[dict[str, Any]]:
        """Parsed stream events. The HTTP error, if any, raises at the first `__anext__`.
        The events of one upstream read are parsed together and yielded without a wait
        in between, so the relay writes them to the agent as one batch. An event longer
        than a reply of `max_tokens` can need is refused; after [DONE] the rest of the body
        is read for at most AFTER_DONE_S and AFTER_DONE_MAX (so an honest connection goes
        back to the pool, and a trickling one cannot hold the call open)."""
        line_cap = reply_bytes_cap(max_tokens)
        response = await self._post(agent, model, key, "/chat/completions", content)
        pieces = response.pieces() if isinstance(response, Response) else response.aiter_raw()
        done = False
        rest = b""
        try:
            async for piece in pieces:
                lines = (
                    (rest + piece).splitlines(keepends=True)
                    if rest
                    else piece.splitlines(keepends=True)
                )
                rest = lines.pop() if lines and not lines[-1].endswith((b"\n", b"\r")) else b""
                if len(rest) > line_cap:
                    raise UpstreamError(
                        502, f"the upstream sent a stream line over {line_cap} bytes; refused"
                    )
                for raw in lines:
                    if not raw.startswith(b"data:"):
                        continue
                    payload = raw[5:].strip()
                    if payload == b"[DONE]":
                        done = True
                        break
                    try:
                        event = json.loads(payload)
                    except ValueError:
                        raise UpstreamError(
                            502, "the upstream sent an event that is not JSON"
                        ) from None
                    if isinstance(event, dict) and "error" in event and not event.get("choices"):
                        raise UpstreamError(502, _error_message(502, payload))
                    yield event
                if done:
                    break
            if not done:
                raise UpstreamError(None, "the stream ended without [DONE]")
            await _drain(pieces)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(None, f"timed out mid-stream: {exc}") from None
        except httpx.HTTPError as exc:
            raise UpstreamError(None, f"the stream was cut: {exc}") from None
        except UpstreamTimeout as exc:
            raise UpstreamTimeout(None, f"timed out mid-stream: {exc}") from None
        finally:
            if isinstance(response, Response):
                response.aclose_now()
            else:
                await response.aclose()

    async def close(self) -> None:
        await self.pool.close()
        clients, self._proxied = list(self._proxied.values()), {}
        for client in clients:
            await client.aclose()
        if self._tls is not None and not self._tls.done():
            await asyncio.gather(self._tls, return_exceptions=True)
