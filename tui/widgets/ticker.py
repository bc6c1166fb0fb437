"""The events ticker: failovers, restarts, refusals, denials and agents' notifications."""

from __future__ import annotations

from datetime import datetime

from textual.widgets import Log

from tui.state import Tick
from tui.text import safe

MARK = {"info": "·", "warning": "▲", "error": "✖"}


def line_of(tick: Tick) -> str:
    stamp = datetime.fromtimestamp(tick.at).strftime("%H:%M:%S")
    return f"{stamp} {MARK.get(tick.level, '·')} {safe(tick.text)}"


class EventsTicker(Log):
    """Plain lines (never markup), newest at the bottom, bounded."""

    DEFAULT_CSS = """
    EventsTicker {
        height: 5; border-top: hkey $foreground 20%; background: $surface; color: $text-muted;
    }
    EventsTicker:focus { border-top: hkey $primary; }
    """

    def __init__(self) -> None:
        super().__init__(max_lines=500, auto_scroll=True, id="ticker")

    def add(self, ticks: list[Tick]) -> None:
        if ticks:
            self.write_lines([line_of(t) for t in ticks])
