"""Blackboard writes and reads in-host vs raw SQLite.

Writes: `Blackboard.put` through the real `Store` (validation, JSON, claims, version,
one committed transaction, the in-memory row, the change history and the event bus)
vs raw apsw on the same schema with the same WAL journal and `synchronous` level:
`INSERT OR REPLACE` of the equivalent row (value pre-encoded) and a commit per write.
Run at durability "full" and "normal". Target: in-host >= 0.5x raw throughput.

Reads: `Blackboard.get` (the write-through cache) vs a raw primary-key SELECT plus
json.loads. Target: in-host >= 100k reads/s.

Prefix listing (issue 10): `Blackboard.entries(prefix)` with exactly one match, on boards
of 1k and 100k keys, against the scan-and-sort it replaced (every key tested against the
prefix, the matches sorted), run on the same keys in the same rounds. Target: one match at
100k keys <= 2x one match at 1k keys. Also shown: opening a board of 100k keys (the host
loaded every entry at start before; now none).

Rounds of baseline and legion alternate; each figure is the median of the rounds.
"""

from __future__ import annotations

import cProfile
import json
import os
import statistics
import sys
import time
from pathlib import Path

import apsw

from bench._common import Report, heading, line, run_alone, short_home

WRITE_TARGET = 0.5
READ_TARGET = 100_000.0
START_RATIO_TARGET = 1.5  # host start with 100k keys vs with none
START_MIB_TARGET = 8.0  # and the memory they may add
LIST_RATIO_TARGET = 2.0
BOARD_SIZES = (1_000, 100_000)
KEYS = 1000
WRITER = "bench"


def _value(i: int) -> dict[str, object]:
    return {"n": i, "status": "running", "note": "a short status line from an agent"}


def _keys() -> list[str]:
    return [f"bench/agents/a{i % 50}/k{i}" for i in range(KEYS)]


