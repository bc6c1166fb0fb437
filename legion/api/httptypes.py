"""What a handler receives and returns: requests, responses, streamed responses, calls.

These live apart from the server (`legion.api.http`) and the connection protocol
(`legion.api.conn`) so both can use them; `legion.api.http` re-exports them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    # Extra response headers (lower-case names), e.g. ("allow", "GET, HEAD").
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class StreamResponse:
    """A chunked response; each item of `chunks` is written and flushed as it comes."""

    chunks: AsyncIterator[bytes]
    status: int = 200
    content_type: str = "application/x-ndjson"
    # Runs when the client is gone before the first chunk was asked for: the producer's
    # own `finally` never ran then (an async generator that never started has nothing to
    # clean up), so whoever holds a resource for it (a reservation, a subscription) frees it.
    on_abandon: Callable[[], Awaitable[None]] | None = None


@dataclass
class Call:
    """One request as a handler sees it: who (from the socket), what, validated body."""

    principal: str
    request: Request
    params: dict[str, str]
    body: Any
    # Run (once, synchronously) when the response never reached the client: it had gone
    # before the answer could be written. A handler that handed something out registers
    # how to take it back (an inbox poll puts its items back at once).
    undelivered: list[Callable[[], None]] = field(default_factory=list)

    def if_undelivered(self, undo: Callable[[], None]) -> None:
        self.undelivered.append(undo)
