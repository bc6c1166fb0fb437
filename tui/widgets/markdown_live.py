"""The reply streaming in the pane the operator is reading (the focused one), rendered as
Markdown as it arrives.

Textual's `Markdown.get_stream()` folds appends that come faster than it can render into
one, and an append re-parses only from the last block. One such widget keeps up with a
fast stream; sixteen do not on a small machine (each append lays the widget out again), so
the other panes stream into a `LiveReply` (plain text in a fixed box) and are rendered as
Markdown once their reply ends. The pane swaps one for the other as the focus moves
(`AgentPane.restyle_live`), carrying the text over.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Markdown
from textual.widgets.markdown import MarkdownStream

from tui.state import Item
from tui.text import safe


class MarkdownLive(VerticalScroll, can_focus=False):
    """A fixed box that follows the end of a reply streamed as Markdown."""

    DEFAULT_CSS = """
    MarkdownLive {
        height: 45%; min-height: 3; width: 1fr;
        background: $surface; border-left: thick $primary;
    }
    MarkdownLive > Markdown { margin: 0; padding: 0 1; background: $surface; }
    """

    def __init__(
        self,
        item: Item,
        text: str = "",
        *,
        limit: int,
        cut_note: str,
        carried: tuple[str, int] | None = None,
    ) -> None:
        """`carried`: the shown text and the count of characters taken in of a live reply
        this one replaces (already made safe, its cut note included)."""
        super().__init__(classes="-streaming")
        self.item = item
        self.limit = limit
        self.cut_note = cut_note
        self.smooth = True  # the LiveReply's knob: this box always follows the end
        self.text, self.written = carried if carried is not None else ("", 0)
        self.markdown = Markdown(open_links=False)
        self._stream: MarkdownStream | None = None
        if text:
            self.append(text)

    @property
    def source(self) -> str:
        return self.text

    def compose(self) -> ComposeResult:
        yield self.markdown

    def on_mount(self) -> None:
        self.anchor()
        self._stream = Markdown.get_stream(self.markdown)
        if self.text:  # what came before the box was mounted
            self.call_later(self._stream.write, self.text)

    def append(self, text: str) -> None:
        """Take in more of the reply: past `limit` characters, the rest is not shown (once,
        a note says so)."""
        room = self.limit - self.written
        if room <= 0 or not text:
            return
        shown = safe(text[:room])
        self.written += min(len(text), room)
        if len(text) > room:
            shown += self.cut_note
        self.text += shown
        if self._stream is not None:
            self.call_later(self._stream.write, shown)

    async def on_unmount(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stream.stop()
