"""A lean HTTP/1.1 client for the direct path: one pool for the fleet, framing by h11.

The direct path relays an upstream's server-sent events delta by delta. Through httpx each
delta crossed five layers (lines, text, bytes, raw, httpcore's h11 loop), each read its own
anyio timeout scope: most of the host's CPU per streamed delta (see docs/llm.md, "Where
the host's CPU goes"). Here an asyncio protocol buffers what the socket delivers; the
reader feeds all of it to h11 at once and yields every complete `data:` line it holds, so
the deltas of one read cost one wake-up.

Connections are pooled per origin for the whole fleet (a stack of idle ones: taking and
giving back are O(1), whatever the fleet's size), so an agent's first call opens a socket
and builds nothing else; each agent holds at most `PER_AGENT` of them at once. An idle
connection is reused only within `KEEPALIVE_S`, and nothing wakes for idle ones: a stale
one is closed when the stack is next used. TLS uses the one shared context.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

PER_AGENT = 16  # connections one agent may hold upstream at once
KEEPALIVE_S = 5.0  # an idle connection older than this is closed, not reused
MAX_IDLE = 512  # idle connections kept per origin
READ_AHEAD = 262144  # bytes buffered unread before the socket stops being read
MAX_INFLATED = 8 * 1024 * 1024  # what one compressed read may inflate to


class UpstreamError(Exception):
    """An upstream failure, shaped like LiteLLM's so one classifier serves both paths."""

    def __init__(
        self, status_code: int | None, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.headers = dict(headers or {})


class UpstreamTimeout(UpstreamError):
    pass


@dataclass(frozen=True)
class Origin:
    scheme: str
    host: str
    port: int
    base_path: str

    @classmethod
    def parse(cls, url: str) -> Origin:
        split = urlsplit(url)
        scheme = split.scheme.lower()
        if scheme not in ("http", "https") or not split.hostname:
            raise UpstreamError(None, f"api_base {url!r} is not an http(s) URL")
        port = split.port or (443 if scheme == "https" else 80)
        return cls(scheme, split.hostname, port, split.path.rstrip("/"))

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


class _Socket(asyncio.Protocol):
    """What the socket delivered and not yet read, and whether it is gone."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.data = bytearray()
        self.eof = False
        self.lost = False
        self.waiter: asyncio.Future[None] | None = None
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.data += data
        if len(self.data) > READ_AHEAD and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = self.lost = True
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self, timeout_s: float) -> bytes:
        """Everything buffered (waiting up to `timeout_s` for some); b"" at EOF."""
        if not self.data and not self.eof:
            loop = asyncio.get_running_loop()
            self.waiter = loop.create_future()
            timer = loop.call_later(timeout_s, self._wake)
            try:
                await self.waiter
            finally:
                timer.cancel()
                self.waiter = None
            if not self.data and not self.eof:
                raise UpstreamTimeout(None, f"no data from the upstream for {timeout_s:g} s")
        data = bytes(self.data)
        self.data.clear()
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data


class Connection:
    """One HTTP/1.1 connection to an origin, one request at a time."""

    def __init__(self, origin: Origin, sock: _Socket) -> None:
        self.origin = origin
        self.sock = sock
        self.h11 = h11.Connection(h11.CLIENT)
        self.idle_since = 0.0

    def usable(self, now: float) -> bool:
        transport = self.sock.transport
        return (
            transport is not None
            and not transport.is_closing()
            and not self.sock.eof
            and not self.sock.data  # nothing may arrive unasked between requests
            and now - self.idle_since <= KEEPALIVE_S
        )

    def close(self) -> None:
        if self.sock.transport is not None:
            self.sock.transport.close()

    def send(self, path: str, headers: list[tuple[str, str]], body: bytes) -> None:
        o = self.origin
        head = [("Host", o.host_header), *headers, ("Content-Length", str(len(body)))]
        out = self.h11.send(h11.Request(method="POST", target=o.base_path + path, headers=head))
        out = (out or b"") + (self.h11.send(h11.Data(data=body)) or b"") if body else out
        out = (out or b"") + (self.h11.send(h11.EndOfMessage()) or b"")
        assert self.sock.transport is not None
        self.sock.transport.write(out)

    async def next_event(self, timeout_s: float) -> h11.Event:
        while True:
            event = self._parsed()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            self.h11.receive_data(await self.sock.read(timeout_s))  # b"": the end

    def _parsed(self) -> object:
        try:
            return self.h11.next_event()
        except h11.RemoteProtocolError as exc:
            if self.sock.eof:  # like a connection failure (no status): cooldown rules
                raise UpstreamError(None, "the upstream closed the connection early") from None
            raise UpstreamError(502, f"the upstream broke HTTP/1.1 framing: {exc}") from None

    def reusable(self) -> bool:
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE


class Response:
    """An upstream's answer: status, headers, and the body read as it comes."""

    def __init__(
        self,
        conn: Connection,
        head: h11.Response,
        timeout_s: float,
        release: Callable[[bool], None],
    ) -> None:
        self.conn = conn
        self.status_code = head.status_code
        self.headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in head.headers}
        self.timeout_s = timeout_s
        self._release = release
        self._done = False
        self._inflate: zlib._Decompress | None = None
        encoding = self.headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            self._inflate = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib framing
        elif encoding not in ("", "identity"):
            self.aclose_now()
            raise UpstreamError(502, f"the upstream sent content-encoding {encoding!r}")

    async def pieces(self) -> AsyncIterator[bytes]:
        """The body as it arrives: everything one read brought, at once."""
        while not self._done:
            event = await self.conn.next_event(self.timeout_s)
            if type(event) is h11.Data:
                data = bytes(event.data)
                # What else that read brought comes with it, in one piece.
                while True:
                    more = self.conn._parsed()
                    if type(more) is h11.Data:
                        data += more.data
                        continue
                    if type(more) is h11.EndOfMessage:
                        self._finish(True)
                    elif more is not h11.NEED_DATA:
                        raise UpstreamError(502, "the upstream sent an unexpected HTTP event")
                    break
                if self._inflate is not None:
                    data = self._inflate.decompress(data, MAX_INFLATED)
                    if self._inflate.unconsumed_tail:
                        raise UpstreamError(502, "the upstream's compressed body inflates too far")
                if data:
                    yield data
            elif type(event) is h11.EndOfMessage:
                self._finish(True)
            else:
                raise UpstreamError(502, "the upstream sent an unexpected HTTP event")

    async def read(self, limit: int, *, cut: bool = False) -> bytes:
        """The whole body, at most `limit` bytes (`read_capped`)."""
        return await read_capped(self.pieces(), limit, cut=cut)

    def _finish(self, complete: bool) -> None:
        if not self._done:
            self._done = True
            self._release(complete and self.conn.reusable())

    def aclose_now(self) -> None:
        """Give the connection back (reused only when the response was read to its end)."""
        self._finish(False)


