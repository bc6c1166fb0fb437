"""Cron semantics (issue 12): DOM/DOW, steps, ranges, intervals, DST, refusals."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from legion.automation.schedule import BadSchedule, parse_schedule
from tests.automation.conftest import at

UTC = ZoneInfo("UTC")
NY = ZoneInfo("America/New_York")


def runs(expr: str, start: float, count: int, tz: ZoneInfo = UTC, anchor: int = 0) -> list[str]:
    schedule = parse_schedule(expr, min_interval_s=1)
    out, t = [], start
    for _ in range(count):
        t = schedule.next_after(t, tz, anchor)
        out.append(datetime.fromtimestamp(t, tz).strftime("%Y-%m-%d %H:%M %a"))
    return out


def test_day_of_month_or_day_of_week_when_both_are_restricted() -> None:
    """issue 12: standard cron: the 13th OR a Friday (croniter's day_or)."""
    assert runs("0 0 13 * 5", at("2024-09-01 00:00"), 5) == [
        "2024-09-06 00:00 Fri",
        "2024-09-13 00:00 Fri",  # both
        "2024-09-20 00:00 Fri",
        "2024-09-27 00:00 Fri",
        "2024-10-04 00:00 Fri",
    ]
    assert runs("0 0 13 * 1", at("2024-09-01 00:00"), 3) == [
        "2024-09-02 00:00 Mon",
        "2024-09-09 00:00 Mon",
        "2024-09-13 00:00 Fri",  # the 13th, not a Monday
    ]


def test_a_star_day_field_restricts_nothing() -> None:
    assert runs("30 8 * * 1", at("2024-09-01 00:00"), 2) == [
        "2024-09-02 08:30 Mon",
        "2024-09-09 08:30 Mon",
    ]
    assert runs("0 12 1 * *", at("2024-09-01 12:00"), 2) == [
        "2024-10-01 12:00 Tue",
        "2024-11-01 12:00 Fri",
    ]


def test_steps_ranges_lists_and_names() -> None:
    assert runs("*/20 9-10 * * MON-FRI", at("2024-09-06 10:30"), 4) == [
        "2024-09-06 10:40 Fri",
        "2024-09-09 09:00 Mon",
        "2024-09-09 09:20 Mon",
        "2024-09-09 09:40 Mon",
    ]
    assert runs("0 6,18 * * *", at("2024-09-01 07:00"), 2) == [
        "2024-09-01 18:00 Sun",
        "2024-09-02 06:00 Mon",
    ]
    assert runs("@daily", at("2024-09-01 07:00"), 1) == ["2024-09-02 00:00 Mon"]


def test_intervals_count_from_the_anchor_not_from_now() -> None:
    schedule = parse_schedule("every 30m", min_interval_s=60)
    anchor = int(at("2024-09-01 10:07"))
    assert schedule.every_s == 1800
    assert schedule.next_after(anchor, UTC, anchor) == anchor + 1800
    # a restart at any moment finds the same grid
    assert schedule.next_after(anchor + 4000, UTC, anchor) == anchor + 5400
    assert parse_schedule("every 1h30m").every_s == 5400


def test_spring_forward_neither_skips_nor_doubles() -> None:
    """issue 12: 2024-03-10 02:00 EST -> 03:00 EDT in New York."""
    # a daily 02:30 (which does not exist that day) runs once, at 03:00 EDT
    assert runs("30 2 * * *", at("2024-03-09 03:00", "America/New_York"), 3, NY) == [
        "2024-03-10 03:00 Sun",
        "2024-03-11 02:30 Mon",
        "2024-03-12 02:30 Tue",
    ]
    # every 15 minutes: the four times of the missing hour collapse into one run at 03:00
    assert runs("*/15 * * * *", at("2024-03-10 01:30", "America/New_York"), 4, NY) == [
        "2024-03-10 01:45 Sun",
        "2024-03-10 03:00 Sun",
        "2024-03-10 03:15 Sun",
        "2024-03-10 03:30 Sun",
    ]


def test_fall_back_runs_the_repeated_hour_once() -> None:
    """issue 12: 2024-11-03 02:00 EDT -> 01:00 EST: 01:30 happens twice, runs once."""
    schedule = parse_schedule("30 1 * * *")
    first = schedule.next_after(at("2024-11-03 00:00", "America/New_York"), NY, 0)
    second = schedule.next_after(first, NY, 0)
    assert datetime.fromtimestamp(first, NY).isoformat() == "2024-11-03T01:30:00-04:00"
    assert datetime.fromtimestamp(second, NY).isoformat() == "2024-11-04T01:30:00-05:00"
    hourly = runs("0 * * * *", at("2024-11-03 00:30", "America/New_York"), 3, NY)
    assert hourly == ["2024-11-03 01:00 Sun", "2024-11-03 02:00 Sun", "2024-11-03 03:00 Sun"]
    # asked from inside the second 01:xx (EST), nothing of the first one comes back
    inside = at("2024-11-03 06:10", "UTC")  # 01:10 EST
    nxt = schedule.next_after(inside, NY, 0)
    assert datetime.fromtimestamp(nxt, NY).isoformat() == "2024-11-04T01:30:00-05:00"


def test_intervals_ignore_dst() -> None:
    schedule = parse_schedule("every 1h")
    start = int(at("2024-03-10 06:00", "UTC"))
    assert schedule.next_after(start, NY, start) - start == 3600


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("* * * *", "5 cron fields"),
        ("* * * * * *", "5 cron fields"),
        ("61 * * * *", "not a valid cron expression"),
        ("0 0 30 2 *", "not a valid cron expression"),
        ("H * * * *", "hashed"),
        ("every 0m", "shortest interval"),
        ("every soon", "5 cron fields"),
        ("", "5-field"),
        ("0 0 * * * ; rm -rf /", "5 cron fields"),
    ],
)
def test_bad_schedules_are_refused_with_the_reason(text: str, why: str) -> None:
    with pytest.raises(BadSchedule) as info:
        parse_schedule(text, min_interval_s=60)
    assert why in info.value.message


def test_a_cron_faster_than_the_minimum_interval_is_refused() -> None:
    with pytest.raises(BadSchedule, match="more often"):
        parse_schedule("* * * * *", min_interval_s=300)
    assert parse_schedule("*/5 * * * *", min_interval_s=300).expr == "*/5 * * * *"
