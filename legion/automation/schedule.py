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
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from croniter.croniter import CroniterError

from legion.errors import LegionError

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_FIELD = re.compile(r"^[0-9A-Za-z*/,\-]+$")
_EVERY = re.compile(r"^every\s+((?:\d+\s*[smhd]\s*)+)$", re.IGNORECASE)
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_SCHEDULE = 120
# Looking further than this for the next match means the expression (almost) never
# matches: `0 0 30 2 *` (February 30th) is refused rather than scheduled for never.
HORIZON_S = 5 * 366 * 86400


class BadSchedule(LegionError):
    status = 422
    code = "invalid_schedule"


def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name`, or BadSchedule saying how to fix it."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadSchedule(
            f"{name!r} is not a time zone this host knows; use an IANA name such as "
            '"UTC" or "Europe/Paris"',
            code="invalid_timezone",
        ) from None


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
    """A parsed schedule: `expr` (5-field cron) or `every_s` (an interval), never both."""

    text: str
    expr: str | None = None
    every_s: int | None = None

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
        return next_cron(self.expr, after, tz)


def parse_schedule(text: str, *, min_interval_s: float = 1.0) -> Schedule:
    """`0 9 * * 1-5`, `@daily`, `every 30m`, `every 1h30m`: a Schedule, or BadSchedule."""
    raw = " ".join(text.split())
    if not raw or len(raw) > MAX_SCHEDULE:
        raise BadSchedule(
            f"a schedule is a 5-field cron expression or `every N[s|m|h|d]`, at most "
            f"{MAX_SCHEDULE} characters; got {text[:MAX_SCHEDULE]!r}"
        )
    every = _EVERY.match(raw)
    if every:
        seconds = sum(
            int(n) * _UNIT[u.lower()] for n, u in re.findall(r"(\d+)\s*([smhdSMHD])", every[1])
        )
        if seconds < min_interval_s:
            raise BadSchedule(
                f"{raw!r} is every {seconds}s; the shortest interval allowed is "
                f"{min_interval_s:g}s ([automation] min_interval_s)"
            )
        if seconds > HORIZON_S:
            raise BadSchedule(f"{raw!r} is longer than five years; use a cron expression")
        return Schedule(raw, every_s=seconds)
    expr = ALIASES.get(raw.lower(), raw)
    fields = expr.split(" ")
    if len(fields) != 5 or not all(_FIELD.match(f) for f in fields):
        raise BadSchedule(
            f"{raw!r} is not a schedule: use 5 cron fields (minute hour day-of-month month "
            "day-of-week, e.g. `0 9 * * 1-5`), an alias like @daily, or `every 30m`"
        )
    if "H" in expr.upper().replace("THU", "").replace("SUN", "").replace("SAT", ""):
        raise BadSchedule(f"{raw!r}: hashed fields (H) are not supported; write the minute")
    # Check it parses and matches some day within the horizon (from a fixed origin, so
    # the answer does not depend on when it is asked).
    next_cron(expr, datetime(2000, 1, 1, tzinfo=UTC).timestamp(), ZoneInfo("UTC"))
    if min_interval_s > 60 and _gap_s(expr) < min_interval_s:
        raise BadSchedule(
            f"{raw!r} runs more often than every {min_interval_s:g}s ([automation] min_interval_s)"
        )
    return Schedule(raw, expr=expr)


def _gap_s(expr: str) -> float:
    """The shortest gap between two consecutive matches over a sample day (UTC)."""
    it = croniter(expr, datetime(2001, 1, 1), day_or=True)
    previous = it.get_next(datetime)
    shortest = float("inf")
    for _ in range(60):
        current = it.get_next(datetime)
        shortest = min(shortest, (current - previous).total_seconds())
        previous = current
    return shortest


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
