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
    assert parse_schedule("every 90m").every_s == 5400
    with pytest.raises(BadSchedule, match="every 90m"):
        parse_schedule("every 1h30m")  # one unit: the schema's grammar says so too


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
        ("61 * * * *", "'61' is not a minute: use 0-59"),
        ("* 24 * * *", "'24' is not a hour"),
        ("* * 0 * *", "'0' is not a day of month: use 1-31"),
        ("* * * 13 *", "'13' is not a month: use 1-12 or jan-dec"),
        ("* * * * 8", "'8' is not a day of week: use 0-7 or sun-sat"),
        ("007 * * * *", "'007' is not a minute"),
        ("*/0 * * * *", "not a number >= 1"),
        ("*/61 * * * *", "larger than 60"),
        ("5/15 * * * *", "a step goes with `*` or a range"),
        ("50-10 * * * *", "runs backwards"),
        ("* * * * fri-mon", "runs backwards"),
        ("1,,2 * * * *", "empty list item"),
        ("H * * * *", "'H' is not a minute"),
        ("* * L * *", "'L' is not a day of month"),
        ("* * * * 1#2", "'1#2' is not a day of week"),
        ("@reboot", "not a schedule"),
        ("@DAILY", "not a schedule"),
        ("every 0m", "`every N`"),
        ("every 30", "`every N`"),
        ("every soon", "`every N`"),
        ("every 99999999999999d", "longer than five years"),
        ("", "1 to 120 characters"),
        (" 0 * * * *", "no leading or trailing spaces"),
        ("0\t* * * *", "no leading or trailing spaces"),
        ("0 0 * * * ; rm -rf /", "not a schedule"),
    ],
)
def test_bad_schedules_are_refused_with_the_reason(text: str, why: str) -> None:
    """issue 15: the grammar (legion.wire.rules) names what is wrong."""
    with pytest.raises(BadSchedule) as info:
        parse_schedule(text, min_interval_s=60)
    assert why in info.value.message


def test_a_schedule_faster_than_the_minimum_interval_is_refused() -> None:
    """issue 15: [automation] min_interval_s as a rule on the fields, the one the document's
    pattern states: above 60 s one minute of the hour or `*/N` minutes with N dividing 60;
    above an hour one minute and one hour or `*/N` hours with N dividing 24."""
    for text, minimum in [
        ("* * * * *", 300),
        ("*/4 * * * *", 300),
        ("*/7 * * * *", 60 * 7),  # 7 does not divide 60: 56 -> 0 is 4 minutes
        ("0,30 * * * *", 1800),  # lists are not measured: one value or */N
        ("every 299s", 300),
        ("every 4m", 300),
        ("0 * * * *", 7200),
        ("@hourly", 7200),
        ("0 */1 * * *", 7200),
        ("0 */5 * * *", 7200),
    ]:
        with pytest.raises(BadSchedule, match="min_interval_s"):
            parse_schedule(text, min_interval_s=minimum)
    for text, minimum in [
        ("*/5 * * * *", 300),
        ("7 * * * *", 3600),
        ("every 5m", 300),
        ("every 300s", 300),
        ("0 */2 * * *", 7200),
        ("30 9 * * 1-5", 86400),
        ("@daily", 86400),
        ("* * * * *", 60),
    ]:
        assert parse_schedule(text, min_interval_s=minimum).text == text


def test_a_one_value_range_is_that_value_not_every_value() -> None:
    """issue 12, found with issue 15's grammar: croniter 7 reads `5-5` as `*` (every minute);
    legion hands croniter the values, so `5-5` runs at :05 only, as cron means it."""
    assert runs("5-5 * * * *", at("2024-09-01 00:00"), 2) == [
        "2024-09-01 00:05 Sun",
        "2024-09-01 01:05 Sun",
    ]
    assert runs("0 0 * * 3-3", at("2024-09-01 00:00"), 2) == [
        "2024-09-04 00:00 Wed",
        "2024-09-11 00:00 Wed",
    ]


def test_sunday_ends_a_range_as_seven_and_names_take_any_case() -> None:
    """issue 15: `fri-sun` is Friday to Sunday (sun is 7 at the end of a range that starts
    after Sunday); `sun-sun` stays Sunday; 0 and 7 are both Sunday."""
    assert runs("0 12 * * fri-sun", at("2024-09-01 13:00"), 3) == [
        "2024-09-06 12:00 Fri",
        "2024-09-07 12:00 Sat",
        "2024-09-08 12:00 Sun",
    ]
    assert runs("0 12 * * SUN-sun", at("2024-09-01 13:00"), 1) == ["2024-09-08 12:00 Sun"]
    assert runs("0 12 * * 7", at("2024-09-01 13:00"), 1) == ["2024-09-08 12:00 Sun"]
    assert runs("0 12 1 Jan-FEB *", at("2024-09-01 13:00"), 2) == [
        "2025-01-01 12:00 Wed",
        "2025-02-01 12:00 Sat",
    ]


def test_an_expression_that_never_runs_parses_and_says_why() -> None:
    """issue 15: `0 0 31 2 *` follows the grammar (the schema cannot tell calendars), so it
    is no malformed request: it parses with the reason it never runs (the job is kept as
    failed); with a day of week it runs on those days (standard cron's either-or)."""
    never = parse_schedule("0 0 31 2,4 *")
    assert never.never == "no month in (feb, apr) has a day 31 or later"
    with pytest.raises(BadSchedule, match="never runs"):
        never.next_after(at("2024-09-01 00:00"), UTC, 0)
    assert parse_schedule("0 0 29 2 *").never == ""  # leap years
    assert parse_schedule("0 0 30 * *").never == ""
    assert runs("0 0 31 2 1", at("2024-09-01 00:00"), 1) == ["2025-02-03 00:00 Mon"]
