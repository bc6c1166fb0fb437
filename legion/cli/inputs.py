"""Parsers for what operators type on the command line: times, durations, money, JSON values.

Pure functions (no typer): each returns the parsed value or raises `InputError` with a
message that says what was wrong and what to write instead. `legion.cli.common` wraps them
as typer parsers, so a bad value ends in one clear line and exit status 2, never a traceback.

Times (`--since`): `30s`, `30m`, `2h`, `7d`, `2w` ago; an ISO 8601 date or time (`2026-01-31`,
`2026-01-31T12:00`, `2026-01-31T12:00:00+02:00`; without an offset it is local time); or a
Unix timestamp (`1767225600`, `1767225600.5`). Every time lies between 1970-01-01T00:00:00Z
and 9999-12-31T23:59:59Z; `nan`, `inf` and anything else are refused.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

EARLIEST = 0.0  # 1970-01-01T00:00:00Z
LATEST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
TIME_FORMS = (
    "30m, 2h, 7d (ago), an ISO time like 2026-01-31 or 2026-01-31T12:00, "
    "or a Unix timestamp like 1767225600"
)
# Deepest JSON value `legion bb put` takes (the host's JSON parser stops at about 200).
MAX_JSON_DEPTH = 100

_RELATIVE = re.compile(r"(\d{1,12}(?:\.\d{1,9})?)([smhdw])")
_UNIX = re.compile(r"\d{1,12}(?:\.\d{1,9})?")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class InputError(ValueError):
    """A command-line value that cannot be used; the message says how to write it."""


def _in_range(ts: float, text: str) -> float:
    if not EARLIEST <= ts <= LATEST:
        raise InputError(
            f"{text!r} is outside the times legion handles (1970-01-01 to 9999-12-31 UTC)"
        )
    return ts


def parse_time(text: str, now: Callable[[], float] = time.time) -> float:
    """A point in time as a Unix timestamp; see the module docstring for the forms."""
    value = text.strip()
    relative = _RELATIVE.fullmatch(value)
    if relative:
        return _in_range(now() - float(relative.group(1)) * _UNITS[relative.group(2)], text)
    if _UNIX.fullmatch(value):
        return _in_range(float(value), text)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InputError(f"{text!r} is not a time; use {TIME_FORMS}") from None
    try:
        ts = parsed.timestamp()
    except (OverflowError, ValueError, OSError):
        ts = math.nan
    if math.isnan(ts):
        raise InputError(
            f"{text!r} is outside the times legion handles (1970-01-01 to 9999-12-31 UTC)"
        )
    return _in_range(ts, text)


def parse_number(text: str, *, what: str, minimum: float, maximum: float) -> float:
    """A finite decimal number within [minimum, maximum] (`nan`, `inf`, `1e400` refused)."""
    try:
        value = float(text.strip())
    except ValueError:
        raise InputError(f"{what} must be a number, not {text[:40]!r}") from None
    if not math.isfinite(value):
        raise InputError(f"{what} must be a finite number, not {text[:40]!r}")
    if not minimum <= value <= maximum:
        raise InputError(f"{what} must be between {minimum:g} and {maximum:g}, not {value:g}")
    return value


def _depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value, without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def _no_constant(name: str) -> Any:
    raise InputError(f"{name} is not JSON; the blackboard holds finite numbers only")


def parse_json_value(text: str) -> Any:
    """A JSON value (`42`, `"text"`, `{"a": 1}`, `[1, 2]`): standard JSON, finite numbers,
    at most MAX_JSON_DEPTH levels deep."""
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise InputError(f"the value nests more than {MAX_JSON_DEPTH} levels deep") from None
    except InputError:
        raise
    except ValueError as exc:
        raise InputError(f"the value must be JSON ({exc}); quote strings like '\"text\"'") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise InputError(f"the value nests more than {MAX_JSON_DEPTH} levels deep")
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise InputError("the value holds a number too large for JSON (e.g. 1e400)")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return value
