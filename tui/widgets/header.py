"""The top line: what the TUI is connected to (attached daemon pid, or embedded) and the time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Static

from tui.text import plain


class LegionHeader(Horizontal):
    DEFAULT_CSS = """
    LegionHeader { height: 1; background: $panel; color: $foreground; dock: top; }
    LegionHeader > #title { width: 1fr; padding: 0 1; text-style: bold; }
    LegionHeader > #clock { width: auto; padding: 0 1; color: $text-muted; }
    LegionHeader.-embedded > #title { color: $warning; }
    LegionHeader.-attached > #title { color: $success; }
    LegionHeader.-down > #title { color: $error; }
    """

    def __init__(self, clock: Callable[[], float], home: str) -> None:
        super().__init__()
        self.clock = clock
        self.home = home
        self.label = "connecting to the host..."

    def compose(self) -> ComposeResult:
        yield Static(id="title")
        yield Static(id="clock")

    def on_mount(self) -> None:
        self._show_label(mounting=True)
        self._tick()
        self.set_interval(1.0, self._tick)

    def _tick(self) -> None:
        stamp = datetime.fromtimestamp(self.clock()).strftime("%H:%M:%S")
        # the same width every second: a repaint, not a layout of the screen
        self.query_one("#clock", Static).update(stamp, layout=False)

    def _show_label(self, mounting: bool = False) -> None:
        if mounting or self.is_mounted:  # else on_mount shows it
            self.query_one("#title", Static).update(plain(f"legion · {self.label} · {self.home}"))

    def show_mode(self, mode: str, label: str) -> None:
        self.set_class(mode == "embedded", "-embedded")
        self.set_class(mode == "attached", "-attached")
        self.remove_class("-down")
        self.label = label
        self._show_label()

    def show_down(self, why: str) -> None:
        self.add_class("-down")
        self.label = why
        self._show_label()
