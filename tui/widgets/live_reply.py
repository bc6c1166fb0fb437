"""The reply an agent is streaming: its text as it arrives, in a fixed box below the history.

Built for a wall of agents streaming at once (bench/tui.py: 16 x 50 tokens/s):

* the text is plain (its Markdown source, made safe), never parsed while it streams;
* it is wrapped incrementally: an append re-wraps only the open last line (greedy wrapping
  is prefix-stable), and each wrapped line's strip is kept until that line changes;
* the box has a fixed height, so an append never asks for a layout (no reflow of the
  screen); it repaints the lines it touched, and all of them only when the text moves up;
* it follows the end of the text line by line when its pane has the focus; otherwise it
  moves up by half a box at a time, so an unfocused pane repaints itself whole once every
  few lines instead of on every line.

When the reply ends, the pane removes this box and shows the reply in its history as
Markdown, rendered once.
"""

from __future__ import annotations

from abc import abstractmethod

from rich.cells import cell_len, get_character_cell_size
from rich.segment import Segment
from rich.style import Style
from textual.events import Resize
from textual.geometry import Region
from textual.strip import Strip
from textual.widget import Widget

from tui.state import Item
from tui.text import safe

TAB = "    "


def _fit(line: str, width: int) -> int:
    """How many characters of `line` fit in `width` cells."""
    if line.isascii():
        return min(len(line), width)
    used = 0
    for index, char in enumerate(line):
        used += get_character_cell_size(char)
        if used > width:
            return index
    return len(line)


def rewrap_last(lines: list[str], width: int) -> None:
    """Wrap the last (open) line of `lines` at `width`, word by word, in place. Greedy
    wrapping is prefix-stable: text appended to the last line never moves an earlier line."""
    line = lines.pop()
    while cell_len(line) > width:
        cut = _fit(line, width)
        if not line[cut:].strip():
            break  # only spaces overflow: they are cropped, the next word decides
        space = line.rfind(" ", 0, cut + 1)
        if space > 0:
            lines.append(line[:space])
            line = line[space + 1 :]
        else:  # one word longer than the line: cut it
            lines.append(line[: max(1, cut)])
            line = line[max(1, cut) :]
    lines.append(line)


def extend(lines: list[str], text: str, width: int) -> None:
    """Append `text` (which may hold newlines) to the wrapped `lines`."""
    first, *rest = text.replace("\t", TAB).split("\n")
    lines[-1] += first
    rewrap_last(lines, width)
    for paragraph in rest:
        lines.append(paragraph)
        rewrap_last(lines, width)


def wrap(text: str, width: int) -> list[str]:
    lines = [""]
    extend(lines, text, width)
    return lines


class LiveBox(Widget, can_focus=False):
    """What both live boxes keep of a streaming reply (this one and `MarkdownLive`): its
    text as shown (made safe, cut at `limit` characters with a note, once) and how much of
    it was taken in. `carried`: the text and count of a live box this one replaces."""

    def __init__(
        self,
        item: Item,
        text: str = "",
        *,
        limit: int,
        cut_note: str,
        carried: tuple[str, int] | None = None,
    ) -> None:
        super().__init__(classes="-streaming")
        self.item = item
        self.limit = limit
        self.cut_note = cut_note
        self.smooth = True  # follow line by line (the focused pane) or by half a box
        # the reply as shown, and the characters of it taken in (the cut note aside)
        self.text, self.written = carried if carried is not None else ("", 0)
        self._setup()
        if text:
            self.append(text)

    def _setup(self) -> None:
        """The box's own state, before any text is taken in."""

    @property
    def source(self) -> str:
        return self.text

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
        self._took(shown)

    @abstractmethod
    def _took(self, shown: str) -> None:
        """`shown` joined the text: show it (each box says how)."""


class LiveReply(LiveBox):
    """The current reply of an agent, while it streams (see the module's docstring)."""

    DEFAULT_CSS = """
    LiveReply {
        height: 45%; min-height: 3; width: 1fr; padding: 0 1;
        background: $surface; border-left: thick $primary;
    }
    """

    def _setup(self) -> None:
        self._width = 0
        self._lines: list[str] = [""]
        self._strips: dict[int, Strip] = {}
        self._top = 0  # the first line shown
        self._blank: Strip | None = None
        self._style: Style | None = None

    @property
    def line_count(self) -> int:
        return len(self._lines)

    def _took(self, shown: str) -> None:
        if self._width <= 0:
            return  # not laid out yet: the first resize wraps it all
        lines = self._lines
        first_changed = len(lines) - 1
        extend(lines, shown, self._width)
        for index in range(first_changed, len(lines)):
            self._strips.pop(index, None)
        if self._follow():
            self.refresh()
        else:
            height = self.size.height
            top = self._top
            start = max(first_changed, top)
            stop = min(len(lines), top + height)
            if stop > start:
                self.refresh(Region(0, start - top, self.size.width, stop - start))

    def _follow(self) -> bool:
        """Move the view so the last line shows; True when it moved."""
        height = max(1, self.size.height)
        last = len(self._lines) - 1
        if self._top <= last < self._top + height:
            return False
        if self.smooth or height < 4:
            self._top = max(0, last - height + 1)
        else:
            self._top = max(0, last - height // 2)
        self._strips = {i: s for i, s in self._strips.items() if i >= self._top}
        return True

    def on_resize(self, event: Resize) -> None:
        width = max(1, self.size.width)
        if width != self._width:
            self._width = width
            self._lines = wrap(self.text, width)
            self._strips.clear()
        self._blank = None
        self._style = None
        self._top = max(0, len(self._lines) - max(1, self.size.height))
        self.refresh()

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._strips.clear()
        self._blank = None
        self._style = None

    def render_line(self, y: int) -> Strip:
        style = self._style
        if style is None:  # the widget's style walks its ancestors: once, not per line
            style = self._style = self.rich_style
        index = self._top + y
        if not 0 <= index < len(self._lines):
            if self._blank is None:
                self._blank = Strip.blank(self.size.width, style)
            return self._blank
        strip = self._strips.get(index)
        if strip is None:
            strip = Strip([Segment(self._lines[index], style)]).crop_extend(
                0, self.size.width, style
            )
            self._strips[index] = strip
        return strip
