"""What one caller may take of the host's HTTP server: rates, turns, bytes, log lines.

* `Rates`: a token bucket per route class (each route names its class in the route
  table); an empty bucket is a 429 with `Retry-After`, before any parsing of the body.
* `TurnGate`: at most `per_turn` requests of one socket start their handler in one turn
  of the event loop; the rest wait for a later turn. A socket alone gets the whole
  host; several busy sockets take turns, so none waits behind another's backlog.
* `Throttle`: a limit hit a thousand times a second is one log line (and one audit
  record) per interval with the count, never a line per hit.
* `raise_open_files_limit`: the host holds one descriptor per connection; the soft limit
  is raised to the hard one so the per-socket caps, not the kernel, decide.
"""

from __future__ import annotations

import asyncio
import math
import resource
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from legion.errors import LegionError

# Descriptors kept for everything that is not an agent connection (databases, the
# provider and egress pools, Docker, log files, the control socket's own cap).
RESERVED_FDS = 256
OPEN_FILES_CEILING = 1 << 20
# A socket is alone (its requests are not gated) once no other has started one for this.
ALONE_AFTER_S = 0.1
# The parse budget refills at least at this fraction of the wall clock (see ParseBudget).
IDLE_FLOOR = 0.2


class RateLimited(LegionError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float, **detail: Any) -> None:
        super().__init__(message, retry_after_s=round(retry_after_s, 3), **detail)
        self.retry_after_s = retry_after_s

    def http_headers(self) -> list[tuple[str, str]]:
        # RFC 9110: delay-seconds, a whole number; round up so a client never comes early.
        return [("retry-after", str(max(1, math.ceil(self.retry_after_s))))]


class Busy(LegionError):
    """Refused for now (e.g. too many request bytes in flight); retry shortly."""

    status = 503
    code = "busy"

    def http_headers(self) -> list[tuple[str, str]]:
        return [("retry-after", "1")]


@dataclass(frozen=True)
class Rate:
    per_s: float
    burst: int


class TokenBucket:
    __slots__ = ("burst", "per_s", "stamp", "tokens")

    def __init__(self, rate: Rate, now: float) -> None:
        self.per_s = rate.per_s
        self.burst = float(rate.burst)
        self.tokens = float(rate.burst)
        self.stamp = now

    def take(self, now: float) -> float:
        """Take one token: 0.0 if there was one, else the seconds until there is one."""
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.per_s)
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / self.per_s


