"""Agent-controlled text, made safe to show.

Anything an agent (or a model) wrote reaches the screen only through `safe()`, and then as
Textual `Content` or `Markdown` source, never as Rich/Textual markup.

The lead swaps `safe()` for `legion.textsafe.safe_text()` at merge (another helper adds it);
until then this is the one local implementation, so there is one place to swap.
"""

from __future__ import annotations

import re

from rich.text import Text
from textual.content import Content

# C0 controls but tab and newline, DEL, C1 controls; bidi overrides and isolates (they
# reorder what the operator reads); zero-width joiners used to hide text are kept visible.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    if code < 0x20:
        return "^" + chr(code + 0x40)  # ^[ for ESC, ^M for CR: visible, inert
    return f"<U+{code:04X}>"


def safe(text: str) -> str:
    """`text` with control characters and bidi overrides replaced by visible, inert marks."""
    return _UNSAFE.sub(_visible, text)


def plain(text: str, style: str = "") -> Content:
    """Agent text as Content: neutralised, never parsed as markup."""
    return Content.styled(safe(text), style)


def block(text: str) -> Text:
    """Agent text as a block that keeps its indentation (JSON, tool output): never markup."""
    return Text(safe(text))
