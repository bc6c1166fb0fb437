"""The input rules every socket enforces, in one place: names, keys, topics, globs, ids, URLs.

Each rule is stated twice from the same constants: as a function that says what is wrong
(for the server's checks and the models' validators, so an error names the rule), and as a
JSON Schema fragment (for the models' generated OpenAPI document, so a client or a test
generator knows the rule before it sends anything). `tests/wire/test_rules.py` checks that
each regex and its function agree on every input.

Regexes here are written in the common subset of Python `re` and ECMA-262 (what JSON Schema
`pattern` means): character classes (with hex escapes only), `(?:...)` groups, counted
repeats, `^`/`$` anchors; no lookaround.
"""

from __future__ import annotations

import binascii
import functools
import ipaddress
import math
import re
import zoneinfo
from dataclasses import dataclass
from typing import Any

# --- numbers ------------------------------------------------------------------------------

# SQLite stores INTEGER as a signed 64-bit value; anything larger never reaches it.
SQLITE_MAX = 2**63 - 1
# Inbox item ids are AUTOINCREMENT rowids: 1, 2, 3, ...
ID_MIN = 1

# --- agent and team names -----------------------------------------------------------------

NAME_MAX = 32
_NAME = r"[a-z][a-z0-9-]{0,31}"
NAME_PATTERN = f"^{_NAME}$"
NAME_RULE = "lowercase letters, digits and '-', starting with a letter, at most 32 characters"
# Principals the host itself uses; no agent (and no team) may take them.
RESERVED_NAMES = frozenset({"operator", "host", "system"})
_NAME_RE = re.compile(_NAME)


def name_problem(name: str) -> str | None:
    """Why `name` is not a well-formed agent or team name, or None (reserved names aside)."""
    if not _NAME_RE.fullmatch(name):
        return f"{name[:80]!r} is not a valid name: use {NAME_RULE}"
    return None


# --- blackboard keys and topics -----------------------------------------------------------

# A segment: letters, digits and ._:@+=-, but not `.` or `..` (they would make keys look
# like paths that resolve elsewhere). Written without lookahead: up to two dots then a
# non-dot, or three dots then anything.
_CH = "A-Za-z0-9._:@+=-"
_ND = "A-Za-z0-9_:@+=-"
_SEG = rf"(?:\.{{0,2}}[{_ND}][{_CH}]*|\.{{3}}[{_CH}]*)"
_KEY = rf"{_SEG}(?:/{_SEG})*"
KEY_PATTERN = f"^{_KEY}$"
KEY_RULE = (
    "segments of letters, digits and ._:@+=- separated by single '/', with no leading or "
    "trailing '/' and no . or .. segments"
)
_KEY_RE = re.compile(_KEY)
# The host's limit is [host.blackboard] max_key_length (at most this); the OpenAPI document
# of a running host carries the configured value.
KEY_MAX_CEILING = 4096
KEY_MAX_DEFAULT = 256
TOPIC_MAX = 256


def key_problem(key: str, max_length: int = KEY_MAX_CEILING) -> str | None:
    """Why `key` is not a valid blackboard key (or topic), or None."""
    if len(key) > max_length:
        return f"key is {len(key)} characters; the limit is {max_length}"
    if not _KEY_RE.fullmatch(key):
        return f"invalid key {key[:80]!r}: use {KEY_RULE}"
    return None


def topic_problem(topic: str) -> str | None:
    """Why `topic` is not a valid topic to publish to, or None. Topics are spelt like keys."""
    if len(topic) > TOPIC_MAX:
        return f"topic is {len(topic)} characters; the limit is {TOPIC_MAX}"
    if not _KEY_RE.fullmatch(topic):
        return f"invalid topic {topic[:80]!r}: use {KEY_RULE}"
    return None


# --- globs an agent supplies (subscriptions, watches) -------------------------------------

