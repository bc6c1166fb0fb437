"""The chat input of an agent pane: Textual's Input, without a layout per keystroke.

Textual's Input sets its virtual size on every change of its value, and the virtual size is
a reactive that asks for a layout: one keystroke, one layout of the whole screen (sixteen
panes of it while they stream; bench/tui.py measured 107-634 ms from key to paint). This
input's size never depends on its value (one line, the pane's width: `width: 1fr` in the
pane's CSS), so it keeps the virtual size current without the layout and only repaints."""

from __future__ import annotations

from textual.geometry import Size
from textual.widget import Widget
from textual.widgets import Input


class PaneInput(Input):
    def _watch_value(self, value: str) -> None:
        size = Size(self.content_width, 1)
        if size != self.virtual_size:
            # the same value Input sets, without the layout its reactive would ask for
            self.set_reactive(Widget.virtual_size, size)
        self._suggestion = ""
        if self.suggester and value:
            self.run_worker(self.suggester._get_suggestion(self, value))
        self.refresh()