class Pool:
    """Connections to every origin, shared by the fleet; at most PER_AGENT per agent."""

    def __init__(self, tls: Callable[[], Awaitable[ssl.SSLContext]]) -> None:
        self._tls = tls
        self._idle: dict[Origin, dict[Connection, None]] = {}
        self._busy: set[Connection] = set()
        self._held: dict[str, int] = {}
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}
        self._closed = False

    def stats(self) -> dict[str, int]:
        idle = sum(len(v) for v in self._idle.values())
        return {"idle": idle, "busy": len(self._busy), "agents_holding": len(self._held)}

    async def _slot(self, agent: str, timeout_s: float) -> None:
        if self._held.get(agent, 0) < PER_AGENT:
            self._held[agent] = self._held.get(agent, 0) + 1
            return
        waiter = asyncio.get_running_loop().create_future()
        queue = self._waiting.setdefault(agent, deque())
        queue.append(waiter)
        try:
            async with asyncio.timeout(timeout_s):
                await waiter  # the slot is handed over by _free_slot
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._free_slot(agent)  # handed over just as we gave up: pass it on
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    queue.remove(waiter)
            raise

    def _free_slot(self, agent: str) -> None:
        queue = self._waiting.get(agent)
        while queue:
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on; the count stays
                return
        self._waiting.pop(agent, None)
        left = self._held.get(agent, 0) - 1
        if left > 0:
            self._held[agent] = left
        else:
            self._held.pop(agent, None)

    async def _connect(self, origin: Origin, timeout_s: float) -> Connection:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn, _ = idle.popitem()  # the most recently used first
            if conn.usable(now):
                return conn
            conn.close()
        loop = asyncio.get_running_loop()
        context = await self._tls() if origin.scheme == "https" else None
        try:
            async with asyncio.timeout(timeout_s):
                _, sock = await loop.create_connection(
                    _Socket,
                    origin.host,
                    origin.port,
                    ssl=context,
                    server_hostname=origin.host if context is not None else None,
                )
        except TimeoutError:
            raise UpstreamTimeout(None, f"timed out connecting to {origin.host_header}") from None
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamError(None, f"connection failed: {exc}") from None
        return Connection(origin, sock)

    def _give_back(self, conn: Connection, reuse: bool) -> None:
        self._busy.discard(conn)
        if not reuse or self._closed:
            conn.close()
            return
        idle = self._idle.setdefault(conn.origin, {})
        if len(idle) >= MAX_IDLE:
            conn.close()
            return
        conn.h11.start_next_cycle()
        conn.idle_since = time.monotonic()
        idle[conn] = None

    async def post(
        self,
        agent: str,
        url: str,
        path: str,
        headers: list[tuple[str, str]],
        body: bytes,
        timeout_s: float,
    ) -> Response:
        """POST `body`; returns once the response head is in (its body is read after)."""
        origin = Origin.parse(url)
        await self._slot(agent, timeout_s)
        conn: Connection | None = None
        released = False

        def release(reuse: bool) -> None:
            nonlocal released
            if not released:
                released = True
                if conn is not None:
                    self._give_back(conn, reuse)
                self._free_slot(agent)

        try:
            conn = await self._connect(origin, timeout_s)
            self._busy.add(conn)
            conn.send(path, headers, body)
            while True:
                event = await conn.next_event(timeout_s)
                if type(event) is h11.Response:
                    return Response(conn, event, timeout_s, release)
                if type(event) is not h11.InformationalResponse:
                    raise UpstreamError(None, "the upstream closed the connection unanswered")
        except BaseException:
            release(False)
            raise

    async def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        for conn in list(self._busy):
            conn.close()
        self._busy.clear()


async def read_capped(pieces: AsyncIterator[bytes], cap: int, *, cut: bool = False) -> bytes:
    """A body read from `pieces`, at most `cap` bytes: beyond it the first `cap` when `cut`
    (an error's text), else UpstreamError; never more than one piece past the cap is held."""
    parts: list[bytes] = []
    size = 0
    async for piece in pieces:
        parts.append(piece)
        size += len(piece)
        if size > cap:
            if cut:
                break
            raise UpstreamError(502, f"the upstream's answer is over {cap} bytes")
    return b"".join(parts)[:cap]