GLOB_MAX = 200
GLOB_MAX_SINGLES = 2
GLOB_RULE = (
    f"{KEY_RULE}; `*` and `?` match within a segment and `**` across segments; at most "
    f"{GLOB_MAX_SINGLES} single-segment wildcards (* or ?), any number of **; at most "
    f"{GLOB_MAX} characters"
)
# The same grammar as keys where a segment may also hold `**` (any number) and `*` or `?`
# (at most two in the whole pattern). A run of stars counts as its pairs plus one single
# when odd (`***` is `**` and `*`), which is what "some split into ** and * has at most two
# singles" means, so the regex is existential over splits and still exact.
_X = rf"(?:[{_CH}]|\*\*)"
_XND = rf"(?:[{_ND}]|\*\*)"
_S = r"[*?]"
_GSEG0 = rf"(?:\.{{0,2}}{_XND}{_X}*|\.{{3}}{_X}*)"
_GSEG1 = rf"{_X}*{_S}{_X}*"
_GSEG2 = rf"{_X}*{_S}{_X}*{_S}{_X}*"
_PRE = rf"(?:{_GSEG0}/)*"
_POST = rf"(?:/{_GSEG0})*"
_GLOB = (
    rf"(?:{_GSEG0}{_POST}"
    rf"|{_PRE}{_GSEG1}{_POST}"
    rf"|{_PRE}(?:{_GSEG2}|{_GSEG1}{_POST}/{_GSEG1}){_POST})"
)
GLOB_PATTERN = f"^{_GLOB}$"


def single_wildcards(pattern: str) -> int:
    """How many single-segment wildcards (`*` not part of `**`, and `?`) `pattern` holds."""
    return pattern.replace("**", "").count("*") + pattern.count("?")


def glob_problem(pattern: str) -> str | None:
    """Why a glob an agent supplies is refused, or None.

    `*` and `?` backtrack within a segment, so an agent may use at most two of them (and
    any number of `**`); this keeps every match polynomial and small. Checked without the
    regex above (linear, and the message names what is wrong)."""
    if len(pattern) > GLOB_MAX:
        return f"pattern is longer than {GLOB_MAX} characters"
    singles = single_wildcards(pattern)
    if singles > GLOB_MAX_SINGLES:
        return (
            f"pattern has {singles} single-segment wildcards (* or ?); at most "
            f"{GLOB_MAX_SINGLES} are allowed (use ** for any depth)"
        )
    bare = pattern.replace("*", "x").replace("?", "x")
    for segment, raw in zip(bare.split("/"), pattern.split("/"), strict=True):
        if not segment or raw in (".", "..") or not _KEY_RE.fullmatch(segment):
            return f"invalid pattern {pattern[:80]!r}: use {GLOB_RULE}"
    return None


# --- egress URLs and headers ----------------------------------------------------------------

# http(s)://HOST[:PORT][/path][?query][#fragment]; HOST an ASCII name or IPv4 address, or an
# IPv6 address in brackets (with an optional %zone); PORT 1-65535 without leading zeros.
# Non-ASCII host names are sent in their xn-- (punycode) form. The path and query may hold
# any character but controls and spaces (the host percent-encodes what needs it).
_PORT = r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_H16 = "[0-9A-Fa-f]{1,4}"
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_V4 = rf"(?:{_OCTET}\.){{3}}{_OCTET}"
_LS32 = f"(?:{_H16}:{_H16}|{_V4})"
_V6 = (
    "(?:"
    f"(?:{_H16}:){{6}}{_LS32}"
    f"|::(?:{_H16}:){{5}}{_LS32}"
    f"|(?:{_H16})?::(?:{_H16}:){{4}}{_LS32}"
    f"|(?:(?:{_H16}:){{0,1}}{_H16})?::(?:{_H16}:){{3}}{_LS32}"
    f"|(?:(?:{_H16}:){{0,2}}{_H16})?::(?:{_H16}:){{2}}{_LS32}"
    f"|(?:(?:{_H16}:){{0,3}}{_H16})?::{_H16}:{_LS32}"
    f"|(?:(?:{_H16}:){{0,4}}{_H16})?::{_LS32}"
    f"|(?:(?:{_H16}:){{0,5}}{_H16})?::{_H16}"
    f"|(?:(?:{_H16}:){{0,6}}{_H16})?::"
    ")"
)
_HOSTNAME = "[A-Za-z0-9_.-]+"
_URL = (
    rf"[Hh][Tt][Tt][Pp][Ss]?://(?:{_HOSTNAME}|\[{_V6}(?:%[A-Za-z0-9._~-]+)?\])(?::{_PORT})?"
    r"(?:[/?#][^\x00-\x20\x7f]*)?"
)
URL_PATTERN = f"^{_URL}$"
URL_MAX = 16384
URL_RULE = (
    "an http:// or https:// URL with an ASCII host name (xn-- for an international one), an "
    "IPv4 address or a bracketed IPv6 address, an optional port 1-65535, and no user info, "
    "spaces or control characters"
)
_URL_RE = re.compile(_URL)