def _raw_connection(path: Path, durability: str) -> apsw.Connection:
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute(f"PRAGMA synchronous={durability.upper()}")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS blackboard (
            key TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            version INTEGER NOT NULL,
            writer TEXT NOT NULL,
            updated_at REAL NOT NULL,
            expires_at REAL
        );
        CREATE INDEX IF NOT EXISTS blackboard_expires ON blackboard(expires_at)
            WHERE expires_at IS NOT NULL;
        """
    )
    return conn


def _raw_writes(conn: apsw.Connection, start: int, count: int, seconds: float) -> float:
    keys = _keys()
    texts = [
        json.dumps(_value(i), separators=(",", ":"), ensure_ascii=False)
        for i in range(start, start + count)
    ]
    deadline = time.perf_counter() + seconds
    t0 = time.perf_counter()
    done = 0
    for i in range(count):
        n = start + i
        with conn:
            conn.execute(
                "INSERT OR REPLACE INTO blackboard(key, value, version, writer, updated_at,"
                " expires_at) VALUES (?,?,?,?,?,?)",
                (keys[n % KEYS], texts[i], n // KEYS + 1, WRITER, time.time(), None),
            )
        done += 1
        if (done & 63) == 0 and time.perf_counter() > deadline:
            break
    return done / (time.perf_counter() - t0)


def _legion_writes(bb: object, start: int, count: int, seconds: float) -> float:
    keys = _keys()
    values = [_value(i) for i in range(start, start + count)]
    put = bb.put  # type: ignore[attr-defined]
    deadline = time.perf_counter() + seconds
    t0 = time.perf_counter()
    done = 0
    for i in range(count):
        put(keys[(start + i) % KEYS], values[i], WRITER)
        done += 1
        if (done & 63) == 0 and time.perf_counter() > deadline:
            break
    return done / (time.perf_counter() - t0)


def _raw_reads(conn: apsw.Connection, count: int, seconds: float) -> float:
    keys = _keys()
    deadline = time.perf_counter() + seconds
    t0 = time.perf_counter()
    done = 0
    for i in range(count):
        row = conn.execute(
            "SELECT value, version, writer, updated_at, expires_at FROM blackboard WHERE key = ?",
            (keys[i % KEYS],),
        ).fetchone()
        json.loads(row[0])
        done += 1
        if (done & 1023) == 0 and time.perf_counter() > deadline:
            break
    return done / (time.perf_counter() - t0)


def _legion_reads(bb: object, count: int, seconds: float) -> float:
    keys = _keys()
    get = bb.get  # type: ignore[attr-defined]
    deadline = time.perf_counter() + seconds
    t0 = time.perf_counter()
    done = 0
    for i in range(count):
        if get(keys[i % KEYS]) is None:
            raise RuntimeError("a written key is missing")
        done += 1
        if (done & 1023) == 0 and time.perf_counter() > deadline:
            break
    return done / (time.perf_counter() - t0)


def _open_legion(home: Path, durability: str) -> tuple[object, object]:
    from legion.config import BlackboardConfig
    from legion.events import EventBus
    from legion.mesh.blackboard import Blackboard
    from legion.store import Store

    store = Store(home / f"host-{durability}.db", durability=durability)
    bb = Blackboard(store, BlackboardConfig(), EventBus())
    return store, bb


def _fill(path: Path, size: int) -> None:
    """A host.db holding `size` blackboard keys, written straight to the table."""
    from legion.store import Store

    store = Store(path, durability="normal")
    value = json.dumps(_value(0), separators=(",", ":"))
    with store.tx() as conn:
        conn.executemany(
            "INSERT INTO blackboard(key, value, version, writer, updated_at, expires_at)"
            " VALUES (?,?,?,?,?,?)",
            (
                (f"bench/agents/a{i % 50}/k{i:06d}", value, 1, WRITER, 0.0, None)
                for i in range(size)
            ),
        )
    store.close()


def _timed(fn: object, count: int) -> float:
    """Seconds per call of `fn()`, over `count` calls."""
    call = fn  # type: ignore[assignment]
    t0 = time.perf_counter()
    for _ in range(count):
        call()  # type: ignore[operator]
    return (time.perf_counter() - t0) / count


def _listing(home: Path, rounds: int, calls: int) -> dict[int, dict[str, list[float]]]:
    from legion.config import BlackboardConfig
    from legion.events import EventBus
    from legion.mesh.blackboard import Blackboard
    from legion.store import Store

    out: dict[int, dict[str, list[float]]] = {}
    boards = {}
    for size in BOARD_SIZES:
        path = home / f"list-{size}.db"
        _fill(path, size)
        store = Store(path, durability="normal")
        t0 = time.perf_counter()
        bb = Blackboard(store, BlackboardConfig(), EventBus())
        opened = time.perf_counter() - t0
        # What the host did before at start, and kept: every row, parsed, in a dict.
        t0 = time.perf_counter()
        rows = {
            key: json.loads(value)
            for key, value in store.execute("SELECT key, value FROM blackboard")
        }
        loaded = time.perf_counter() - t0
        boards[size] = (store, bb, rows)
        out[size] = {"legion": [], "scan": [], "open": [opened], "load_all": [loaded]}
    for _ in range(rounds):
        for size, (_, bb, rows) in boards.items():
            one = f"bench/agents/a7/k{(size // 2) // 50 * 50 + 7:06d}"

            def listed(bb: object = bb, one: str = one) -> None:
                if len(bb.entries(one)) != 1:  # type: ignore[attr-defined]
                    raise RuntimeError(f"expected one match for {one}")

            def scanned(rows: dict[str, object] = rows, one: str = one) -> None:
                if len(sorted(k for k in rows if k.startswith(one))) != 1:
                    raise RuntimeError(f"expected one match for {one}")

            out[size]["legion"].append(_timed(listed, calls))
            out[size]["scan"].append(_timed(scanned, max(1, calls // (size // 1000))))
    for store, _, _ in boards.values():
        store.close()
    return out


HOST_START = """
import asyncio, sys, time
from pathlib import Path
from legion.config import parse_config
from legion.host import Host
from legion.paths import Paths

