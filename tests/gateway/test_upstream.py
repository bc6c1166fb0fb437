"""The direct path's own HTTP/1.1 client against a real loopback server that lies: stalls,
endless lines, closes, compression bombs; and its fleet-wide pool's reuse (issue 10)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from legion.config import ModelConfig
from legion.gateway.llm import upstream
from legion.gateway.llm.passthrough import Passthrough
from legion.gateway.llm.upstream import Pool, UpstreamError, UpstreamTimeout

pytestmark = pytest.mark.anyio

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Upstream:
    """A loopback server that answers each request with `handler`; counts connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                await self.handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[Upstream]:
    up = Upstream(handler)
    up.server = await asyncio.start_server(up._serve, "127.0.0.1", 0)
    try:
        yield up
    finally:
        up.server.close()
        await up.server.wait_closed()


def no_tls() -> Awaitable[ssl.SSLContext]:
    raise AssertionError("a plain-http upstream never asks for a TLS context")


def sse(*events: bytes, close: bool = False) -> bytes:
    body = b"".join(b"data: " + e + b"\n\n" for e in events)
    conn = b"connection: close\r\n" if close else b""
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        + conn
        + b"content-length: %d\r\n\r\n" % len(body)
        + body
    )


def model(url: str, timeout_s: float = 5.0) -> ModelConfig:
    return ModelConfig(model="openai/x", api_base=url, timeout_s=timeout_s)


async def collect(passthrough: Passthrough, cfg: ModelConfig) -> list[dict[str, object]]:
    return [e async for e in passthrough.stream("alice", cfg, "k", b"{}", 256)]


async def test_issue_10_sequential_calls_of_many_agents_reuse_one_connection() -> None:
    """issue 10: the pool is the fleet's: calls one after the other, from different agents,
    go over one kept-alive connection; an answer with `connection: close` is not reused."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(sse(b'{"choices":[]}', b"[DONE]"))
        await writer.drain()

    async with serving(answer) as up:
        passthrough = Passthrough()
        passthrough.pool._tls = no_tls
        for agent in ("a", "b", "c", "d"):
            events = [e async for e in passthrough.stream(agent, model(up.url), "k", b"{}", 256)]
            assert events == [{"choices": []}]
        assert up.connections == 1
        assert passthrough.pool.stats() == {"idle": 1, "busy": 0, "agents_holding": 0}
        await passthrough.close()

    async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(sse(b"[DONE]", close=True))
        await writer.drain()
        writer.close()

    async with serving(closing) as up:
        passthrough = Passthrough()
        for _ in range(3):
            assert await collect(passthrough, model(up.url)) == []
        assert up.connections == 3
        await passthrough.close()


async def test_issue_10_a_stalling_upstream_times_out_with_the_models_timeout() -> None:
    """issue 10: headers, one event, then nothing: the wait for data ends after the model's
    timeout_s with a timeout (the classifier's kind), and the slot is given back."""

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        event = b'data: {"choices":[]}\n\n'
        writer.write(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n" % (len(event), event)
        )
        await writer.drain()
        await reader.read()  # nothing more, until the client gives up

    async with serving(stall) as up:
        passthrough = Passthrough()
        seen: list[object] = []
        with pytest.raises(UpstreamTimeout):
            async with asyncio.timeout(10):
                async for event in passthrough.stream("alice", model(up.url, 0.5), "k", b"{}", 256):
                    seen.append(event)
        assert seen == [{"choices": []}]
        assert passthrough.pool.stats() == {"idle": 0, "busy": 0, "agents_holding": 0}
        await passthrough.close()


async def test_issue_10_a_lying_upstream_gets_a_typed_error_not_a_hang_or_a_blowup() -> None:
    """issue 10: an endless line, a gzip bomb, a close mid-body, a non-JSON event: each is
    an UpstreamError (no memory blow-up, nothing half-parsed relayed), the pool left clean."""
    cases: dict[str, bytes] = {
        "endless line": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        + b"".join(b"10000\r\n" + b"x" * 65536 + b"\r\n" for _ in range(20)),
        "gzip bomb": b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n",
        "cut body": b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\ndata: {",
        "not json": sse(b"{oops", b"[DONE]"),
        "brotli": b"HTTP/1.1 200 OK\r\ncontent-encoding: br\r\ncontent-length: 0\r\n\r\n",
    }
    bomb = gzip.compress(b"\n" * (64 * 1024 * 1024))
    for name, reply in cases.items():

        async def lie(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, reply: bytes = reply
        ) -> None:
            if b"%d" in reply:
                reply = reply % len(bomb) + bomb
            writer.write(reply)
            await writer.drain()
            writer.close()

        async with serving(lie) as up:
            passthrough = Passthrough()
            with pytest.raises(UpstreamError) as caught:
                async with asyncio.timeout(20):
                    await collect(passthrough, model(up.url))
            assert not isinstance(caught.value, UpstreamTimeout), name
            assert passthrough.pool.stats()["busy"] == 0, name
            await passthrough.close()


async def test_issue_10_an_agent_holds_at_most_its_share_of_upstream_connections() -> None:
    """issue 10: one agent's concurrent calls beyond upstream.PER_AGENT wait for a slot;
    another agent's call is not held up by them."""
    release = asyncio.Event()
    arrived = 0

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal arrived
        arrived += 1
        await release.wait()
        writer.write(sse(b"[DONE]"))
        await writer.drain()

    async with serving(slow) as up:
        pool = Pool(no_tls)

        async def call(agent: str, pool: Pool = pool, url: str = up.url) -> None:
            response = await pool.post(agent, url, "/x", [], b"{}", 5.0)
            await response.read(1 << 20)
            response.aclose_now()

        hog = [asyncio.create_task(call("hog")) for _ in range(upstream.PER_AGENT + 4)]
        async with asyncio.timeout(10):
            while arrived < upstream.PER_AGENT:
                await asyncio.sleep(0.01)
        other = asyncio.create_task(call("other"))
        async with asyncio.timeout(10):
            while arrived < upstream.PER_AGENT + 1:
                await asyncio.sleep(0.01)
        assert arrived == upstream.PER_AGENT + 1  # the hog's extra four wait; "other" came in
        release.set()
        async with asyncio.timeout(10):
            await asyncio.gather(*hog, other)
        assert pool.stats()["busy"] == 0 and pool.stats()["agents_holding"] == 0
        await pool.close()
