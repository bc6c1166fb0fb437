"""Glob semantics of legion.mesh.globs (documented in docs/permissions.md and config.example.toml).

`*` stays within one `/`-separated segment, `**` crosses segments, `?` is one non-`/`
character, everything else matches itself, and a pattern must match the whole name.
"""

from __future__ import annotations

import pytest

from legion.mesh.globs import any_match, compile_glob, glob_match, is_glob

CASES: list[tuple[str, str, bool]] = [
    # `*` stays within a segment
    ("news/*", "news/tech", True),
    ("news/*", "news/tech/ai", False),
    ("news/*", "news", False),
    ("news/*", "newsx/tech", False),
    ("*", "abc", True),
    ("*", "a/b", False),
    ("*", "", True),
    ("*/c", "b/c", True),
    ("*/c", "a/b/c", False),
    ("*.md", "notes.md", True),
    ("*.md", "dir/notes.md", False),
    ("pre*", "prefix", True),
    ("pre*", "pre", True),
    ("pre*", "pr", False),
    ("*x*", "axb", True),
    ("*x*", "a/x/b", False),
    # `**` crosses segments
    ("**", "", True),
    ("**", "a", True),
    ("**", "a/b/c", True),
    ("**", "/", True),
    ("a/**", "a/b", True),
    ("a/**", "a/b/c/d", True),
    ("a/**", "a", False),
    ("a/**", "ab", False),
    ("a/**", "ab/c", False),
    ("a/**", "b/a/c", False),
    ("**/x", "a/b/x", True),
    ("**/x", "x", False),
    ("**.md", "dir/sub/notes.md", True),
    ("teams/red/**", "teams/red/plan", True),
    ("teams/red/**", "teams/red/a/b", True),
    ("teams/red/**", "teams/red", False),
    ("teams/red/**", "teams/redx/plan", False),
    ("teams/red/**", "teams/blue/plan", False),
    # patterns in the middle
    ("a/*/c", "a/b/c", True),
    ("a/*/c", "a/xyz/c", True),
    ("a/*/c", "a/b/x/c", False),
    ("a/*/c", "a/b/d", False),
    ("a/*/c", "a/b/c/d", False),
    ("a/**/c", "a/b/c", True),
    ("a/**/c", "a/b/x/y/c", True),
    ("a/**/c", "a/b/c/d", False),
    ("a/**/c", "x/a/b/c", False),
    # `**` is "any run including /", so the two slashes around it stay literal: a/**/c
    # needs at least one segment between (not gitignore's zero-segment rule).
    ("a/**/c", "a/c", False),
    # `?` is exactly one non-slash character
    ("?", "a", True),
    ("?", "", False),
    ("?", "ab", False),
    ("?", "/", False),
    ("a?c", "abc", True),
    ("a?c", "a.c", True),
    ("a?c", "a/c", False),
    ("a?c", "ac", False),
    ("??", "ab", True),
    ("??", "a", False),
    # literal dots and regex metacharacters match themselves only
    ("a.b", "a.b", True),
    ("a.b", "axb", False),
    ("v1.*", "v1.2", True),
    ("v1.*", "v1x2", False),
    ("a+b", "a+b", True),
    ("a+b", "aab", False),
    ("a+b", "ab", False),
    ("f(x)", "f(x)", True),
    ("f(x)", "fx", False),
    ("(a|b)", "a", False),
    ("a|b", "a", False),
    ("a|b", "a|b", True),
    ("[ab]", "[ab]", True),
    ("[ab]", "a", False),
    ("[!a]", "b", False),
    ("$x", "$x", True),
    ("$x", "x", False),
    ("x$", "x$", True),
    ("x$", "x", False),
    ("^a", "^a", True),
    ("^a", "a", False),
    ("a{1,2}", "a{1,2}", True),
    ("a{1,2}", "a", False),
    ("{a,b}", "a", False),
    ("a\\d", "a\\d", True),
    ("a\\d", "a1", False),
    ("a\\*", "a\\xyz", True),  # no escaping: `\` is literal, `*` is still a wildcard
    ("a.*", "a.b", True),  # `.` literal, `*` wildcard (not regex `.*`)
    ("a.*", "ab", False),
    ("a.*", "a./b", False),
    # empty pattern matches only the empty name
    ("", "", True),
    ("", "a", False),
    ("", "/", False),
    # the whole name must match
    ("abc", "abc", True),
    ("abc", "abcd", False),
    ("abc", "xabc", False),
    ("b", "abc", False),
    ("a", "a\n", False),
    ("a", "A", False),
    ("A", "a", False),
    # characters that are not special to globs
    ("user@host:x=1-2_3", "user@host:x=1-2_3", True),
    ("é/*", "é/ü", True),
]


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    CASES,
    ids=[f"{p!r}~{n!r}" for p, n, _ in CASES],
)
def test_glob_match(pattern: str, name: str, expected: bool) -> None:
    assert glob_match(pattern, name) is expected
    # any_match agrees with glob_match for a single pattern
    assert any_match([pattern], name) is expected
    assert any_match((pattern,), name) is expected


def test_any_match() -> None:
    assert any_match(["x/*", "shared/**"], "shared/a/b") is True
    assert any_match(["x/*", "shared/*"], "shared/a/b") is False
    assert any_match([], "anything") is False
    assert any_match((), "") is False


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("a/*", True),
        ("**", True),
        ("a?", True),
        ("a/b", False),
        ("", False),
        ("a.b+c(d)[e]$", False),
    ],
)
def test_is_glob(pattern: str, expected: bool) -> None:
    assert is_glob(pattern) is expected


def test_compile_is_cached_and_stable() -> None:
    assert compile_glob("a/**") is compile_glob("a/**")
    assert compile_glob("a/*").fullmatch("a/b") is not None
