"""The project's rule for characters that must never reach a reader raw: terminal
controls, escape introducers and invisible or reordering format characters.

`legion.textsafe` escapes them for the operator's terminal; third-party text an agent's
model reads (MCP tool descriptions, skill descriptions) has them stripped
(`strip_unsafe`). One rule for both, here, because the agent runtime may import
`legion.wire` and nothing else of legion. Standard library only.

Unsafe: C0 controls (U+0000-U+001F) but tab (and newline where the caller keeps lines),
DEL, C1 controls (U+0080-U+009F), and the Unicode categories Cf (format: bidi
embeddings, overrides and isolates, LRM/RLM/ALM, zero-width spaces and joiners, BOM,
soft hyphen, invisible operators, tag characters), Zl, Zp (line and paragraph
separators) and Cs (lone surrogates). ZWJ (U+200D) is kept: emoji sequences need it and
it cannot reorder or hide text on its own.
"""

from __future__ import annotations

import re
import unicodedata

KEEP_FORMAT = frozenset({"\u200d"})  # ZWJ: emoji sequences


def unsafe_char(ch: str) -> bool:
    """Whether one character falls under the rule (tab and newline are the caller's call)."""
    code = ord(ch)
    if code < 0x20 or 0x7F <= code <= 0x9F:
        return True
    if code < 0xA0:
        return False
    if ch in KEEP_FORMAT:
        return False
    return unicodedata.category(ch) in ("Cf", "Zl", "Zp", "Cs")


_OUTSIDE_ASCII = re.compile(r"[^\x20-\x7e]")
_BLANK_RUNS = re.compile(r"[ \t]+")
_LINE_RUNS = re.compile(r"\n{3,}")


def strip_unsafe(text: str, *, keep_newlines: bool = True) -> str:
    """`text` without the characters of the rule: tabs become spaces, newlines are kept
    (at most two in a row) when `keep_newlines`, else become spaces; runs of blanks are
    collapsed and the ends trimmed."""

    def replace(match: re.Match[str]) -> str:
        ch = match.group()
        if ch == "\t" or (ch in "\r\n" and not keep_newlines):
            return " "
        if ch == "\n":
            return "\n"
        return "" if unsafe_char(ch) else ch

    cleaned = _OUTSIDE_ASCII.sub(replace, text.replace("\r\n", "\n"))
    cleaned = _BLANK_RUNS.sub(" ", cleaned)
    if keep_newlines:
        cleaned = _LINE_RUNS.sub("\n\n", "\n".join(line.strip() for line in cleaned.split("\n")))
    return cleaned.strip()


def capped(text: str, cap: int, mark: str = " [...]") -> str:
    """`text` cut to at most `cap` characters (the cut marked), on a character boundary."""
    if len(text) <= cap:
        return text
    return text[: max(0, cap - len(mark))].rstrip() + mark
