"""HTTP/1.1 framing details of the socket server: limits, refusals, status lines.

What h11 would tolerate and we refuse (`strict_head_problem`), typed error responses,
and the kernel's view of whether a peer hung up entirely.
"""

from __future__ import annotations

import asyncio
import select
from functools import cache
from http import HTTPStatus

from legion.api.httptypes import Response
from legion.errors import LegionError

MAX_HEAD_BYTES = 32 * 1024
# Header lines a request may have (h11 parses each; thousands would cost milliseconds).
MAX_HEADERS = 100
# Bytes of a next (pipelined) request kept while one is being answered; beyond, the
# connection stops reading until the answer is out.
PIPELINE_BYTES = MAX_HEAD_BYTES
# Most bytes one read takes from a socket (into the server's one scratch buffer), so what
# a connection holds is bounded by its head, its read-ahead and its counted body bytes.
READ_BYTES = 64 * 1024
# After a refusal: how long, and how many bytes, the host reads and drops before closing.
LINGER_S = 2.0
LINGER_BYTES = 1024 * 1024


@cache
def reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def error_response(exc: LegionError) -> Response:
    headers = getattr(exc, "http_headers", None)
    return Response(
        exc.status,
        exc.body().model_dump_json().encode(),
        headers=headers() if callable(headers) else [],
    )


def strict_head_problem(head: bytes) -> str | None:
    """What h11 would tolerate in a request head and we refuse (None: nothing)."""
    if head.count(b"\n") != head.count(b"\r\n") or head.count(b"\r") != head.count(b"\r\n"):
        return "line ends must be CRLF"
    if b"\n " in head or b"\n\t" in head:
        return "obs-fold (a header line that starts with whitespace) is not accepted"
    low = head.lower()
    lengths = low.count(b"\ncontent-length:")
    if lengths > 1:
        return "more than one Content-Length header"
    if lengths:
        start = low.index(b"\ncontent-length:") + 16
        if b"," in low[start : low.index(b"\r\n", start)]:
            return "Content-Length must be one number"
        if b"\ntransfer-encoding:" in low:
            return "both Content-Length and Transfer-Encoding are set; send one"
    return None


def hung_up(transport: asyncio.BaseTransport) -> bool:
    """Whether the peer closed its end entirely (POLLHUP), not just its writing half."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return True
    try:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLHUP)
        return any(ev & select.POLLHUP for _, ev in poller.poll(0))
    except (OSError, ValueError):
        return True
