"""Glob patterns over `/`-separated names (blackboard keys, topics, agent names).

Semantics, documented for operators in docs/permissions.md:

* `*` matches any run of characters except `/` (it stays within one segment);
* `**` matches any run of characters including `/` (it crosses segments);
* `?` matches one character except `/`;
* every other character matches itself (there are no character classes).

`teams/red/**` therefore matches `teams/red/plan` and `teams/red/a/b`, but not
`teams/red` itself; `news/*` matches `news/tech` but not `news/tech/ai`.
"""

from __future__ import annotations

import re
from functools import lru_cache

from legion.wire import rules


def _piece(text: str, lazy: bool) -> str:
    """Regex for a piece of a pattern with no `**` in it."""
    out: list[str] = []
    star = "[^/]*?" if lazy else "[^/]*"
    for ch in text:
        if ch == "*":
            out.append(star)
        elif ch == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(ch))
    return "".join(out)


@lru_cache(maxsize=4096)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """Compile a glob. Between two `**`, a piece is matched at its leftmost place inside an
    atomic group: `**` absorbs anything, so the leftmost match is always the best one, and a
    pattern like `**a**a**a**b` cannot make the regex engine backtrack exponentially."""
    pieces = pattern.split("**")
    if len(pieces) == 1:
        return re.compile(_piece(pattern, lazy=False), re.DOTALL)
    middle = "".join(f"(?>.*?{_piece(p, lazy=True)})" for p in pieces[1:-1] if p)
    regex = _piece(pieces[0], lazy=False) + middle + ".*" + _piece(pieces[-1], lazy=False)
    return re.compile(regex, re.DOTALL)


def check_agent_pattern(pattern: str) -> str | None:
    """Why a pattern an agent supplies (a watch, a subscription) is refused, or None: see
    `legion.wire.rules.glob_problem` (at most two `*` or `?`, so every match stays small)."""
    return rules.glob_problem(pattern)


def glob_match(pattern: str, name: str) -> bool:
    """True when `name` matches `pattern` in full."""
    return compile_glob(pattern).fullmatch(name) is not None


def any_match(patterns: list[str] | tuple[str, ...], name: str) -> bool:
    return any(compile_glob(p).fullmatch(name) is not None for p in patterns)


def is_glob(pattern: str) -> bool:
    return "*" in pattern or "?" in pattern