# RFC 9110 token for header names; values are visible characters, spaces, tabs and
# non-ASCII text (no line breaks, NUL or other controls).
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
HEADER_NAME_PATTERN = f"^{_TOKEN}$"
_HEADER_VALUE = r"[^\x00-\x08\x0a-\x1f\x7f]*"
HEADER_VALUE_PATTERN = f"^{_HEADER_VALUE}$"
_TOKEN_RE = re.compile(_TOKEN)
_HEADER_VALUE_RE = re.compile(_HEADER_VALUE)

# Strict base64 (RFC 4648 alphabet, padded, no whitespace): what binascii's strict mode takes.
_B64 = "(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?"
BASE64_PATTERN = f"^{_B64}$"


def url_problem(url: str) -> str | None:
    """Why `url` is not an egress URL the host can use, or None."""
    if len(url) > URL_MAX:
        return f"url is {len(url)} characters; the limit is {URL_MAX}"
    if not _URL_RE.fullmatch(url):
        return f"not a usable URL: use {URL_RULE}"
    return None


def header_name_problem(name: str) -> str | None:
    if not _TOKEN_RE.fullmatch(name):
        return f"header name {name[:64]!r} is not a valid HTTP header name (RFC 9110 token)"
    return None


def header_value_problem(value: str) -> str | None:
    if not _HEADER_VALUE_RE.fullmatch(value):
        return "a header value may not hold line breaks, NUL or other control characters"
    return None


