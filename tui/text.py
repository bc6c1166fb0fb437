"""Agent-controlled text, made safe to show.

Anything an agent (or a model) wrote reaches the screen only through `safe()` (the project's
one rule, `legion.textsafe.safe_text`: controls, escape introducers and invisible format
characters become visible escapes), and then as Textual `Content` or `Markdown` source, never
as Rich/Textual markup.
"""

from __future__ import annotations

from rich.text import Text
from textual.content import Content

from legion.textsafe import safe_text


def safe(text: str) -> str:
    """`text` as the operator may see it: newlines kept, every other control made visible."""
    return safe_text(text, multiline=True)


def plain(text: str, style: str = "") -> Content:
    """Agent text as Content: neutralised, never parsed as markup."""
    return Content.styled(safe(text), style)


def block(text: str) -> Text:
    """Agent text as a block that keeps its indentation (JSON, tool output): never markup."""
    return Text(safe(text))
