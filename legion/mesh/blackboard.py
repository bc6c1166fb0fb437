"""The blackboard: shared key-value state with versions, TTLs, CAS, claims and watches.

SQLite is the index: a prefix listing is a range scan of the primary key (`key >= prefix
AND key < the prefix's successor`), so it costs the same with a thousand keys or a
million, and the host loads no entry at start. The host is the only writer of host.db,
so the rows it reads or writes stay in a bounded in-memory cache (write-through,
least-recently-used out): a hot key's read never touches SQLite, and a cold one is one
primary-key lookup. Writes commit before they return. Expired entries are invisible to
every read path (get, list, watch) the moment they expire, and are collected from the
database in the background, in batches.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from legion.config import BlackboardConfig
from legion.errors import BadRequest, Conflict, Locked, NotFound, TooLarge
from legion.events import EventBus
from legion.mesh.globs import compile_glob
from legion.store import Store
from legion.wire import rules
from legion.wire.api import BlackboardChange, BlackboardEntry, Claim, WatchResponse
from legion.wire.events import BlackboardChanged, ClaimChanged

# The row cache holds at most this many entries and this many bytes (estimated, `weight`).
CACHE_ROWS = 20_000
CACHE_BYTES = 32 * 1024 * 1024
ROW_OVERHEAD = 200  # bytes counted per cached row besides its value
# The watch history keeps at most [host.blackboard] watch_history changes and this many
# bytes of their values; a watcher further behind gets `reset: true`.
HISTORY_BYTES = 64 * 1024 * 1024
COLLECT_BATCH = 1000  # expired entries deleted per transaction
SCAN_CHUNK = 1000  # rows a listing reads per query
LIST_MAX_ENTRIES = 10_000  # one listing returns at most this many entries ...
LIST_MAX_BYTES = 8 * 1024 * 1024  # ... and about this many bytes of values (`truncated`)
# Keys are ASCII letters, digits, ._:@+=- and '/': a prefix with anything else matches none.
_PREFIX_RE = re.compile(r"[A-Za-z0-9._:@+=/-]*")
_SELECT = "SELECT key, value, version, writer, updated_at, expires_at FROM blackboard"


def weight(text: str) -> int:
    """Bytes a parsed JSON value may take in memory, from its text: its length plus a
    Python object's worth per element and container (`[[],[],...]` parses to 20 times its
    text; this estimate stays above that), so caches are bounded by memory, not by text."""
    return len(text) + 64 * (text.count(",") + text.count("[") + text.count("{"))


def prefix_range(prefix: str) -> tuple[str, str] | None:
    """The half-open key range [low, high) holding every key that starts with `prefix`
    (keys are ASCII, compared bytewise by SQLite and by Python alike); None for ""."""
    if not prefix:
        return None
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


def literal_prefix(pattern: str) -> str:
    """What every key a glob matches starts with: the pattern up to its first wildcard."""
    cuts = [i for i in (pattern.find("*"), pattern.find("?")) if i >= 0]
    return pattern[: min(cuts)] if cuts else pattern


def sql_glob(pattern: str) -> str | None:
    """A SQLite GLOB matching every key `pattern` matches, and maybe more (its `*` and `?`
    cross `/`): a filter SQLite applies in C before a row reaches Python, so a reader whose
    pattern starts with a wildcard (`**/pub`) does not turn every key into a Python row.
    None when the pattern can match no key (`[`, `]`: no key has them; GLOB would read a
    character class)."""
    if "[" in pattern or "]" in pattern:
        return None
    return pattern.replace("**", "*")


def scan_bases(prefix: str, within: list[str] | None) -> list[str]:
    """The prefixes to scan, in key order and disjoint, for keys under `prefix` that start
    with one of `within` (None: any key): a listing reads only the ranges an agent may read."""
    if within is None:
        bases = [prefix]
    else:
        bases = sorted(
            {
                lit if lit.startswith(prefix) else prefix
                for lit in within
                if lit.startswith(prefix) or prefix.startswith(lit)
            }
        )
    out: list[str] = []
    for base in bases:
        if _PREFIX_RE.fullmatch(base) and not (out and base.startswith(out[-1])):
            out.append(base)
    return out


@dataclass(slots=True)
class _Row:
    value: Any
    version: int
    writer: str
    updated_at: float
    expires_at: float | None
    size: int = 0  # estimated bytes in memory (`weight`), for the cache's bound

    def entry(self, key: str) -> BlackboardEntry:
        return BlackboardEntry.model_construct(
            key=key,
            value=self.value,
            version=self.version,
            writer=self.writer,
            updated_at=self.updated_at,
            expires_at=self.expires_at,
        )


@dataclass(slots=True)
class _Scan:
    """What one listing has read so far."""

    bytes: int = 0  # of value text
    truncated: bool = False  # stopped with readable entries left
    more: bool = False  # another query follows the chunk just yielded


@dataclass(slots=True)
class _Change:
    seq: int
    op: str
    key: str
    version: int
    writer: str
    value: Any
    at: float
    expires_at: float | None
    size: int = 0  # the value's weight


class Blackboard:
    def __init__(
        self,
        store: Store,
        config: BlackboardConfig,
        bus: EventBus,
        *,
        clock: Callable[[], float] = time.time,
        cache_rows: int = CACHE_ROWS,
        cache_bytes: int = CACHE_BYTES,
        history_bytes: int = HISTORY_BYTES,
    ) -> None:
        self.store = store
        self.cache_rows = cache_rows
        self.cache_bytes = cache_bytes
        self.history_bytes = history_bytes
        self.config = config
        self.bus = bus
        self.clock = clock
        self._cache: OrderedDict[str, _Row] = OrderedDict()
        self._cache_bytes = 0
        self._claims: dict[str, tuple[str, float]] = {}
        for key, owner, expires_at in store.execute("SELECT key, owner, expires_at FROM claims"):
            self._claims[key] = (owner, expires_at)
        # Watch cursors start from the clock so a cursor from before a restart is
        # recognised as stale (it falls outside the retained window) and resets.
        self._seq = int(clock() * 1_000_000)
        self._history: deque[_Change] = deque()
        self._history_bytes = 0
        self._changed = asyncio.Event()

    # --- validation -----------------------------------------------------------

    def check_key(self, key: str) -> None:
        """The key rule (`legion.wire.rules.key_problem`) with the configured length limit."""
        limit = self.config.max_key_length
        problem = rules.key_problem(key, limit)
        if problem is not None:
            too_long = len(key) > limit
            raise BadRequest(
                problem,
                code="key_too_long" if too_long else "invalid_key",
                **({"limit": limit} if too_long else {}),
            )

    def _encode(self, value: Any) -> str:
        try:
            text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"value is not JSON: {exc}", code="invalid_value") from None
        size = len(text.encode())
        if size > self.config.max_value_bytes:
            raise TooLarge(
                f"value is {size} bytes of JSON; the limit is {self.config.max_value_bytes}",
                code="value_too_large",
                size=size,
                limit=self.config.max_value_bytes,
            )
        return text

    # --- reads ----------------------------------------------------------------

    def _cached(self, key: str, row: _Row) -> None:
        old = self._cache.pop(key, None)
        if old is not None:
            self._cache_bytes -= old.size + ROW_OVERHEAD
        self._cache[key] = row
        self._cache_bytes += row.size + ROW_OVERHEAD
        while len(self._cache) > self.cache_rows or self._cache_bytes > self.cache_bytes:
            _, out = self._cache.popitem(last=False)
            self._cache_bytes -= out.size + ROW_OVERHEAD

    @property
    def cached(self) -> tuple[int, int]:
        """(rows, bytes) in the row cache."""
        return len(self._cache), self._cache_bytes

    def _uncache(self, key: str) -> None:
        old = self._cache.pop(key, None)
        if old is not None:
            self._cache_bytes -= old.size + ROW_OVERHEAD

    def _row(self, key: str) -> _Row | None:
        """The stored row of `key` (expired or not): from the cache, else one lookup."""
        row = self._cache.get(key)
        if row is not None:
            self._cache.move_to_end(key)
            return row
        found: list[tuple[Any, ...]] = self.store.execute(
            "SELECT value, version, writer, updated_at, expires_at FROM blackboard WHERE key = ?",
            (key,),
        ).fetchall()
        if not found:
            return None
        value, version, writer, updated_at, expires_at = found[0]
        row = _Row(json.loads(value), version, writer, updated_at, expires_at, weight(value))
        self._cached(key, row)
        return row

    def _live(self, key: str, now: float) -> _Row | None:
        row = self._row(key)
        if row is None or (row.expires_at is not None and row.expires_at <= now):
            return None
        return row

    def get(self, key: str) -> BlackboardEntry | None:
        row = self._live(key, self.clock())
        return None if row is None else row.entry(key)

    def entries(
        self,
        prefix: str = "",
        readable: Callable[[str], bool] | None = None,
        limit: int = LIST_MAX_ENTRIES,
        within: list[str] | None = None,
        max_bytes: int = LIST_MAX_BYTES,
        globs: list[str] | None = None,
    ) -> list[BlackboardEntry]:
        """Live entries under `prefix`, in key order: range scans of the primary key, only
        of the ranges that start with one of `within` (the literal prefixes of the caller's
        read patterns; None: everything), so a listing costs what the caller may see."""
        parts = self._scan(prefix, readable, limit, within, max_bytes, _Scan(), globs)
        return [e for part in parts for e in part]

    async def list_entries(
        self,
        prefix: str = "",
        readable: Callable[[str], bool] | None = None,
        limit: int = LIST_MAX_ENTRIES,
        within: list[str] | None = None,
        max_bytes: int = LIST_MAX_BYTES,
        globs: list[str] | None = None,
    ) -> tuple[list[BlackboardEntry], bool]:
        """`entries`, letting the event loop run between chunks of `SCAN_CHUNK` rows read (a
        reader whose patterns start with a wildcard scans every key), and whether the
        listing stopped at `limit` entries or `max_bytes` of values with more left."""
        out: list[BlackboardEntry] = []
        scan = _Scan()
        for part in self._scan(prefix, readable, limit, within, max_bytes, scan, globs):
            out += part
            if scan.more:  # a query follows: let the loop run first (not after the last)
                await asyncio.sleep(0)
        return out, scan.truncated

    def _scan(
        self,
        prefix: str,
        readable: Callable[[str], bool] | None,
        limit: int,
        within: list[str] | None,
        max_bytes: int,
        scan: _Scan,
        globs: list[str] | None = None,
    ) -> Iterator[list[BlackboardEntry]]:
        """Chunks of the listing, each one short query (keyset pagination: no cursor stays
        open between chunks, so the caller may yield to other writers in between). Stops
        (`scan.truncated`) at `limit` entries or once their values pass `max_bytes`: a
        listing's memory and the time to encode it stay bounded however big the values.
        `globs` (`sql_glob` of the caller's read patterns) filter rows inside SQLite."""
        if globs is not None and not globs:
            return  # nothing is readable
        # A window of SCAN_CHUNK keys of the range at a time (keyset pagination: the
        # window's last key, found in the primary key alone), then the rows of that window
        # that match, filtered inside SQLite: no query reads more than one window, however
        # few of its keys the caller may read, and only matches become Python rows.
        match = " AND (" + " OR ".join(["key GLOB ?"] * len(globs)) + ")" if globs else ""
        glob_args = tuple(globs or ())
        now = self.clock()
        found = 0
        bases = scan_bases(prefix, within)
        for n, base in enumerate(bases, start=1):
            span = prefix_range(base)
            low, high = span if span is not None else ("", None)
            first = True
            while True:
                after = " key >= ?" if first else " key > ?"
                upto = " AND key < ?" if high is not None else ""
                bound: tuple[Any, ...] = (low, high) if high is not None else (low,)
                window: list[tuple[Any, ...]] = self.store.execute(
                    f"SELECT MAX(key), COUNT(*) FROM (SELECT key FROM blackboard WHERE{after}"
                    f"{upto} ORDER BY key LIMIT ?)",
                    (*bound, SCAN_CHUNK),
                ).fetchall()
                edge, scanned = window[0] if window else (None, 0)
                if edge is None:
                    break
                cursor = self.store.execute(
                    f"{_SELECT} WHERE{after} AND key <= ? AND (expires_at IS NULL OR"
                    f" expires_at > ?){match} ORDER BY key",
                    (low, edge, now, *glob_args),
                )
                part: list[BlackboardEntry] = []
                try:
                    for key, value, version, writer, updated_at, expires_at in cursor:
                        if readable is not None and not readable(key):
                            continue
                        full = scan.bytes + len(value) > max_bytes and (found or part)
                        if found + len(part) >= limit or full:
                            scan.truncated, scan.more = True, False
                            yield part
                            return
                        scan.bytes += len(value)
                        row = self._cache.get(key)
                        if row is None:
                            row = _Row(json.loads(value), version, writer, updated_at, expires_at)
                        part.append(row.entry(key))
                finally:
                    cursor.close()
                found += len(part)
                scan.more = scanned == SCAN_CHUNK or n < len(bases)
                yield part
                if scanned < SCAN_CHUNK:
                    break
                low, first = str(edge), False

    # --- writes ---------------------------------------------------------------

    def _check_claim(self, key: str, writer: str, now: float) -> None:
        claim = self._claims.get(key)
        if claim is not None and claim[0] != writer and claim[1] > now:
            raise Locked(
                f"key {key!r} is claimed by {claim[0]} until {claim[1]:.0f}; wait for its "
                "release or expiry",
                code="claimed",
                owner=claim[0],
                expires_at=claim[1],
            )

    def put(
        self,
        key: str,
        value: Any,
        writer: str,
        *,
        ttl_s: float | None = None,
        expected_version: int | None = None,
    ) -> BlackboardEntry:
        """Write a value; with `expected_version`, only if the version matches (0: absent)."""
        self.check_key(key)
        text = self._encode(value)
        now = self.clock()
        self._check_claim(key, writer, now)
        current = self._live(key, now)
        current_version = current.version if current else 0
        if expected_version is not None and expected_version != current_version:
            raise Conflict(
                f"key {key!r} is at version {current_version}, not {expected_version}; "
                "re-read it and retry",
                code="version_conflict",
                expected=expected_version,
                current=current_version,
            )
        version = current_version + 1
        expires_at = now + ttl_s if ttl_s is not None else None
        with self.store.tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO blackboard(key, value, version, writer, updated_at,"
                " expires_at) VALUES (?,?,?,?,?,?)",
                (key, text, version, writer, now, expires_at),
            )
        row = _Row(json.loads(text), version, writer, now, expires_at, weight(text))
        self._cached(key, row)
        self._record("put", key, version, writer, row.value, now, expires_at, row.size)
        return row.entry(key)

    def delete(self, key: str, writer: str) -> bool:
        self.check_key(key)
        now = self.clock()
        self._check_claim(key, writer, now)
        current = self._live(key, now)
        with self.store.tx() as conn:
            conn.execute("DELETE FROM blackboard WHERE key = ?", (key,))
        self._uncache(key)
        if current is None:
            return False
        self._record("delete", key, current.version, writer, None, now, None)
        return True

    # --- claims ---------------------------------------------------------------

    def claim(self, key: str, owner: str, ttl_s: float) -> Claim:
        """Take (or renew) the claim on `key`; refused while another owner holds it."""
        self.check_key(key)
        now = self.clock()
        self._check_claim(key, owner, now)
        expires_at = now + ttl_s
        with self.store.tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO claims(key, owner, expires_at) VALUES (?,?,?)",
                (key, owner, expires_at),
            )
        self._claims[key] = (owner, expires_at)
        self.bus.publish(ClaimChanged(at=now, key=key, owner=owner, op="claimed"))
        return Claim(key=key, owner=owner, expires_at=expires_at)

    def release(self, key: str, owner: str) -> bool:
        self.check_key(key)
        now = self.clock()
        claim = self._claims.get(key)
        if claim is None or claim[1] <= now:
            return False
        if claim[0] != owner:
            raise Locked(
                f"key {key!r} is claimed by {claim[0]}, not by {owner}",
                code="claimed",
                owner=claim[0],
                expires_at=claim[1],
            )
        with self.store.tx() as conn:
            conn.execute("DELETE FROM claims WHERE key = ?", (key,))
        del self._claims[key]
        self.bus.publish(ClaimChanged(at=now, key=key, owner=owner, op="released"))
        return True

    def claim_of(self, key: str) -> Claim | None:
        claim = self._claims.get(key)
        if claim is None or claim[1] <= self.clock():
            return None
        return Claim(key=key, owner=claim[0], expires_at=claim[1])

    # --- expiry ---------------------------------------------------------------

    def collect(self, batch: int = COLLECT_BATCH) -> int:
        """Delete up to `batch` expired entries, and lapsed claims, in one short transaction
        (the index on expires_at finds them); returns how many entries were collected. The
        host calls it again at once while it returns a full batch."""
        now = self.clock()
        expired: list[tuple[Any, ...]] = self.store.execute(
            "SELECT key, version, writer FROM blackboard "
            "WHERE expires_at IS NOT NULL AND expires_at <= ? LIMIT ?",
            (now, batch),
        ).fetchall()
        lapsed = [k for k, (_, exp) in self._claims.items() if exp <= now]
        if not expired and not lapsed:
            return 0
        with self.store.tx() as conn:
            conn.executemany(
                "DELETE FROM blackboard WHERE key = ? AND expires_at <= ?",
                [(key, now) for key, _, _ in expired],
            )
            conn.execute("DELETE FROM claims WHERE expires_at <= ?", (now,))
        for key, version, writer in expired:
            self._uncache(key)
            self._record("expired", key, version, writer, None, now, None)
        for key in lapsed:
            owner, _ = self._claims.pop(key)
            self.bus.publish(ClaimChanged(at=now, key=key, owner=owner, op="expired"))
        return len(expired)

    # --- watch ----------------------------------------------------------------

    def _record(
        self,
        op: str,
        key: str,
        version: int,
        writer: str,
        value: Any,
        at: float,
        expires_at: float | None,
        size: int = 0,
    ) -> None:
        self._seq += 1
        change = _Change(self._seq, op, key, version, writer, value, at, expires_at, size)
        self._history.append(change)
        self._history_bytes += size + ROW_OVERHEAD
        history = self._history
        while len(history) > self.config.watch_history or (
            self._history_bytes > self.history_bytes and len(history) > 1
        ):
            self._history_bytes -= history.popleft().size + ROW_OVERHEAD
        self.bus.publish(
            BlackboardChanged(
                at=at,
                seq=self._seq,
                op=op,
                key=key,
                version=version,
                writer=writer,
            )
        )
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    @property
    def cursor(self) -> int:
        return self._seq

    def _changes_since(
        self, pattern: str, cursor: int, readable: Callable[[str], bool] | None
    ) -> tuple[list[BlackboardChange], bool]:
        oldest = self._history[0].seq if self._history else self._seq + 1
        if cursor > self._seq or cursor < oldest - 1:
            return [], True
        regex = compile_glob(pattern)
        now = self.clock()
        out: list[BlackboardChange] = []
        for change in reversed(self._history):
            if change.seq <= cursor:
                break
            if regex.fullmatch(change.key) is None:
                continue
            if readable is not None and not readable(change.key):
                continue
            value = change.value
            if change.op == "put" and change.expires_at is not None and change.expires_at <= now:
                continue  # expired values are never handed out
            out.append(
                BlackboardChange(
                    seq=change.seq,
                    op=change.op,
                    key=change.key,
                    version=change.version,
                    writer=change.writer,
                    value=value,
                    at=change.at,
                )
            )
        out.reverse()
        return out, False

    async def watch(
        self,
        pattern: str,
        cursor: int | None,
        wait_s: float,
        readable: Callable[[str], bool] | None = None,
    ) -> WatchResponse:
        """Changes to keys matching `pattern` after `cursor`, waiting up to `wait_s` for one."""
        if cursor is None:
            return WatchResponse(cursor=self._seq, changes=[])
        deadline = time.monotonic() + wait_s
        while True:
            changes, reset = self._changes_since(pattern, cursor, readable)
            if reset:
                return WatchResponse(cursor=self._seq, changes=[], reset=True)
            if changes:
                return WatchResponse(cursor=changes[-1].seq, changes=changes)
            cursor = self._seq  # nothing relevant so far: skip what was seen
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return WatchResponse(cursor=cursor, changes=[])
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return WatchResponse(cursor=self._seq, changes=[])

    def require(self, key: str) -> BlackboardEntry:
        """The API read path: a malformed key is a 400, an absent or expired one a 404."""
        self.check_key(key)
        entry = self.get(key)
        if entry is None:
            raise NotFound(f"no blackboard key {key!r}", code="key_not_found", key=key)
        return entry
