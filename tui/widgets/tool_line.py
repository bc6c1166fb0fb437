"""A tool call as one compact line that expands (Enter) to its arguments and result."""

from __future__ import annotations

import json

from textual.content import Content
from textual.widgets import Collapsible, Static

from tui.state import Item
from tui.text import block, safe

PREVIEW = 60


def _pretty(text: str) -> str:
    try:
        return json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except ValueError:
        return text


def title_of(item: Item) -> Content:
    args = " ".join(item.arguments.split())
    if len(args) > PREVIEW:
        args = args[:PREVIEW] + "…"
    status = "…" if not item.done else "✓"
    return Content.assemble(
        ("⚙ ", "$secondary"),
        (safe(item.name), "bold"),
        " ",
        (safe(args), "$text-muted"),
        f" {status}",
    )


class ToolLine(Collapsible):
    DEFAULT_CSS = """
    ToolLine { border: none; padding: 0; margin: 0; background: $surface; }
    ToolLine > Contents { padding: 0 0 0 3; height: auto; }
    ToolLine .-label { color: $text-muted; text-style: bold; }
    ToolLine.-running CollapsibleTitle { color: $secondary; }
    """

    def __init__(self, item: Item) -> None:
        self.item = item
        self._args = Static(block(_pretty(item.arguments) or "(no arguments)"), classes="-args")
        self._result = Static(block(self._result_text()), classes="-result")
        super().__init__(
            Static("arguments", classes="-label"),
            self._args,
            Static("result", classes="-label"),
            self._result,
            title=title_of(item),  # type: ignore[arg-type]  # Content: never parsed as markup
            collapsed=True,
        )
        self.set_class(not item.done, "-running")

    def _result_text(self) -> str:
        return "(running)" if self.item.result is None else self.item.result or "(empty)"

    def refresh_item(self) -> None:
        self.title = title_of(self.item)  # type: ignore[assignment]
        self._result.update(block(self._result_text()))
        self.set_class(not self.item.done, "-running")
