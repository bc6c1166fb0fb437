"""The fleet screen: sidebar of agents, their panes in a grid, the events ticker."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.events import Resize
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Static

from tui.keys import bindings
from tui.state import Change, Item
from tui.widgets.agent_pane import AgentPane
from tui.widgets.footer import LegionFooter
from tui.widgets.pane_grid import PaneGrid
from tui.widgets.sidebar import FleetSidebar
from tui.widgets.ticker import EventsTicker

if TYPE_CHECKING:
    from tui.app import LegionApp

NARROW = 100  # below this many columns the sidebar collapses and panes stack
# Streamed tokens wait in their pane and go into its live reply on this clock, every pane's at
# once: one frame paints them all, at most 24 a second however fast the fleet streams. A frame
# of 16 panes costs 6-10 ms on a 2-core machine, a frame of one pane 2-3 ms (Textual renders
# every widget under the span of the changed lines): one frame for all is far cheaper than one
# per pane or per batch. bench/tui.py, 16 x 50 tokens/s: at 20, 24, 30 and 40 frames
# a second the TUI used 0.35, 0.38, 0.44 and 0.50 of a core; 24 gave the steadiest p99.
FLUSH_S = 1 / 24


def coalesce(items: list[tuple[str, str, Item]]) -> list[tuple[str, str, Item]]:
    """Join the tokens a batch brought for one reply into one write (one Markdown append)."""
    out: list[tuple[str, str, Item]] = []
    for agent, op, item in items:
        if op.startswith("token:") and out:
            _, last_op, last_item = out[-1]
            if last_item is item and last_op.startswith("token:"):
                out[-1] = (agent, last_op + op[6:], item)
                continue
        out.append((agent, op, item))
    return out


class FleetScreen(Screen[None]):
    CSS_PATH = "fleet.tcss"
    BINDINGS = bindings("fleet")

    @property
    def legion(self) -> LegionApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield self.legion.make_header()
        with Horizontal(id="body"):
            yield FleetSidebar(id="sidebar")
            with Vertical(id="main"):
                with PaneGrid(id="grid"):
                    yield Static(
                        "No pane open. Pick an agent in the sidebar and press Enter, "
                        "or Ctrl+P for every command.",
                        id="empty",
                    )
                yield EventsTicker()
        yield LegionFooter()

    def __init__(self) -> None:
        super().__init__()
        self.panes: dict[str, AgentPane] = {}  # open panes by agent (no DOM query per batch)
        self._flusher: Timer | None = None

    def on_mount(self) -> None:
        self.sync_all()
        self.query_one(FleetSidebar).focus()
        # paused while no token waits: an idle screen does not wake 24 times a second
        self._flusher = self.set_interval(FLUSH_S, self._flush, pause=True)

    def _flush(self) -> None:
        """Every pane's streamed tokens at once, so one frame paints them all (the screen's
        update timer, idle since the last frame, paints at once)."""
        flushed = False
        for pane in self.panes.values():
            if pane.has_pending:
                pane.flush()
                flushed = True
        if not flushed and self._flusher is not None:
            self._flusher.pause()

    # --- what the app tells us ------------------------------------------------------

    def sync_all(self) -> None:
        self.query_one(FleetSidebar).sync(self.legion.state.agents)
        self.query_one(EventsTicker).add(list(self.legion.state.ticker))
        for pane in self.panes.values():
            pane.show_title()

    async def apply(self, change: Change) -> None:
        sidebar = self.query_one(FleetSidebar)
        sidebar.sync(self.legion.state.agents, change.agents)
        panes = self.panes
        for name in change.agents:
            if name in panes:
                panes[name].show_title()
        for agent, op, item in coalesce(change.items):
            pane = panes.get(agent)
            if pane is not None:
                await pane.show_item(op, item)
                if pane.has_pending and self._flusher is not None:
                    self._flusher.resume()
        self.query_one(EventsTicker).add(change.ticks)

    # --- layout ----------------------------------------------------------------------

    def on_resize(self, event: Resize) -> None:
        self._layout(event.size.width)

    def _layout(self, width: int) -> None:
        narrow = width < NARROW
        self.set_class(narrow, "-narrow")
        grid = self.query_one(PaneGrid)
        grid.layout_for(width)
        if narrow and not grid.panes():
            self.add_class("-sidebar-shown")  # nothing else to show: the fleet, full width

    # --- panes -------------------------------------------------------------------------

    @on(FleetSidebar.OpenPane)
    async def open_pane(self, message: FleetSidebar.OpenPane) -> None:
        await self.open_agent(message.agent)

    async def open_agent(self, agent: str) -> AgentPane | None:
        if agent not in self.legion.state.agents:
            return None
        grid = self.query_one(PaneGrid)
        existing = grid.query(f"#pane-{agent}")
        if existing:
            pane = existing.first(AgentPane)
        else:
            for empty in grid.query("#empty"):
                await empty.remove()
            pane = AgentPane(self.legion.state.agents[agent])
            self.panes[agent] = pane
            await grid.mount(pane)
            self.remove_class("-sidebar-shown")
            self._layout(self.size.width)
        if grid.has_class("-zoomed"):
            self._zoom_to(pane)
        pane.focus_input()
        self.call_after_refresh(pane.focus_input)  # a pane mounted just now: after its compose
        return pane

    def _focused_pane(self) -> AgentPane | None:
        node = self.focused
        while node is not None and not isinstance(node, AgentPane):
            node = node.parent  # type: ignore[assignment]
        return node

    def _step(self, delta: int) -> None:
        panes = self.query_one(PaneGrid).panes()
        if not panes:
            return
        current = self._focused_pane()
        index = panes.index(current) if current in panes else -1
        target = panes[(index + delta) % len(panes)]
        if self.query_one(PaneGrid).has_class("-zoomed"):
            self._zoom_to(target)
        target.focus_input()

    def action_next_pane(self) -> None:
        self._step(1)

    def action_prev_pane(self) -> None:
        self._step(-1)

    def _zoom_to(self, pane: AgentPane) -> None:
        for other in self.query_one(PaneGrid).panes():
            other.set_class(other is pane, "-zoom")

    def action_zoom(self) -> None:
        grid = self.query_one(PaneGrid)
        pane = self._focused_pane() or next(iter(grid.panes()), None)
        if grid.has_class("-zoomed") or pane is None:
            grid.remove_class("-zoomed")
            return
        self._zoom_to(pane)
        grid.add_class("-zoomed")
        pane.focus_input()

    async def action_close_pane(self) -> None:
        pane = self._focused_pane()
        if pane is None:
            return
        self.panes.pop(pane.agent, None)
        await pane.remove()
        grid = self.query_one(PaneGrid)
        if not grid.panes():
            grid.remove_class("-zoomed")
            self.query_one(FleetSidebar).focus()
        else:
            grid.panes()[0].focus_input()
        self._layout(self.size.width)

    def action_toggle_sidebar(self) -> None:
        self.toggle_class("-sidebar-hidden" if not self.has_class("-narrow") else "-sidebar-shown")

    def action_focus_sidebar(self) -> None:
        if self.has_class("-narrow"):
            self.add_class("-sidebar-shown")
        self.query_one(FleetSidebar).focus()

    @on(AgentPane.Send)
    def send(self, message: AgentPane.Send) -> None:
        if message.steer:
            self.legion.steer(message.agent, message.text)
        else:
            self.legion.chat(message.agent, message.text)

    @on(FleetSidebar.Selected)
    async def selected(self, message: FleetSidebar.Selected) -> None:
        agent = getattr(message.item, "agent", None)
        if agent:
            if self.has_class("-narrow"):
                self.remove_class("-sidebar-shown")
            await self.open_agent(agent)