def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))

async def main() -> None:
    before = rss_kib()
    t0 = time.perf_counter()
    config = parse_config('[runtime]\\nbackend = "none"\\n')
    async with Host.running(config, Paths.resolve(Path(sys.argv[1]))):
        print(time.perf_counter() - t0, rss_kib() - before, rss_kib())

asyncio.run(main())
"""


def _host_start(home: Path, size: int, runs: int) -> tuple[float, float, float]:
    """Median seconds for `Host.running` to start on a host.db holding `size` keys, and the
    process's RSS growth over that start and its RSS after, MiB (a fresh process each,
    after one start that is not counted)."""
    import subprocess

    where = home / f"start-{size}"
    where.mkdir(mode=0o700)
    _fill(where / "host.db", size)
    took, grew, rss = [], [], []
    for i in range(runs + 1):  # the first start makes the vault and the anchor: not counted
        out = subprocess.run(
            [sys.executable, "-c", HOST_START, str(where)],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        ).stdout.split()
        if i == 0:
            continue
        took.append(float(out[0]))
        grew.append(int(out[1]) / 1024)
        rss.append(int(out[2]) / 1024)
    return statistics.median(took), statistics.median(grew), statistics.median(rss)


def run(quick: bool = False, profile: str | None = None) -> Report:
    report = Report("blackboard_store")
    heading("blackboard_store: Blackboard.put/get in-host vs raw SQLite (apsw)")
    rounds = 3 if quick else 5
    per_round = 2000 if quick else 20000
    round_s = 0.5 if quick else 1.5
    with short_home() as home:
        read_rates: dict[str, tuple[float, float]] = {}
        for durability in ("full", "normal"):
            raw = _raw_connection(home / f"raw-{durability}.db", durability)
            store, bb = _open_legion(home, durability)
            # Warm up both (fills the KEYS rows, so later writes are replaces).
            _raw_writes(raw, 0, KEYS, 10.0)
            _legion_writes(bb, 0, KEYS, 10.0)
            raw_rates: list[float] = []
            legion_rates: list[float] = []
            for r in range(rounds):
                start = KEYS + r * per_round
                raw_rates.append(_raw_writes(raw, start, per_round, round_s))
                legion_rates.append(_legion_writes(bb, start, per_round, round_s))
            if profile:
                # A separate pass, so the profiler does not inflate the figures above.
                profiler = cProfile.Profile()
                profiler.enable()
                _legion_writes(bb, KEYS + rounds * per_round, per_round, round_s)
                profiler.disable()
                os.makedirs(profile, exist_ok=True)
                profiler.dump_stats(os.path.join(profile, f"blackboard_put_{durability}.pstats"))
            raw_w = statistics.median(raw_rates)
            leg_w = statistics.median(legion_rates)
            ratio = leg_w / raw_w
            line(
                f"writes, durability={durability!r} (synchronous={durability.upper()}, WAL), "
                f"median of {rounds} rounds:"
            )
            line(
                f"  raw SQLite  {raw_w:10,.0f} writes/s  ({1e6 / raw_w:7.1f} us/write)  "
                f"rounds: {', '.join(f'{x:,.0f}' for x in raw_rates)}"
            )
            line(
                f"  in-host     {leg_w:10,.0f} writes/s  ({1e6 / leg_w:7.1f} us/write)  "
                f"rounds: {', '.join(f'{x:,.0f}' for x in legion_rates)}"
            )
            line(
                f"  ratio in-host/raw = {ratio:.2f}x  "
                f"(legion adds {1e6 / leg_w - 1e6 / raw_w:.1f} us/write)"
            )
            report.check(
                f"write throughput, durability={durability}",
                ratio >= WRITE_TARGET,
                f"{ratio:.2f}x raw (target >= {WRITE_TARGET}x)",
            )
            if durability == "full":
                reads = 200_000 if quick else 1_000_000
                raw_r = statistics.median(_raw_reads(raw, reads, 1.0) for _ in range(rounds))
                leg_r = statistics.median(_legion_reads(bb, reads, 1.0) for _ in range(rounds))
                read_rates[durability] = (raw_r, leg_r)
            store.close()  # type: ignore[attr-defined]
            raw.close()
        raw_r, leg_r = read_rates["full"]
        line(f"reads (median of {rounds} rounds):")
        line(f"  raw SQLite SELECT + json.loads  {raw_r:12,.0f} reads/s")
        line(f"  in-host Blackboard.get          {leg_r:12,.0f} reads/s")
        line(f"  ratio in-host/raw = {leg_r / raw_r:.2f}x")
        report.check(
            "read throughput",
            leg_r >= READ_TARGET,
            f"{leg_r:,.0f} reads/s (target >= {READ_TARGET:,.0f}/s; {leg_r / raw_r:.2f}x raw)",
        )
        listing = _listing(home, rounds, 200 if quick else 2000)
    line(f"prefix listing, one match (median of {rounds} rounds):")
    med: dict[int, dict[str, float]] = {
        size: {k: statistics.median(v) for k, v in res.items()} for size, res in listing.items()
    }
    for size, m in med.items():
        line(
            f"  {size:>7,} keys: entries() {m['legion'] * 1e6:8.1f} us   "
            f"scan+sort (before) {m['scan'] * 1e6:8.1f} us   "
            f"open board {m['open'] * 1e3:6.1f} ms   load every row (before) "
            f"{m['load_all'] * 1e3:7.1f} ms"
        )
    small, large = med[BOARD_SIZES[0]], med[BOARD_SIZES[-1]]
    ratio = large["legion"] / small["legion"]
    line(
        f"  one match at {BOARD_SIZES[-1]:,} / at {BOARD_SIZES[0]:,} keys: {ratio:.2f}x "
        f"(scan+sort: {large['scan'] / small['scan']:.1f}x)"
    )
    report.check(
        f"prefix listing at {BOARD_SIZES[-1]:,} keys vs {BOARD_SIZES[0]:,}",
        ratio <= LIST_RATIO_TARGET,
        f"{ratio:.2f}x (target <= {LIST_RATIO_TARGET}x)",
    )
    with short_home() as home:
        runs = 3 if quick else 5
        line(f"host start (Host.running, no agents), median of {runs} fresh processes:")
        starts = {size: _host_start(home, size, runs) for size in (0, BOARD_SIZES[-1])}
    for size, (took, grew, rss) in starts.items():
        line(
            f"  {size:>7,} keys: {took * 1e3:7.1f} ms to start, RSS +{grew:5.1f} MiB over "
            f"the start ({rss:5.1f} MiB after)"
        )
    empty, full = starts[0], starts[BOARD_SIZES[-1]]
    line(
        f"  {BOARD_SIZES[-1]:,} keys vs none: start {full[0] / empty[0]:.2f}x, "
        f"memory +{full[1] - empty[1]:.1f} MiB"
    )
    report.check(
        f"host start at {BOARD_SIZES[-1]:,} keys vs none",
        full[0] <= START_RATIO_TARGET * empty[0] and full[1] - empty[1] <= START_MIB_TARGET,
        f"{full[0] / empty[0]:.2f}x the time (target <= {START_RATIO_TARGET}x), "
        f"+{full[1] - empty[1]:.1f} MiB (target <= {START_MIB_TARGET} MiB)",
    )
    return report


if __name__ == "__main__":
    sys.exit(run_alone(run, __doc__, "blackboard_store"))
