"""One HTTP/1.1 connection on a socket: framing by h11, limits and timing by us.

h11 parses each request (request line, header syntax, `Content-Length` digits only,
conflicting lengths, `Host`, chunked framing); on top of it this module refuses what
h11 would tolerate (obs-fold, bare LF line ends, a repeated `Content-Length`, both
`Content-Length` and `Transfer-Encoding`). Responses are written here, byte for byte
as clients already know them.

The timeouts are for reading a request, never for answering it: a new connection has
`header_timeout_s` to send a head, a started head must be complete within it, a body
within `body_timeout_s`, and a connection idle between requests is closed after
`idle_timeout_s`. While a handler runs (a long poll, a streamed reply) no read timer
runs; the connection still watches its reader, and a client that is gone (EOF with the
socket hung up, not a mere half-close) cancels a handler whose route says it only
waits (`cancel_on_disconnect`) and any streamed response at once. A response that
stalls (the client stops reading) for `send_timeout_s` aborts the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from random import random
from time import perf_counter
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlsplit

import h11

from legion.api.framing import (
    LINGER_BYTES,
    LINGER_S,
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    PIPELINE_BYTES,
    error_response,
    hung_up,
    reason,
    strict_head_problem,
)
from legion.api.httptypes import Request, Response, StreamResponse
from legion.errors import LegionError

if TYPE_CHECKING:
    from legion.api.serving import Serving

log = logging.getLogger("legion.http")

IDLE, HEAD, BODY, QUEUED, HANDLING, CLOSED = range(6)
# Heads h11 accepted, kept per socket (`Serving.heads`) so the same bytes again (an agent's
# poll, a write to the same key) skip the parser: h11 parses each head on a fresh
# connection, so its verdict is a function of the bytes alone. Only small heads (bytes and
# header lines) without body framing of h11's (chunked) or an Expect; at most MEMO_HEADS
# per socket, the oldest dropped first (about 200 kB per socket at most).
MEMO_HEADS = 64
MEMO_HEAD_BYTES = 1024
MEMO_HEAD_LINES = 16
CORK_BYTES = 65536  # a streamed response's chunks held for one write at most this long


@dataclass(frozen=True, slots=True)
class ParsedHead:
    """What a request head h11 accepted says (each request copies the dicts)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    http10: bool
    close: bool  # `Connection: close`
    chunked: bool
    declared: int  # Content-Length (0 when chunked)
    expect_100: bool
    memo: bool  # may be reused for the same bytes (no h11 state needed after the head)

    @classmethod
    def of(cls, event: h11.Request, expect_100: bool) -> ParsedHead:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers}
        target = event.target.decode("latin-1")
        if target.startswith("/"):  # origin-form: the path is all before ? or #
            path, _, rest = target.partition("?")
            path, query_text = path.partition("#")[0], rest.partition("#")[0]
        else:  # absolute-form (http://legion/v1/...) or *
            split = urlsplit(target)
            path, query_text = split.path, split.query
        query = dict(parse_qsl(query_text)) if query_text else {}
        close = False
        if "connection" in headers:
            tokens = {t.strip() for t in headers["connection"].lower().split(",")}
            close = "close" in tokens
        chunked = headers.get("transfer-encoding") == "chunked"
        return cls(
            method=event.method.decode("latin-1"),
            path=path,
            query=query,
            headers=headers,
            http10=event.http_version != b"1.1",
            close=close,
            chunked=chunked,
            declared=0 if chunked else int(headers.get("content-length", "0")),
            expect_100=expect_100,
            memo="transfer-encoding" not in headers and "expect" not in headers,
        )