class Rates:
    """One socket's buckets, one per route class."""

    def __init__(
        self, rates: dict[str, Rate], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rates = rates
        self.clock = clock
        now = clock()
        self.buckets = {name: TokenBucket(rate, now) for name, rate in rates.items()}

    def check(self, principal: str, bucket: str) -> None:
        found = self.buckets.get(bucket)
        if found is None:
            return
        wait = found.take(self.clock())
        if wait:
            rate = self.rates[bucket]
            raise RateLimited(
                f"{principal} is over its {bucket!r} request rate ({rate.per_s:g}/s, bursts "
                f"of {rate.burst}); retry in {wait:.2f} s. The operator can raise "
                f"[limits.rates.{bucket}] in legion.toml",
                retry_after_s=wait,
                bucket=bucket,
                per_s=rate.per_s,
                burst=rate.burst,
            )


class GateBoard:
    """Which sockets started requests lately (shared by the gates of one server): the two
    most recent distinct starters and when, enough to tell whether a socket is alone."""

    __slots__ = ("last", "last_at", "prev", "prev_at")

    def __init__(self) -> None:
        self.last: object = None
        self.last_at = -1e9
        self.prev: object = None
        self.prev_at = -1e9

    def started(self, gate: object, now: float) -> None:
        if self.last is not gate:
            self.prev, self.prev_at = self.last, self.last_at
            self.last = gate
        self.last_at = now

    def others_since(self, gate: object, since: float) -> bool:
        """Whether a socket other than `gate` started a request since `since`."""
        if self.last is not gate:
            return self.last is not None and self.last_at >= since
        return self.prev is not None and self.prev_at >= since


class TurnGate:
    """At most `per_turn` of one socket's requests start their handlers per loop turn
    while other sockets are active (another one started a request in the last
    `ALONE_AFTER_S`); a socket alone on the host starts all of its requests at once.

    A started request's task runs its first step in the next turn of the event loop;
    `began()`, called from that first step, lets the next waiting request start (its own
    first step comes a turn later). So no more than `per_turn` first steps of one socket
    are in the loop's ready queue together when sockets compete, without a callback of
    its own per request; a burst from one agent on an otherwise quiet host goes at once.
    """

    def __init__(self, per_turn: int, board: GateBoard | None = None) -> None:
        self.per_turn = per_turn
        self.board = board or GateBoard()
        self.starting = 0
        self.waiting: deque[Callable[[], bool]] = deque()

    def _alone(self, now: float) -> bool:
        return not self.board.others_since(self, now - ALONE_AFTER_S)

    def alone(self) -> bool:
        """Whether no other socket has started a request lately."""
        return self._alone(time.monotonic())

    def _start(self, start: Callable[[], bool], now: float) -> bool:
        self.starting += 1
        if start():
            self.board.started(self, now)
            return True
        self.starting -= 1
        return False

    def admit(self, start: Callable[[], bool]) -> None:
        """`start()` starts the request (True) or finds it gone (False)."""
        now = time.monotonic()
        if not self.waiting and (self.starting < self.per_turn or self._alone(now)):
            self._start(start, now)
            return
        self.waiting.append(start)

    def began(self) -> None:
        self.starting -= 1
        if not self.waiting:
            return
        now = time.monotonic()
        alone = self._alone(now)
        while self.waiting and (self.starting < self.per_turn or alone):
            if self._start(self.waiting.popleft(), now) and not alone:
                return


class ParseBudget:
    """Time one socket may spend in the HTTP parser: `share` of the host's CPU time, in
    bursts of up to `burst_s` (2 ms: what one turn of the loop may spend on one socket's
    heads). Past it, its next head is parsed a little later (its connection reads nothing
    meanwhile), so no agent's request heads take the loop from the others.

    The budget refills with the process's CPU time, not the wall clock: a host short of
    CPU (a busy machine) gives a flood a share of what it gets, not of the wall clock. A
    fifth of the wall clock is the floor, so a head waiting while the host idles is not
    kept waiting for CPU time nobody spends."""

    __slots__ = ("burst_s", "cpu", "share", "tokens", "wall")

    def __init__(self, share: float = 0.25, burst_s: float = 0.002) -> None:
        self.share = share
        self.burst_s = burst_s
        self.tokens = burst_s
        self.cpu = time.process_time()
        self.wall = time.monotonic()

    def wait(self) -> float:
        """0.0 when a head may be parsed now, else (about) the seconds until it may."""
        cpu, wall = time.process_time(), time.monotonic()
        earned = max(cpu - self.cpu, (wall - self.wall) * IDLE_FLOOR) * self.share
        self.tokens = min(self.burst_s, self.tokens + earned)
        self.cpu, self.wall = cpu, wall
        return 0.0 if self.tokens > 0 else -self.tokens / self.share + 0.001

    def spent(self, seconds: float) -> None:
        self.tokens -= seconds


Emit = Callable[[str, str, int, dict[str, Any]], None]


@dataclass
class _Window:
    ends: float = 0.0
    count: int = 0
    fields: dict[str, Any] | None = None
    timer: asyncio.TimerHandle | None = None


class Throttle:
    """`emit(principal, kind, count, fields)` at most once per interval per (principal, kind).

    The first hit is emitted at once (count 1); later hits within the interval are
    counted and emitted together when it ends, so a flood costs one line per interval.
    """

    def __init__(
        self, interval_s: float, emit: Emit, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval_s = interval_s
        self.emit = emit
        self.clock = clock
        self._windows: dict[tuple[str, str], _Window] = {}

    def note(self, principal: str, kind: str, **fields: Any) -> None:
        key = (principal, kind)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window()
        now = self.clock()
        if now >= window.ends and window.count == 0:
            window.ends = now + self.interval_s
            self.emit(principal, kind, 1, fields)
            return
        window.count += 1
        window.fields = fields
        if window.timer is None:
            delay = max(0.0, window.ends - now)
            window.timer = asyncio.get_running_loop().call_later(delay, self._flush, key)

    def _flush(self, key: tuple[str, str]) -> None:
        window = self._windows[key]
        window.timer = None
        if window.count:
            count, fields = window.count, window.fields or {}
            window.count, window.fields = 0, None
            window.ends = self.clock() + self.interval_s
            self.emit(key[0], key[1], count, fields)

    def close(self) -> None:
        for window in self._windows.values():
            if window.timer is not None:
                window.timer.cancel()
                window.timer = None


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (capped); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = OPEN_FILES_CEILING if hard == resource.RLIM_INFINITY else hard
    target = min(target, OPEN_FILES_CEILING)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return OPEN_FILES_CEILING if soft == resource.RLIM_INFINITY else soft
