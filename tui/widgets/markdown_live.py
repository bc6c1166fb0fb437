"""The reply streaming in the pane the operator is reading (the focused one), rendered as
Markdown as it arrives.

A Markdown widget (Textual's, even through `Markdown.get_stream()`) mounts and lays out
block widgets as it grows: in the focused pane of a streaming wall that doubled the TUI's
CPU per token and broke the display-lag target (bench/tui.py). This box has a fixed height
like `LiveReply` and never asks for a layout: on each append it renders the tail of the
reply that can show (twice what the box holds, from a block boundary) with Rich's Markdown at
its width and keeps the last lines; the screen repaints the box alone. Links are shown,
never made clickable. The other panes stream into a `LiveReply` (plain text); every reply is
rendered whole as Markdown once it ends. The pane swaps the two as the focus moves
(`AgentPane.restyle_live`), carrying the text over.
"""

from __future__ import annotations

import time

from rich.markdown import Markdown
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.events import Resize
from textual.strip import Strip
from textual.timer import Timer

from tui.widgets.live_reply import LiveBox

TAIL_CHARS = 4000  # the most of a reply rendered on one append (a zoomed pane's box)
MIN_TAIL_CHARS = 800
# A render that costs more than CHEAP_S (text an agent shaped to be slow to lay out, or a
# zoomed pane's long tail) is not made again before SPACING times its cost has passed: the
# box then lags a little, and the rest of the screen does not.
CHEAP_S = 0.005
SPACING = 10


def tail_chars(width: int, height: int) -> int:
    """How much of the reply's end to render for a box of `width` x `height`: twice what
    it can show (Markdown takes room of its own), within MIN_TAIL_CHARS and TAIL_CHARS: a
    4,000-character paragraph costs ~9 ms to render, one that fills a grid pane's box ~2 ms."""
    return min(TAIL_CHARS, max(MIN_TAIL_CHARS, 2 * width * height))


def tail_of(text: str, chars: int = TAIL_CHARS) -> str:
    """The end of `text` worth rendering: the last `chars`, from the first paragraph
    boundary in them (a block cut in half can render as something else), unless that
    boundary would leave less than half of them (then from where the cut falls)."""
    if len(text) <= chars:
        return text
    tail = text[-chars:]
    cut = tail.find("\n\n")
    return tail[cut + 2 :] if 0 <= cut <= chars // 2 else tail


class MarkdownLive(LiveBox):
    """A fixed box that follows the end of a reply rendered as Markdown."""

    DEFAULT_CSS = """
    MarkdownLive {
        height: 45%; min-height: 3; width: 1fr; padding: 0 1;
        background: $surface; border-left: thick $primary;
    }
    """

    def _setup(self) -> None:
        self.renders = 0  # how many times the tail was rendered (tests)
        self._strips: list[Strip] = []
        self._stale = True
        self._cost = 0.0  # seconds the last render took
        self._rendered_at = 0.0
        self._timer: Timer | None = None

    @property
    def lines(self) -> list[str]:
        """The lines shown now, as text (tests)."""
        self._render_tail()
        return [strip.text for strip in self._strips]

    def _took(self, shown: str) -> None:
        self._stale = True
        self._ask_paint()

    def _ask_paint(self) -> None:
        """Repaint the box alone (its size never changes with its text), now or, after a
        costly render, once SPACING times its cost has passed."""
        if self._cost > CHEAP_S:
            wait = self._rendered_at + SPACING * self._cost - time.monotonic()
            if wait > 0:
                if self._timer is None:
                    self._timer = self.set_timer(wait, self._paint_later)
                return
        self.refresh()

    def _paint_later(self) -> None:
        self._timer = None
        self.refresh()

    def on_resize(self, event: Resize) -> None:
        self._stale = True
        self.refresh()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._stale = True

    def _render_tail(self) -> None:
        if not self._stale:
            return
        self._stale = False
        width, height = self.size.width, self.size.height
        if width <= 0 or height <= 0 or not self.text:
            self._strips = []
            return
        self.renders += 1
        console = self.app.console
        options = console.options.update(width=width, height=None)
        base = self.rich_style
        tail = tail_of(self.text, tail_chars(width, height))
        began = time.monotonic()
        try:
            rendered = console.render_lines(
                Markdown(tail, hyperlinks=False), options, style=base, pad=False
            )
        except Exception:  # whatever an agent writes must not take the operator's screen
            rendered = console.render_lines(Text(tail), options, style=base, pad=False)
        self._rendered_at = time.monotonic()
        self._cost = self._rendered_at - began
        while rendered and not "".join(s.text for s in rendered[-1]).strip():
            rendered.pop()  # the blank line after the last block
        self._strips = [
            Strip(_unlinked(line)).crop_extend(0, width, base) for line in rendered[-height:]
        ]

    def render_line(self, y: int) -> Strip:
        self._render_tail()
        if 0 <= y < len(self._strips):
            return self._strips[y]
        return Strip.blank(self.size.width, self.rich_style)


def _unlinked(line: list[Segment]) -> list[Segment]:
    """`line` with no hyperlink in its styles (agent text never becomes clickable)."""
    return [
        Segment(s.text, s.style.update_link(None) if s.style and s.style.link else s.style)
        if not s.control
        else Segment("", Style.null())
        for s in line
    ]