class Connection(asyncio.BufferedProtocol):
    """Serves the requests of one accepted connection, one at a time, in order."""

    def __init__(self, serving: Serving) -> None:
        self.serving = serving
        self.limits = serving.limits
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.state = IDLE
        # Bytes read and not yet consumed are buf[pos:] (pipelined requests are parsed in
        # place: no copy of the rest per request); `scanned` is how far a head was sought.
        self.buf = bytearray()
        self.pos = 0
        self.scanned = 0
        self.timer: asyncio.TimerHandle | None = None
        self.timer_kind = ""  # what the deadline is for ("": nothing)
        self.deadline = 0.0
        self.parser: h11.Connection | None = None
        self.request: Request | None = None
        self.body: list[bytes] = []
        self.body_len = 0
        self.remaining = 0
        self.chunked = False
        self.reserved = 0
        self.keep_alive = True
        self.http10 = False
        self.task: asyncio.Task[None] | None = None
        self.cancellable = False  # the current phase stops when the client goes
        self.held = 0  # bytes of a made answer waiting for its fsync (`_run`)
        self.gone = False
        self.half_closed = False
        self.reading_paused = False
        self.deferred = False  # a complete head waits for the socket's parse budget
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.fresh = True  # no request yet on this connection
        self.lingering = 0  # bytes still to drop after a refusal, before the close

    # --- asyncio.Protocol -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.serving.opened(self)
        self._arm(self.limits.header_timeout_s, "header")

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.serving.server.scratch

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self.serving.server.scratch[:nbytes]))

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state >= QUEUED:
            if state == CLOSED:
                self.lingering -= len(data)
                if self.lingering < 0 and self.transport is not None:
                    self.transport.close()
                return
            self.buf += data
            self._maybe_pause()
            return
        if state == BODY:
            if self.parser is None:
                self._feed_sized(data)
            else:
                self._feed_body(data)
        else:
            if state == IDLE:
                self.state = HEAD
            self.buf += data
            self._try_head()
            self._maybe_pause()
        self._arm_for_state()

    def _maybe_pause(self) -> None:
        """Stop reading while more than a head and a read-ahead wait unparsed."""
        if not self.reading_paused and len(self.buf) - self.pos > PIPELINE_BYTES:
            self.reading_paused = True
            self._transport().pause_reading()

    def _maybe_resume(self) -> None:
        """Read again once what waits unparsed is below the read-ahead limit."""
        if self.reading_paused and len(self.buf) - self.pos <= PIPELINE_BYTES:
            self.reading_paused = False
            self._transport().resume_reading()

    def _arm_for_state(self) -> None:
        if self.state == HEAD:
            if self.timer_kind != "header":
                self._arm(self.limits.header_timeout_s, "header")
        elif self.state == BODY and self.timer_kind != "body":
            self._arm(self.limits.body_timeout_s, "body")

    def eof_received(self) -> bool:
        if self.state in (QUEUED, HANDLING) and not hung_up(self._transport()):
            # Half-closed: the client will read the answer; no keep-alive after it.
            self.half_closed = True
            self.keep_alive = False
            return True
        self._peer_gone()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._peer_gone()
        if self.state != HANDLING:
            self._release()
        self.state = CLOSED if self.state != HANDLING else self.state
        self._cancel_timer()
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("the client went away"))
        self.serving.closed(self)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def abort(self) -> None:
        """Drop the connection from the host's side (its socket is being closed)."""
        self._peer_gone()
        if self.transport is not None:
            self.transport.abort()

    # --- reading a request ------------------------------------------------------------

    def _transport(self) -> asyncio.Transport:
        assert self.transport is not None
        return self.transport

    def _try_head(self, admitted: bool = False) -> None:
        """Parse the next head if it is complete (`admitted`: the parse budget said yes)."""
        buf, pos = self.buf, self.pos
        end = buf.find(b"\r\n\r\n", max(pos, self.scanned - 3))
        if end < 0:
            if buf.find(b"\n\n", max(pos, self.scanned - 1)) >= 0:
                self._refuse(
                    400, "malformed_request", "malformed HTTP request: line ends must be CRLF"
                )
            elif len(buf) - pos > MAX_HEAD_BYTES:
                self._refuse(431, "head_too_large", "request head too large")
            else:
                self.scanned = len(buf)
            return
        if end + 4 - pos > MAX_HEAD_BYTES:
            self._refuse(431, "head_too_large", "request head too large")
            return
        if buf.count(b"\r\n", pos, end) > MAX_HEADERS:
            self._refuse(431, "head_too_large", f"more than {MAX_HEADERS} header lines")
            return
        if not admitted and not self.serving.may_parse(self):
            # This socket has used its share of parsing time: read nothing more from
            # this connection; the socket parses its waiting heads in turn, later.
            if not self.reading_paused:
                self.reading_paused = True
                self._transport().pause_reading()
            self.deferred = True
            return
        head = bytes(buf[pos : end + 4])
        self.pos = self.scanned = end + 4
        heads = self.serving.heads
        known = heads.get(head)
        if known is not None:  # byte for byte a head h11 accepted on this socket
            self._start_request(None, known)
            return
        problem = strict_head_problem(head)
        if problem is not None:
            self._refuse(400, "malformed_request", f"malformed HTTP request: {problem}")
            return
        parser = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        started = perf_counter()
        parser.receive_data(head)
        try:
            event = parser.next_event()
        except h11.RemoteProtocolError as exc:
            self._protocol_error(exc)
            return
        finally:
            self.serving.parsed(perf_counter() - started)
        if not isinstance(event, h11.Request):  # pragma: no cover - a full head is a Request
            self._refuse(400, "malformed_request", "malformed HTTP request")
            return
        parsed = ParsedHead.of(event, parser.they_are_waiting_for_100_continue)
        if parsed.memo and len(head) <= MEMO_HEAD_BYTES and len(parsed.headers) <= MEMO_HEAD_LINES:
            if len(heads) >= MEMO_HEADS:
                del heads[next(iter(heads))]  # the oldest
            heads[head] = parsed
        self._start_request(parser, parsed)

    def parse_now(self) -> None:
        """The socket's parse budget admits this connection's waiting head."""
        self.deferred = False
        if self.state != HEAD or self.gone:
            return
        self._try_head(admitted=True)
        self._maybe_resume()
        self._arm_for_state()

    def _take_rest(self) -> bytes:
        """What is buffered beyond the head, handed over whole (the buffer is emptied)."""
        data = bytes(self.buf[self.pos :])
        self.buf.clear()
        self.pos = self.scanned = 0
        return data

    def _start_request(self, parser: h11.Connection | None, head: ParsedHead) -> None:
        """Begin reading the request `head` describes (`parser`: the h11 connection that
        parsed it, None for a head known from before: one with no body framing of h11's
        to follow, as `ParsedHead.memo` says)."""
        headers = dict(head.headers)
        self.http10 = head.http10
        self.keep_alive = not head.http10 and not self.half_closed and not head.close
        # Methods are case-sensitive (RFC 9110 9.1): `get` is not GET, so it gets 405.
        self.request = Request(head.method, head.path, dict(head.query), headers, b"")
        self.chunked = head.chunked
        declared = head.declared
        server = self.serving.server
        if declared > server.max_body_bytes:
            self._refuse(
                413,
                "body_too_large",
                f"body is {declared} bytes; the limit is {server.max_body_bytes}",
                limit=server.max_body_bytes,
            )
            return
        if declared and not self.serving.reserve(declared):
            self._refuse_busy()
            return
        self.reserved = declared
        self.body = []
        self.body_len = 0
        self.state = BODY
        buffered = len(self.buf) - self.pos
        if head.expect_100 and not buffered and (declared or self.chunked):
            self._transport().write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if self.chunked:
            assert parser is not None  # a chunked head is never memoised
            self.parser = parser  # h11 decodes the chunks
            self._feed_body(self._take_rest())
            return
        self.parser = None  # a sized body is just the next `declared` bytes
        if buffered >= declared:
            if declared:
                self.body.append(bytes(self.buf[self.pos : self.pos + declared]))
                self.body_len = declared
                self.pos += declared
            self.remaining = 0
            self._complete()
        else:
            self.remaining = declared
            self._feed_sized(self._take_rest())

    def _feed_sized(self, data: bytes) -> None:
        """More of a sized body (nothing else is buffered while one is being read)."""
        need = self.remaining
        if len(data) < need:
            if data:
                self.body.append(data)
                self.body_len += len(data)
                self.remaining -= len(data)
            return
        if need:
            self.body.append(data[:need])
            self.body_len += need
        if len(data) > need:
            self.buf += memoryview(data)[need:]
        self.remaining = 0
        self._complete()

    def _feed_body(self, data: bytes) -> None:
        parser = self.parser
        assert parser is not None
        if data:
            parser.receive_data(data)
        server = self.serving.server
        while True:
            try:
                event = parser.next_event()
            except h11.RemoteProtocolError as exc:
                self._protocol_error(exc)
                return
            kind = type(event)
            if kind is h11.Data:
                chunk = event.data  # type: ignore[union-attr]
                self.body_len += len(chunk)
                if self.chunked:
                    if self.body_len > server.max_body_bytes:
                        self._refuse(
                            413,
                            "body_too_large",
                            f"body is over {server.max_body_bytes} bytes, the limit",
                            limit=server.max_body_bytes,
                        )
                        return
                    if not self.serving.reserve(len(chunk)):
                        self._refuse_busy()
                        return
                    self.reserved += len(chunk)
                self.body.append(chunk)
            elif kind is h11.EndOfMessage:
                leftover, _ = parser.trailing_data
                self.parser = None
                self.buf += leftover
                self._complete()
                return
            else:  # NEED_DATA
                return

    def _complete(self) -> None:
        """The request is in: queue it for its turn; what follows (pipelined) stays."""
        if self.pos >= len(self.buf):
            self.buf.clear()
            self.pos = self.scanned = 0
        elif self.pos > 65536:  # compact now and then, not per request
            del self.buf[: self.pos]
            self.pos = self.scanned = 0
        self._disarm()
        self.state = QUEUED
        assert self.request is not None
        body = self.body
        self.request.body = body[0] if len(body) == 1 and type(body[0]) is bytes else b"".join(body)
        self.body = []
        self.serving.admit(self._start)

    def _start(self) -> bool:
        if self.state != QUEUED:
            return False  # the client went away while it waited for its turn
        self.state = HANDLING
        self.fresh = False
        self.task = self.loop.create_task(self._run())
        self.serving.server.tasks.add(self.task)
        return True

    def _protocol_error(self, exc: h11.RemoteProtocolError) -> None:
        status = exc.error_status_hint
        if status == 431:
            self._refuse(431, "head_too_large", "request head too large")
        elif status == 501:
            self._refuse(501, "not_implemented", f"malformed HTTP request: {exc}")
        else:
            self._refuse(400, "malformed_request", f"malformed HTTP request: {exc}")

    def _refuse(self, status: int, code: str, message: str, **detail: Any) -> None:
        """Answer an unreadable or unacceptable request and close the connection."""
        self.serving.note("protocol_error", status=status, code=code)
        refusal = LegionError(message, code=code, status=status, **detail)
        self._answer_and_close(error_response(refusal))

    def _refuse_busy(self) -> None:
        from legion.api.limits import Busy

        cap = self.serving.inflight_cap
        self.serving.note("body_in_flight", cap=cap)
        self._answer_and_close(
            error_response(
                Busy(
                    f"{self.serving.listener.principal} has {cap} bytes of request bodies in "
                    "flight, its limit; retry when some are answered, or the operator can "
                    "raise [limits] max_body_bytes_in_flight",
                    limit=cap,
                )
            )
        )

    def _answer_and_close(self, response: Response) -> None:
        self.keep_alive = False
        self.state = CLOSED
        self._release()
        self._disarm()
        transport = self._transport()
        if not transport.is_closing():
            head = self._head_bytes(response, len(response.body))
            head_only = self.request is not None and self.request.method == "HEAD"
            transport.write(head if head_only else head + response.body)
            # Lingering close: stop writing, then read and drop what the client is still
            # sending (briefly, boundedly), so it reads the refusal instead of a reset.
            if transport.can_write_eof():
                transport.write_eof()
                self.lingering = LINGER_BYTES
                self._arm(LINGER_S, "linger")
            else:
                transport.close()

    # --- timers -----------------------------------------------------------------------

    # One deadline per connection, and at most one timer: arming is a float store (no
    # timer per request); the timer, when it fires early, re-arms for what is left.

    def _arm(self, delay: float, kind: str) -> None:
        # Up to a quarter more, at random: connections a flood opened together then time
        # out spread over time, not all in one turn of the loop.
        self.deadline = self.loop.time() + delay * (1.0 + 0.25 * random())
        self.timer_kind = kind
        timer = self.timer
        if timer is not None and timer.when() > self.deadline:
            timer.cancel()  # it would fire too late for this deadline
            timer = None
        if timer is None:
            self.timer = self.loop.call_at(self.deadline, self._tick)

    def _disarm(self) -> None:
        self.timer_kind = ""

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.timer_kind = ""

    def _tick(self) -> None:
        self.timer = None
        kind = self.timer_kind
        if not kind:
            return
        if self.loop.time() < self.deadline:
            self.timer = self.loop.call_at(self.deadline, self._tick)
            return
        self.timer_kind = ""
        self._timed_out(kind)

    def _timed_out(self, kind: str) -> None:
        transport = self._transport()
        if kind == "linger":
            transport.close()
            return
        if self.state in (QUEUED, HANDLING, CLOSED) or transport.is_closing():
            return
        if kind == "idle" or (self.state == IDLE and len(self.buf) == self.pos):
            if kind != "idle" and self.fresh:
                self.serving.note("header_timeout", sent=0)
            self.state = CLOSED
            self._release()
            transport.close()
            return
        limit = self.limits.header_timeout_s if kind == "header" else self.limits.body_timeout_s
        self.serving.note(f"{kind}_timeout", sent=len(self.buf) - self.pos + self.body_len)
        self._answer_and_close(
            error_response(
                LegionError(
                    f"the request {kind} did not arrive within {limit:g} s",
                    code="request_timeout",
                    status=408,
                )
            )
        )

    # --- answering --------------------------------------------------------------------

    async def _run(self) -> None:
        serving = self.serving
        request = self.request
        assert request is not None
        server = serving.server
        undelivered: list[Callable[[], None]] = []
        delivered = False
        try:
            try:
                if not serving.drained.is_set():
                    # This socket's answers pile up unread: nothing more of it runs (it
                    # keeps its turn slot meanwhile) until they drain.
                    self.cancellable = True
                    serving.waiting_for_drain += 1
                    try:
                        await serving.drained.wait()
                    finally:
                        serving.waiting_for_drain -= 1
                        self.cancellable = False
            finally:
                serving.began()  # the first step of this request: the next may start
            response = await server.dispatch(
                self.serving.listener,
                request,
                conn=self,
                undelivered=undelivered,
                wait_durable=False,
            )
            # While it waits for the fsync covering it, a made answer is held here: it counts
            # against the socket's bytes in flight, so more requests do not pile up answers.
            # It stays counted until its write has been handed to the transport (`_respond`).
            self.held = len(response.body) if isinstance(response, Response) else 0
            if self.held:
                serving.sending(self.held, unread=False)
            response = await server.made_durable(response)
            self._release()
            self.cancellable = False
            delivered = await self._respond(request, response)
        except ConnectionError:
            self.gone = True
        except asyncio.CancelledError:
            if not self.gone:
                raise  # the host is closing
        except Exception:
            # A stream's producer failed after its headers went out: the client sees the
            # stream cut (no final chunk), never a clean end.
            log.exception("a streamed response to %s failed", self.serving.listener.principal)
            self.gone = True
            self._transport().abort()
        finally:
            self._unhold()
            if not delivered:
                for undo in undelivered:
                    try:
                        undo()
                    except Exception:
                        log.exception("taking back an undelivered response failed")
            self._release()
            self.cancellable = False
            self.task = None
            server.tasks.discard(asyncio.current_task())
            self._next()

    def _unhold(self) -> None:
        """The made answer no longer waits here (written, or dropped)."""
        if self.held:
            self.serving.sent(self.held)
            self.held = 0

    def _next(self) -> None:
        """After an answer: serve the next request, wait for one, or close."""
        transport = self._transport()
        if self.gone or not self.keep_alive or transport.is_closing():
            self.state = CLOSED
            if not transport.is_closing():
                transport.close()
            return
        self.state = IDLE
        if self.pos < len(self.buf):
            self.state = HEAD
            self._try_head()
            if not self.deferred:
                self._maybe_resume()
            if self.state == HEAD:
                self._arm(self.limits.header_timeout_s, "header")
            elif self.state == BODY:
                self._arm(self.limits.body_timeout_s, "body")
        else:
            self.buf.clear()
            self.pos = self.scanned = 0
            self._maybe_resume()
            self._arm(self.limits.idle_timeout_s, "idle")

    def _release(self) -> None:
        if self.reserved:
            self.serving.unreserve(self.reserved)
            self.reserved = 0

    def _peer_gone(self) -> None:
        if self.gone:
            return
        self.gone = True
        task = self.task
        if task is not None and self.cancellable and not task.done():
            task.cancel()
        if self.state == QUEUED:
            self.state = CLOSED
            self._release()

    def _head_bytes(self, response: Response | StreamResponse, length: int | None) -> bytes:
        conn = "keep-alive" if self.keep_alive else "close"
        extra = "".join(f"{k}: {v}\r\n" for k, v in getattr(response, "headers", ()))
        if length is None:
            framing = "" if self.http10 else "transfer-encoding: chunked\r\n"
        else:
            framing = f"content-length: {length}\r\n"
        return (
            f"HTTP/1.1 {response.status} {reason(response.status)}\r\ncontent-type: "
            f"{response.content_type}\r\n{framing}{extra}connection: {conn}\r\n\r\n"
        ).encode()

    async def _drain(self) -> None:
        if self.gone:
            raise ConnectionResetError("the client went away")
        if not self.write_paused:
            return
        waiter = self.loop.create_future()
        self.drain_waiter = waiter
        try:
            async with asyncio.timeout(self.limits.send_timeout_s):
                await waiter
        except TimeoutError:
            self.serving.note("send_timeout", limit_s=self.limits.send_timeout_s)
            self.gone = True
            self._transport().abort()
            raise ConnectionResetError("the client stopped reading") from None
        finally:
            self.drain_waiter = None

    async def _respond(self, request: Request, response: Response | StreamResponse) -> bool:
        """Write the answer; False when it never reached the client (it had gone)."""
        server = self.serving.server
        transport = self._transport()
        head_only = request.method == "HEAD"
        if isinstance(response, Response):
            if server.redact is not None:
                response.body = server.redact(response.body)
            if self.http10 or self.half_closed:
                self.keep_alive = False
            if self.gone or transport.is_closing():
                return False
            data = self._head_bytes(response, len(response.body))
            out = data if head_only else data + response.body
            transport.write(out)
            if transport.is_closing():
                return False  # the write failed: the client had already gone
            if self.write_paused:
                # The answer sits in our buffer until the client reads it: it counts
                # against the socket's bytes in flight meanwhile.
                self.serving.sending(len(out))
                self._unhold()
                try:
                    await self._drain()
                finally:
                    self.serving.sent(len(out))
            return True
        return await self._stream(response, head_only)

    async def _stream(self, response: StreamResponse, head_only: bool) -> bool:
        server = self.serving.server
        transport = self._transport()
        chunks = response.chunks
        redact = server.redact
        started = False
        framed = not self.http10
        if self.http10:
            self.keep_alive = False  # no chunked framing in HTTP/1.0: the end is the close
        self.cancellable = True  # our own writing: stop it the moment the client goes
        # Chunks the producer yields in one step of its task (an upstream read that held
        # several deltas) go out as one HTTP chunk in one write, at the end of that step:
        # one send and one wake-up of the client per batch instead of per delta.
        corked: list[bytes] = []
        corked_bytes = 0
        flushing: asyncio.Handle | None = None

        def flush(tail: bytes = b"") -> None:
            nonlocal corked_bytes, flushing
            flushing = None
            if corked:
                data = corked[0] if len(corked) == 1 else b"".join(corked)
                corked.clear()
                corked_bytes = 0
                if not transport.is_closing():
                    transport.write(
                        b"%x\r\n%s\r\n%s" % (len(data), data, tail) if framed else data + tail
                    )
                    return
            if tail and not transport.is_closing():
                transport.write(tail)

        try:
            # Inside the try: a client gone before the headers still runs the producer's
            # cleanup (settling an LLM reservation, closing the upstream, an event feed).
            if self.gone or transport.is_closing():
                raise ConnectionResetError("the client went away")
            transport.write(self._head_bytes(response, None))
            await self._drain()
            if head_only:
                return True
            started = True
            async for chunk in chunks:
                if chunk:
                    if redact is not None:
                        chunk = redact(chunk)
                        redact = server.redact_again
                    corked.append(chunk)
                    corked_bytes += len(chunk)
                    if corked_bytes >= CORK_BYTES:
                        flush()
                    elif flushing is None:
                        flushing = self.loop.call_soon(flush)
                    await self._drain()
        finally:
            if flushing is not None:
                flushing.cancel()
            flush()  # what the producer yielded before it failed still goes out
            self.cancellable = False
            # Run the producer's cleanup now (e.g. settle an aborted LLM stream), not at GC.
            if not started and response.on_abandon is not None:
                await response.on_abandon()
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
        flush(b"0\r\n\r\n" if framed else b"")
        await self._drain()
        return True
