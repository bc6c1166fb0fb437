"""How `legion logs` prints container output: readable records, exact JSON, no raw controls."""

from __future__ import annotations

import json

import pytest

from legion.cli.logs_cmd import as_json_line, readable
from legion.logs import iso_time, visible

RECORD = {"ts": 1769860800.25, "level": "info", "logger": "agent", "msg": "started as alice"}


def test_a_runtime_record_reads_as_time_level_logger_msg() -> None:
    line = readable(json.dumps({**RECORD, "item": 7, "note": "two words"}))
    assert (
        line == '2026-01-31T12:00:00.250Z info    agent: started as alice item=7 note="two words"'
    )


def test_a_traceback_goes_on_indented_lines() -> None:
    record = {**RECORD, "level": "error", "exc": "Traceback (most recent call last):\nBoom"}
    assert readable(json.dumps(record)).splitlines()[1:] == [
        "    Traceback (most recent call last):",
        "    Boom",
    ]


@pytest.mark.parametrize(
    "hostile",
    [
        "\x1b]0;owned\x07title",  # retitle the terminal
        "\x1b[2J\x1b[Hcleared",  # clear the screen
        "\x9b31mC1 CSI",  # an 8-bit CSI, which JSON allows raw
        "safe\u202etxt.exe",  # right-to-left override
        "line\rover",  # carriage return: overwrite what was printed
        "two\nlines",
    ],
)
def test_agent_text_never_reaches_the_terminal_raw(hostile: str) -> None:
    """issue 8 (and issue 7 item 8): whatever an agent writes to its stdout or stderr shows
    with its control characters as visible escapes, in a record's fields, in a non-JSON
    line, and with --json (as JSON escapes, still exact JSON)."""
    controls = [c for c in hostile if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c == "\u202e"]
    for shown in (
        readable(json.dumps({**RECORD, "msg": hostile, hostile: hostile})),
        readable(hostile),
        as_json_line(json.dumps({"msg": hostile}, ensure_ascii=False)),
        as_json_line(hostile),
    ):
        assert not any(c in shown for c in controls), repr(shown)
    assert json.loads(as_json_line(json.dumps({"msg": hostile})))["msg"] == hostile
    assert json.loads(as_json_line(hostile)) == {"msg": hostile, "raw": True}


def test_lines_that_are_not_records_print_as_they_are() -> None:
    assert readable("plain text from a print()") == "plain text from a print()"
    assert readable("[1, 2]") == "[1, 2]"
    assert readable('{"no": "msg"}') == '{"no": "msg"}'
    assert json.loads(as_json_line('{"no": "msg"}')) == {"no": "msg"}


def test_odd_timestamps_do_not_break_a_line() -> None:
    assert readable(json.dumps({**RECORD, "ts": 1e300})).startswith("1e+300 info")
    assert readable(json.dumps({**RECORD, "ts": "yesterday"})).startswith("yesterday info")
    assert readable(json.dumps({**RECORD, "ts": True})).startswith("True info")


def test_iso_time_and_visible() -> None:
    assert iso_time(0) == "1970-01-01T00:00:00.000Z"
    assert iso_time(1769860800.9999) == "2026-01-31T12:00:00.999Z"
    # the shared rule of legion.textsafe: tab is kept, every other control is escaped
    assert visible("a\tb\x00c\x7f") == "a\tb\\x00c\\x7f"
    assert visible("héllo wörld ✓") == "héllo wörld ✓"
