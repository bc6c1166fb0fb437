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


@lru_cache(maxsize=4096)
def compile_glob(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            if pattern.startswith("**", i):
                out.append(".*")
                i += 2
                continue
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def glob_match(pattern: str, name: str) -> bool:
    """True when `name` matches `pattern` in full."""
    return compile_glob(pattern).fullmatch(name) is not None


def any_match(patterns: list[str] | tuple[str, ...], name: str) -> bool:
    return any(compile_glob(p).fullmatch(name) is not None for p in patterns)


def is_glob(pattern: str) -> bool:
    return "*" in pattern or "?" in pattern
