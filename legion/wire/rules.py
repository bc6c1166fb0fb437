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
import ipaddress
import re
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
