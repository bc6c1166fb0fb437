"""One served socket: its listener (principal, limits) and what it holds right now.

Connections, bytes of request bodies in flight, bytes of answers left unread, token
buckets and the turn gate: all per socket, so one agent's use never counts against
another's.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legion.api.limits import ParseBudget, Rate, Rates, TurnGate
from legion.config import SocketLimits

if TYPE_CHECKING:
    from legion.api.conn import Connection, ParsedHead
    from legion.api.http import HttpServer, Router


@dataclass
class Listener:
    """One socket and the principal every request on it acts as."""

    path: Path
    principal: str
    router: Router
    mode: int = 0o600
    owner: tuple[int, int] | None = None  # hand the socket's folder to this uid:gid
    limits: SocketLimits = field(default_factory=SocketLimits)
    # Token buckets per route class (None: unmetered, as on the control socket).
    rates: dict[str, Rate] | None = None
    # Requests that may start their handler per event-loop turn (None: no gate).
    per_turn: int | None = None
    # The walk to the socket starts here with no-follow opens; every folder below it is
    # untrusted (default: the socket's own folder is trusted, only its name is not).
    trusted_root: Path | None = None
    # Whether its connections count against the host-wide descriptor budget (agent
    # sockets do; the control socket keeps its own cap, so the operator always gets in).
    shared_budget: bool = True


class Serving:
    """A listening socket and everything it holds: connections, bytes, buckets, turns."""

    def __init__(
        self, server: HttpServer, listener: Listener, sock: socket.socket, inode: int
    ) -> None:
        self.server = server
        self.listener = listener
        self.limits = listener.limits
        self.sock = sock
        self.inode = inode
        path = listener.path
        self.root = listener.trusted_root or path.parent
        self.components = path.parent.relative_to(self.root).parts
        self.conns: set[Connection] = set()
        self.inflight = 0
        # Bytes of answers written but not yet read by the client; past the cap, the
        # socket's next requests wait (`drained`) before their handlers run.
        self.outbound = 0
        self.drained = asyncio.Event()
        self.drained.set()
        self.waiting_for_drain = 0
        self.unread_noted = False  # this pile-up of unread answers was reported
        self.inflight_cap = max(listener.limits.max_body_bytes_in_flight, server.max_body_bytes)
        self.rates = Rates(listener.rates) if listener.rates else None
        self.gate = TurnGate(listener.per_turn, server.gates) if listener.per_turn else None
        self.parsing = ParseBudget() if listener.per_turn else None
        self.parse_queue: deque[Connection] = deque()
        # Heads h11 accepted on this socket, by their bytes (`legion.api.conn.MEMO_HEADS`):
        # per socket, so whether a head is known says nothing of another agent's requests.
        self.heads: dict[bytes, ParsedHead] = {}
        self.parse_timer: asyncio.TimerHandle | None = None
        self.slot = asyncio.Event()
        self.pending = 0  # accepted, transport not yet made
        self.accepting: asyncio.Task[None] | None = None

    def opened(self, conn: Connection) -> None:
        self.pending -= 1
        self.conns.add(conn)
        if self.listener.shared_budget:
            self.server.shared_conns += 1

    def closed(self, conn: Connection) -> None:
        if conn not in self.conns:
            return
        self.conns.discard(conn)
        self.slot.set()
        if self.listener.shared_budget:
            self.server.shared_conns -= 1
            self.server.shared_slot_freed()
        self.server.fd_freed.set()

    def may_parse(self, conn: Connection) -> bool:
        """Whether `conn` may parse a head now; if not it waits its turn (`parse_now`)."""
        if self.parsing is None:
            return True
        if not self.parse_queue:
            wait = self.parsing.wait()
            if not wait:
                return True
            self.parse_timer = asyncio.get_running_loop().call_later(wait, self._parse_next)
        self.parse_queue.append(conn)
        return False

    def parsed(self, seconds: float) -> None:
        if self.parsing is not None:
            self.parsing.spent(seconds)

    def _parse_next(self) -> None:
        """Let waiting heads be parsed, oldest first, while the budget allows."""
        self.parse_timer = None
        assert self.parsing is not None
        while self.parse_queue:
            wait = self.parsing.wait()
            if wait:
                loop = asyncio.get_running_loop()
                self.parse_timer = loop.call_later(wait, self._parse_next)
                return
            self.parse_queue.popleft().parse_now()

    def admit(self, start: Callable[[], bool]) -> None:
        if self.gate is None:
            start()
        else:
            self.gate.admit(start)

    def sending(self, count: int, *, unread: bool = True) -> None:
        """`count` bytes of an answer wait in a buffer for the client to read them (or,
        not `unread`, for the fsync that lets it go out: held, not a client's doing)."""
        self.outbound += count
        if self.outbound > self.inflight_cap:
            self.drained.clear()
            if unread and not self.unread_noted:  # once per pile-up
                self.unread_noted = True
                self.note("answers_unread", bytes=self.outbound, cap=self.inflight_cap)

    def sent(self, count: int) -> None:
        self.outbound -= count
        if self.outbound <= self.inflight_cap:
            self.drained.set()
            self.unread_noted = False

    def began(self) -> None:
        if self.gate is not None:
            self.gate.began()

    def reserve(self, count: int) -> bool:
        if self.inflight + count > self.inflight_cap:
            return False
        self.inflight += count
        return True

    def unreserve(self, count: int) -> None:
        self.inflight -= count

    def note(self, kind: str, **fields: Any) -> None:
        self.server.throttle.note(self.listener.principal, kind, **fields)

    def full(self) -> bool:
        if len(self.conns) + self.pending >= self.limits.max_connections:
            return True
        server = self.server
        return self.listener.shared_budget and server.shared_conns >= server.max_shared_conns