def base64_problem(value: str) -> str | None:
    try:
        binascii.a2b_base64(value.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        return "body_base64 is not valid base64 (RFC 4648, padded, no whitespace)"
    return None


# --- HOST:PORT pairs ([egress] allow) -------------------------------------------------------

HOST_PORT_RULE = (
    "HOST:PORT with a host name or IPv4 address, or an IPv6 address in brackets, and a "
    'port 1-65535, e.g. "127.0.0.1:8080", "api.internal:443" or "[::1]:8080"'
)
_HOSTNAME_RE = re.compile(_HOSTNAME)


def host_port_problem(entry: str) -> str | None:
    """Why `entry` is not a HOST:PORT pair (what is wrong, not how to write it), or None."""
    host, sep, port = entry.rpartition(":")
    shown = repr(entry[:80])
    if not sep or not host:
        return f"{shown} is not HOST:PORT"
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        return f"{shown}: the port must be a number 1-65535"
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"{shown}: {host[1:-1]!r} is not an IPv6 address"
        return None
    if not _HOSTNAME_RE.fullmatch(host):
        if ":" in host:
            return f"{shown}: an IPv6 address (or anything with ':') goes in brackets"
        return f"{shown}: {host!r} is not a host name or IPv4 address"
    return None


def schema_string(
    *, pattern: str | None = None, max_length: int | None = None, min_length: int | None = None
) -> dict[str, Any]:
    """A JSON Schema string node; `None` parts are left out."""
    node: dict[str, Any] = {"type": "string"}
    if min_length is not None:
        node["minLength"] = min_length
    if max_length is not None:
        node["maxLength"] = max_length
    if pattern is not None:
        node["pattern"] = pattern
    return node


# --- decimal integers as regexes ------------------------------------------------------------


def _digits(low: str, high: str) -> str:
    return low if low == high else f"[{low}-{high}]"


def _any_digits(count: int) -> str:
    return "" if count == 0 else "[0-9]" if count == 1 else f"[0-9]{{{count}}}"


def _same_length(low: str, high: str) -> str:
    """A regex for the numbers low..high written with the same number of digits."""
    rest = len(low) - 1
    if rest < 0:
        return ""
    if low[0] == high[0]:
        return low[0] + _same_length(low[1:], high[1:])
    low_full, high_full = low[1:] == "0" * rest, high[1:] == "9" * rest
    first = low[0] if low_full else chr(ord(low[0]) + 1)
    last = high[0] if high_full else chr(ord(high[0]) - 1)
    parts = []
    if not low_full:
        parts.append(low[0] + _same_length(low[1:], "9" * rest))
    if first <= last:
        parts.append(_digits(first, last) + _any_digits(rest))
    if not high_full:
        parts.append(high[0] + _same_length("0" * rest, high[1:]))
    return parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")"


def int_pattern(low: int, high: int) -> str:
    """A regex (unanchored, safe to concatenate) for the decimal integers `low`..`high`
    written without leading zeros."""
    if not 0 <= low <= high:
        raise ValueError(f"no integers in {low}..{high}")
    parts = []
    for length in range(len(str(low)), len(str(high)) + 1):
        first = max(low, 10 ** (length - 1) if length > 1 else 0)
        last = min(high, 10**length - 1)
        if first <= last:
            parts.append(_same_length(str(first), str(last)))
    return parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")"


# --- cron schedules -------------------------------------------------------------------------
#
# A schedule is one of:
#   * 5 cron fields separated by spaces: minute (0-59), hour (0-23), day of month (1-31),
#     month (1-12 or jan-dec), day of week (0-7, 0 and 7 are Sunday, or sun-sat). A field is
#     a list of items separated by `,`; an item is `*`, a value, or a range `A-B` with
#     A <= B, and `*` or a range may take a step `/S` (S from 1 to the field's count of
#     values). Numbers below 10 may be written with one leading zero (`05`); names are
#     three letters in any case; `sun` at the end of a range that starts after Sunday is 7
#     (`fri-sun`). Nothing else: no `L`, `W`, `#`, `?` or `H`.
#   * an alias: @yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly;
#   * `every N` + a unit (s, m, h, d): an interval, N without leading zeros.
# Keywords and units are lower case. A cron expression is matched on the wall clock of the
# job's time zone; its day fields follow standard cron (either matches when both are
# restricted; a field covering its whole range counts as `*`).
#
# The shortest interval allowed is [automation] min_interval_s (M), configuration: the OpenAPI
# document of a running host carries the pattern built for its M. `every` takes N x unit >= M.
# A cron expression runs at most once a minute, so for M <= 60 every expression is allowed;
# above, the rule is stated on the fields (measured on the wall clock):
#   * 60 < M <= 3600: the minute field is one value, or `*/S` with S dividing 60 and
#     S minutes >= M (`*/5` for M = 300);
#   * M > 3600: the minute field is one value, and the hour field is one value or `*/S`
#     with S dividing 24 and S hours >= M; @hourly is refused.

SCHEDULE_MAX = 120
EVERY_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# An interval longer than this is refused: write a cron expression.
SCHEDULE_HORIZON_S = 5 * 366 * 86400
SCHEDULE_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
SCHEDULE_RULE = (
    "5 cron fields (minute 0-59, hour 0-23, day of month 1-31, month 1-12 or jan-dec, day "
    "of week 0-7 or sun-sat; lists `a,b`, ranges `a-b` with a <= b, steps `*/n` and "
    "`a-b/n`), an alias (@hourly, @daily, @midnight, @weekly, @monthly, @yearly, "
    "@annually), or `every N` with a unit s, m, h or d (e.g. `every 30m`)"
)
MONTH_NAMES = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# The longest month of each month number (February has 29 days in a leap year).
MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


class _CronField:
    """One of the five fields: its values, the names for them, and how to spell them."""

    def __init__(self, label: str, low: int, high: int, names: tuple[str, ...] = ()) -> None:
        self.label, self.low, self.high = label, low, high
        # value -> name; month names count from 1, day names from 0
        base = 1 if names is MONTH_NAMES else 0
        self.names = {base + i: n for i, n in enumerate(names)}
        self.steps = high - low + 1

    def number(self, low: int, high: int) -> list[str]:
        """Regex alternatives for the numbers low..high (with one leading zero below 10)."""
        spelled = [int_pattern(low, high)]
        if low <= 9:
            spelled.append("0" + int_pattern(low, min(high, 9)))
        return spelled

    def spell(self, low: int, high: int, *, upper_of: int | None = None) -> str:
        """A regex for any spelling of a value in low..high; `upper_of`: as the upper end
        of a range starting at that value (where `sun` is 7 after Sunday)."""
        spelled = self.number(low, high)
        for value, name in self.names.items():
            if name == "sun" and upper_of is not None and upper_of > 0:
                value = 7
            if low <= value <= high:
                spelled.append(_ci(name))
        return "(?:" + "|".join(spelled) + ")"

    def ranges(self) -> str:
        """`A-B` with A <= B."""
        return (
            "(?:"
            + "|".join(
                f"{self.spell(a, a)}-{self.spell(a, self.high, upper_of=a)}"
                for a in range(self.low, self.high + 1)
            )
            + ")"
        )

    def item(self) -> str:
        step = int_pattern(1, self.steps)
        return rf"(?:(?:\*|{self.ranges()})(?:/{step})?|{self.spell(self.low, self.high)})"

    def pattern(self) -> str:
        item = self.item()
        return f"{item}(?:,{item})*"

    def single(self) -> str:
        return self.spell(self.low, self.high)


def _ci(word: str) -> str:
    return "".join(f"[{c.upper()}{c}]" for c in word)


_MINUTE = _CronField("minute", 0, 59)
_HOUR = _CronField("hour", 0, 23)
_DOM = _CronField("day of month", 1, 31)
_MONTH = _CronField("month", 1, 12, MONTH_NAMES)
_DOW = _CronField("day of week", 0, 7, DAY_NAMES)
CRON_FIELDS = (_MINUTE, _HOUR, _DOM, _MONTH, _DOW)


def _step_every(divides: int, unit_s: int, minimum_s: float) -> str | None:
    """`*/S` for the S dividing `divides` with S x unit >= the minimum (None: no such S)."""
    steps = [s for s in range(1, divides + 1) if divides % s == 0 and s * unit_s >= minimum_s]
    if not steps:
        return None
    return r"\*/(?:" + "|".join(str(s) for s in sorted(steps, reverse=True)) + ")"


@functools.cache
def schedule_pattern(min_interval_s: float = 1.0) -> str:
    """The JSON Schema pattern of a schedule on a host whose shortest interval is
    `min_interval_s` (see the grammar above)."""
    minute, hour = _MINUTE.pattern(), _HOUR.pattern()
    aliases = ["yearly", "annually", "monthly", "weekly", "daily", "midnight"]
    if min_interval_s > 60:
        alternatives = [_MINUTE.single()]
        if min_interval_s <= 3600:
            step = _step_every(60, 60, min_interval_s)
            alternatives += [step] if step else []
        minute = "(?:" + "|".join(alternatives) + ")"
    if min_interval_s > 3600:
        step = _step_every(24, 3600, min_interval_s)
        hour = "(?:" + "|".join([_HOUR.single()] + ([step] if step else [])) + ")"
    else:
        aliases.append("hourly")
    cron = " +".join([minute, hour, _DOM.pattern(), _MONTH.pattern(), _DOW.pattern()])
    every = []
    for unit, seconds in EVERY_UNITS.items():
        low = max(1, math.ceil(min_interval_s / seconds))
        high = SCHEDULE_HORIZON_S // seconds
        if low <= high:
            every.append(int_pattern(low, high) + unit)
    return f"^(?:{cron}|@(?:{'|'.join(aliases)})|every +(?:{'|'.join(every)}))$"


@dataclass(frozen=True)
class ParsedSchedule:
    """A schedule that follows the grammar: `text` normalized (single spaces); either the
    five fields' value sets (`fields`, day of week with 7 as 0) or `every_s`; `never` says
    why a cron expression can never run (February 30th), else empty."""

    text: str
    fields: tuple[frozenset[int], ...] | None = None
    every_s: int | None = None
    never: str = ""


class _Refused(ValueError):
    pass


def _value(field: _CronField, token: str, *, upper_of: int | None = None) -> int:
    lowered = token.lower()
    for value, name in field.names.items():
        if lowered == name:
            return 7 if name == "sun" and upper_of is not None and upper_of > 0 else value
    if token.isascii() and token.isdigit() and len(token) <= 2:
        value = int(token)
        if (len(token) == 1 or token[0] != "0" or value <= 9) and field.low <= value <= field.high:
            return value
    names = ""
    if field.names:
        names = f" or {field.names[min(field.names)]}-{field.names[max(field.names)]}"
    raise _Refused(f"{token[:20]!r} is not a {field.label}: use {field.low}-{field.high}{names}")


def _item(field: _CronField, item: str) -> tuple[set[int], str]:
    """The values of one item, and its shape: `value`, `star`, `star/S` or `range`."""
    base, slash, step_text = item.partition("/")
    step = 1
    if slash:
        if not (step_text.isascii() and step_text.isdigit() and step_text[0] != "0"):
            raise _Refused(f"step {step_text[:20]!r} in the {field.label} is not a number >= 1")
        step = int(step_text)
        if step > field.steps:
            raise _Refused(f"step {step} in the {field.label} is larger than {field.steps}")
    if base == "*":
        values = set(range(field.low, field.high + 1, step))
        return values, f"star/{step}" if slash else "star"
    low_text, dash, high_text = base.partition("-")
    if not dash:
        if slash:
            raise _Refused(f"{item[:20]!r}: a step goes with `*` or a range (`a-b/{step}`)")
        return {_value(field, base)}, "value"
    low = _value(field, low_text)
    high = _value(field, high_text, upper_of=low)
    if low > high:
        raise _Refused(
            f"range {base[:20]!r} in the {field.label} runs backwards; write it low-high, or "
            "as two ranges"
        )
    return set(range(low, high + 1, step)), "range"


def _every(text: str, amount: str, min_interval_s: float) -> ParsedSchedule:
    number, unit = amount[:-1], amount[-1:]
    if unit not in EVERY_UNITS or not (number.isascii() and number.isdigit()) or number[0] == "0":
        raise _Refused(
            f"{text!r}: write `every N` and one unit s, m, h or d, N without leading zeros "
            "(`every 90m` for an hour and a half)"
        )
    seconds = int(number) * EVERY_UNITS[unit] if len(number) <= 12 else SCHEDULE_HORIZON_S + 1
    if seconds < min_interval_s:
        raise _Refused(
            f"{text!r} is every {seconds}s; the shortest interval allowed is "
            f"{min_interval_s:g}s ([automation] min_interval_s)"
        )
    if seconds > SCHEDULE_HORIZON_S:
        raise _Refused(f"{text!r} is longer than five years; use a cron expression")
    return ParsedSchedule(text, every_s=seconds)


def _never(fields: list[set[int]], restricted_dow: bool) -> str:
    """Why the day fields can never match (only when the day of week restricts nothing)."""
    if restricted_dow:
        return ""
    first_day = min(fields[2])
    if any(first_day <= MONTH_DAYS[month - 1] for month in fields[3]):
        return ""
    months = ", ".join(MONTH_NAMES[m - 1] for m in sorted(fields[3]))
    return f"no month in ({months}) has a day {first_day} or later"


def _interval_rule(shapes: list[list[tuple[str, int]]], min_interval_s: float) -> None:
    """The shape rule for M above 60 (the grammar's comment)."""

    def one_value(index: int) -> bool:
        return len(shapes[index]) == 1 and shapes[index][0][0] == "value"

    def star_step(index: int, divides: int, unit_s: int) -> bool:
        if len(shapes[index]) != 1 or not shapes[index][0][0].startswith("star/"):
            return False
        step = int(shapes[index][0][0][5:])
        return divides % step == 0 and step * unit_s >= min_interval_s

    limit = f"{min_interval_s:g}s ([automation] min_interval_s)"
    if min_interval_s <= 60:
        return
    if min_interval_s <= 3600:
        if not (one_value(0) or star_step(0, 60, 60)):
            raise _Refused(
                f"the schedule may run more often than every {limit}: name one minute of "
                "the hour, or `*/N` with N dividing 60 and N minutes at least that long"
            )
        return
    if not one_value(0) or not (one_value(1) or star_step(1, 24, 3600)):
        raise _Refused(
            f"the schedule may run more often than every {limit}: name one minute, and one "
            "hour or `*/N` hours with N dividing 24 and N hours at least that long"
        )


def parse_schedule_text(text: str, min_interval_s: float = 1.0) -> ParsedSchedule:
    """Parse a schedule by the grammar above, or raise ValueError saying what is wrong."""
    if not text or len(text) > SCHEDULE_MAX:
        raise _Refused(f"a schedule is 1 to {SCHEDULE_MAX} characters: {SCHEDULE_RULE}")
    if text != text.strip(" ") or any(c in text for c in "\t\n\r\v\f"):
        raise _Refused(
            "a schedule has no leading or trailing spaces and separates its parts with spaces "
            f"only: {SCHEDULE_RULE}"
        )
    tokens = [token for token in text.split(" ") if token]
    normalized = " ".join(tokens)
    if tokens[0] == "every" and len(tokens) == 2:
        return _every(normalized, tokens[1], min_interval_s)
    if len(tokens) == 1 and tokens[0] in SCHEDULE_ALIASES:
        if tokens[0] == "@hourly" and min_interval_s > 3600:
            raise _Refused(
                f"@hourly runs more often than every {min_interval_s:g}s ([automation] "
                "min_interval_s)"
            )
        expanded = SCHEDULE_ALIASES[tokens[0]].split()
    elif len(tokens) == 5:
        expanded = tokens
    else:
        raise _Refused(f"{text[:SCHEDULE_MAX]!r} is not a schedule: use {SCHEDULE_RULE}")
    fields: list[set[int]] = []
    shapes: list[list[tuple[str, int]]] = []
    for field, token in zip(CRON_FIELDS, expanded, strict=True):
        values: set[int] = set()
        shape = []
        for item in token.split(","):
            if not item:
                raise _Refused(f"the {field.label} {token[:20]!r} has an empty list item")
            found, kind = _item(field, item)
            values |= found
            shape.append((kind, len(found)))
        fields.append(values)
        shapes.append(shape)
    _interval_rule(shapes, min_interval_s)
    dow = {0 if d == 7 else d for d in fields[4]}
    fields[4] = dow
    restricted_dow = dow != set(range(7))
    return ParsedSchedule(
        normalized,
        fields=tuple(frozenset(f) for f in fields),
        never=_never(fields, restricted_dow),
    )


def schedule_problem(text: str, min_interval_s: float = 1.0) -> str | None:
    """Why `text` is not a schedule on a host whose shortest interval is `min_interval_s`,
    or None. (A well-formed expression that never runs, like `0 0 31 2 *`, is a schedule:
    the job is kept as failed, with the reason.)"""
    try:
        parse_schedule_text(text, min_interval_s)
    except ValueError as exc:
        return str(exc)
    return None


# --- time zones -----------------------------------------------------------------------------

TIMEZONE_MAX = 64
TIMEZONE_RULE = 'an IANA time zone name this host knows, such as "UTC" or "Europe/Paris"'


@functools.cache
def timezones() -> frozenset[str]:
    """The IANA zones of this host's time zone database (the OpenAPI document lists them).
    Reading the database takes a moment: the host reads it once, off its event loop."""
    return frozenset(z for z in zoneinfo.available_timezones() if len(z) <= TIMEZONE_MAX)


def timezone_problem(name: str) -> str | None:
    if name not in timezones():
        return f"{name[:80]!r} is not a time zone this host knows; use {TIMEZONE_RULE}"
    return None


# --- cron job and webhook names and ids -----------------------------------------------------

JOB_NAME_MAX = 64
_JOB_NAME = r"[a-z0-9][a-z0-9._-]{0,63}"
JOB_NAME_PATTERN = f"^{_JOB_NAME}$"
JOB_NAME_RULE = (
    "lowercase letters, digits and ._- starting with a letter or digit, at most 64 characters"
)
_JOB_NAME_RE = re.compile(_JOB_NAME)

HOOK_NAME_MAX = 32
HOOK_NAME_PATTERN = NAME_PATTERN
HOOK_NAME_RULE = NAME_RULE

# A webhook delivery's job id: `wh_` and 24 URL-safe base64 characters (18 random bytes).
WEBHOOK_JOB_PATTERN = "^wh_[A-Za-z0-9_-]{24}$"
_WEBHOOK_JOB_RE = re.compile(WEBHOOK_JOB_PATTERN[1:-1])


def job_name_problem(name: str) -> str | None:
    if not _JOB_NAME_RE.fullmatch(name):
        return f"{name[:80]!r} is not a job name: use {JOB_NAME_RULE}"
    return None


def hook_name_problem(name: str) -> str | None:
    if not _NAME_RE.fullmatch(name):
        return f"{name[:80]!r} is not a webhook name: use {HOOK_NAME_RULE}"
    return None


def id_problem(text: str) -> str | None:
    """Why `text` (a path segment) is not an id 1..2^63-1 in decimal, or None."""
    if not (text.isascii() and text.isdigit()) or text[0] == "0" or len(text) > 19:
        return f"{text[:40]!r} is not an id: a whole number from 1 to {SQLITE_MAX}"
    if int(text) > SQLITE_MAX:
        return f"{text[:40]!r} is beyond the largest id, {SQLITE_MAX}"
    return None


def webhook_job_problem(text: str) -> str | None:
    if not _WEBHOOK_JOB_RE.fullmatch(text):
        return f"{text[:40]!r} is not a webhook job id (wh_ and 24 letters, digits, - or _)"
    return None


# --- webhook secrets ------------------------------------------------------------------------

# A secret the host generates for a `legion` or `github` hook: `lgwh_` and 32 random bytes in
# URL-safe base64 (43 characters). The control socket shows it once, in the answer that made
# it; the prefix lets a secret scanner (and a reader) tell what it is.
GENERATED_SECRET_PATTERN = "^lgwh_[A-Za-z0-9_-]{43}$"
_GENERATED_SECRET_RE = re.compile(GENERATED_SECRET_PATTERN[1:-1])


def is_generated_secret(value: str) -> bool:
    return bool(_GENERATED_SECRET_RE.fullmatch(value))


# Stripe's endpoint signing secret: `whsec_` and a base64-like token (Stripe's dashboard
# issues 32 letters and digits, its CLI 64 hex digits). Any value of this form is maskable:
# the prefix is distinctive, and the form alone gives it more than the vault's 40 bits of
# estimated entropy (`whsec_` counts 6 characters from 4 classes, and every further
# character at least once more), so no entropy estimate refuses it.
STRIPE_SECRET_MIN = 24
STRIPE_SECRET_MAX = 128
_STRIPE_SECRET = f"whsec_[A-Za-z0-9+/=_-]{{{STRIPE_SECRET_MIN},{STRIPE_SECRET_MAX}}}"
STRIPE_SECRET_PATTERN = f"^{_STRIPE_SECRET}$"
STRIPE_SECRET_RULE = (
    f"Stripe's endpoint signing secret: whsec_ and {STRIPE_SECRET_MIN} to {STRIPE_SECRET_MAX} "
    "letters, digits or +/=_- (the Stripe dashboard shows it under the endpoint's Signing "
    "secret)"
)
_STRIPE_SECRET_RE = re.compile(_STRIPE_SECRET)


def stripe_secret_problem(secret: str) -> str | None:
    if not _STRIPE_SECRET_RE.fullmatch(secret):
        return f"not a Stripe signing secret: use {STRIPE_SECRET_RULE}"
    return None


# --- browser refs -------------------------------------------------------------------------

# The refs of Playwright's AI snapshot: `e5`, and `f1e3` for an element in a frame.
REF_MAX = 16
_REF = "[a-z]{1,2}[0-9a-z]{0,14}"
REF_PATTERN = f"^{_REF}$"
REF_RULE = "a ref from the last browser snapshot (e5, f1e3)"
_REF_RE = re.compile(_REF)


def ref_problem(ref: str) -> str | None:
    if not _REF_RE.fullmatch(ref):
        return f"{ref[:40]!r} is not a ref: use {REF_RULE}"
    return None
