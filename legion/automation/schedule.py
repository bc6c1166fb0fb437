"""Schedules: 5-field cron expressions (croniter) and intervals (`every 30m`), in a time zone.

A cron expression is matched against the wall clock of the job's time zone; the instant
of each match is then found with zoneinfo, so daylight saving time neither skips nor
doubles a run:

* spring forward (02:00 -> 03:00): a time that does not exist that day (02:30) runs at
  the first instant after the gap (03:00 local); several such times collapse into one run;
* fall back (02:00 -> 01:00): a time that exists twice (01:30) runs once, at its first
  occurrence; the repeated hour is not run again.

Day of month and day of week follow standard cron: when both are restricted, a day that
matches either runs (croniter's `day_or`). Intervals are in absolute time, counted from
the job's anchor (its creation), so a restart never shifts them and DST never touches
them.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from croniter.croniter import CroniterError

from legion.errors import LegionError
from legion.wire import rules

# Looking further than this for the next match means the expression never matches (the
# grammar check finds those first; this is the safety net of the search).
HORIZON_S = rules.SCHEDULE_HORIZON_S


class BadSchedule(LegionError):
    status = 422
    code = "invalid_schedule"


def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name` (one of the host's, `legion.wire.rules.timezones`), or
    BadSchedule saying how to fix it."""
    problem = rules.timezone_problem(name)
    if problem is not None:
        raise BadSchedule(problem, code="invalid_timezone")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadSchedule(f"time zone {name!r} cannot be read", code="invalid_timezone") from None


def host_timezone() -> str:
    """The host's IANA zone name: $TZ, else what /etc/localtime links to, else
    /etc/timezone, else UTC (a fixed offset would get DST wrong, so none is used)."""
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    with contextlib.suppress(OSError):
        target = os.readlink("/etc/localtime")
        if "zoneinfo/" in target:
            candidates.append(target.split("zoneinfo/", 1)[1])
    with contextlib.suppress(OSError, UnicodeDecodeError):
        candidates.append(Path("/etc/timezone").read_text(encoding="utf-8").strip())
    for name in candidates:
        if not name:
            continue
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            continue
        return name
    return "UTC"


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule: `expr` (5-field cron, as croniter reads it) or `every_s` (an
    interval), never both; `never` says why a cron expression can never run, else empty."""

    text: str
    expr: str | None = None
    every_s: int | None = None
    never: str = ""

    @property
    def kind(self) -> str:
        return "cron" if self.expr is not None else "every"

    def next_after(self, after: float, tz: ZoneInfo, anchor: int) -> int:
        """The first run time strictly after `after` (Unix seconds, whole)."""
        if self.every_s is not None:
            if after < anchor:
                return anchor + self.every_s
            steps = int((after - anchor) // self.every_s) + 1
            return anchor + steps * self.every_s
        assert self.expr is not None
        if self.never:
            raise BadSchedule(f"{self.text!r} never runs: {self.never}", code="never_runs")
        return next_cron(self.expr, after, tz)


def _croniter_field(values: frozenset[int], field: int) -> str:
    """One field as croniter reads it: `*` when it covers its whole range, else the values.
    (croniter 7 reads a range `5-5` as `*`, so legion hands it values, never ranges.)"""
    spec = rules.CRON_FIELDS[field]
    whole = set(range(spec.low, 7 if field == 4 else spec.high + 1))
    return "*" if values == whole else ",".join(str(v) for v in sorted(values))


def parse_schedule(text: str, *, min_interval_s: float = 1.0) -> Schedule:
    """`0 9 * * 1-5`, `@daily`, `every 30m`: a Schedule, or BadSchedule saying what is
    wrong. The grammar, and the rule of `min_interval_s`, are `legion.wire.rules`' (the
    OpenAPI document states the same pattern). An expression that never runs (February
    30th) parses, with `never` saying why."""
    try:
        parsed = rules.parse_schedule_text(text, min_interval_s)
    except ValueError as exc:
        raise BadSchedule(str(exc)) from None
    if parsed.every_s is not None:
        return Schedule(parsed.text, every_s=parsed.every_s)
    assert parsed.fields is not None
    expr = " ".join(_croniter_field(values, i) for i, values in enumerate(parsed.fields))
    return Schedule(parsed.text, expr=expr, never=parsed.never)


def _wall(ts: float, tz: ZoneInfo) -> datetime:
    """The naive wall-clock time in `tz` at instant `ts`."""
    return datetime.fromtimestamp(ts, tz).replace(tzinfo=None)


def instant(wall: datetime, tz: ZoneInfo) -> float:
    """The instant a wall-clock time `wall` in `tz` first happens: its first occurrence
    when it happens twice (fall back), the end of the gap when it never happens (spring
    forward)."""
    first = wall.replace(tzinfo=tz, fold=0)
    ts = first.timestamp()
    if _wall(ts, tz) == wall:
        later = wall.replace(tzinfo=tz, fold=1).timestamp()
        return min(ts, later) if _wall(later, tz) == wall else ts
    # In a gap: between the fold=1 reading (before the gap) and the fold=0 one (after),
    # find the first instant whose wall time is at or past `wall`.
    lo, hi = sorted((wall.replace(tzinfo=tz, fold=1).timestamp(), ts))
    while hi - lo > 0.5:
        mid = (lo + hi) / 2
        if _wall(mid, tz) >= wall:
            hi = mid
        else:
            lo = mid
    return float(round(hi))


_ITERATORS: dict[str, croniter] = {}


def _iterator(expr: str) -> croniter:
    """A croniter for `expr`, parsed once (parsing costs three times a step). Used on the
    event loop's thread only, where nothing interleaves between set_current and get_next."""
    it = _ITERATORS.get(expr)
    if it is None:
        it = croniter(expr, datetime(2000, 1, 1), day_or=True)
        if len(_ITERATORS) >= 4096:
            _ITERATORS.clear()
        _ITERATORS[expr] = it
    return it


def next_cron(expr: str, after: float, tz: ZoneInfo) -> int:
    """The first instant strictly after `after` at which `expr` matches in `tz`."""
    # From the wall time of `after`: a candidate before it either happened already or (in
    # a repeated hour) has its first occurrence before `after`; both are skipped below.
    start = _wall(after, tz)
    try:
        it = _iterator(expr)
        it.set_current(start, force=True)
        for _ in range(10_000):
            wall: datetime = it.get_next(datetime)
            ts = instant(wall, tz)
            if ts > after:
                if ts - after > HORIZON_S:
                    break
                return int(ts)
    except (CroniterError, ValueError, KeyError, OverflowError) as exc:
        raise BadSchedule(f"{expr!r} is not a valid cron expression: {exc}") from None
    raise BadSchedule(f"{expr!r} never matches a date within five years (e.g. February 30th)")
