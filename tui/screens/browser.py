"""The browser panel (F10): each agent's browser (state, page, last action, waiting for a
human with the reason) and, for the selected agent, the details and the VNC hand-off: the
link with its `ssh -L` hint after `h`, and `d` to resume the agent when you are done.

The panel only shows `BrowserDesk.board` (tui/browser.py), which the app keeps current
from the host's events whether or not the panel is on screen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.style import Style
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from tui.browser import BrowserView, key_of, line, stamp
from tui.keys import bindings

if TYPE_CHECKING:
    from tui.app import LegionApp

COLUMNS = (("agent", "agent"), ("browser", "browser"), ("human", "human"), ("last", "last action"))
PAGE_CELL = 120  # at most this many characters of a page's title (or URL) in its row
OTHER_COLUMNS = 48  # what the other columns of a row take, about: the page gets the rest
TITLE_SHOWN = 300
URL_SHOWN = 600
REASON_SHOWN = 600


class BrowserScreen(Screen[None]):
    CSS_PATH = "browser.tcss"
    BINDINGS = bindings("browser")

    @property
    def legion(self) -> LegionApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield self.legion.make_header()
        yield Static("", id="summary")
        table: DataTable[Text] = DataTable(id="browsers", cursor_type="row", zebra_stripes=True)
        for key, label in COLUMNS:
            table.add_column(label, key=key)
        table.add_column("page", key="page")
        yield table
        with VerticalScroll(id="detail-box"):
            yield Static("", id="detail")
        yield Footer()

    def on_mount(self) -> None:
        self.show()
        self.query_one("#browsers", DataTable).focus()
        self.legion.browser.load()

    def on_screen_resume(self) -> None:
        self.show()
        self.legion.browser.load()

    # --- showing the board --------------------------------------------------------------

    def _style(self, variable: str, bold: bool = False) -> Style:
        """A theme colour for Rich text (`muted` is dim text: the theme's is not a colour)."""
        if variable == "muted":
            return Style(dim=True, bold=bold)
        return Style(color=self.app.theme_variables.get(variable), bold=bold)

    def _cells(self, view: BrowserView) -> list[Text]:
        if not view.enabled:
            state = Text("off", style=self._style("muted"))
        elif view.state == "failed":
            state = Text("failed", style=self._style("error", bold=True))
        else:
            state = Text(view.state)
        if view.waiting:
            human = Text("WAITING", style=self._style("warning", bold=True))
        elif view.handoff_expires_at:
            human = Text("link open", style=self._style("accent"))
        else:
            human = Text("-")
        if view.last_action is None:
            last = Text("-")
        else:
            mark = {True: " ✓", False: " ✗", None: ""}[view.last_ok]
            last = Text(line(view.last_action, 12) + mark)
            if view.last_ok is False:
                last.stylize(self._style("error"))
        width = max(16, min(PAGE_CELL, self.size.width - OTHER_COLUMNS))
        page = line(view.title or view.url or "-", width)
        return [Text(line(view.agent, 32)), state, human, last, Text(page)]

    def show(self, agents: set[str] | None = None) -> None:
        """Show the board; `agents` names the rows that changed (None: all of them)."""
        board = self.legion.browser.board
        table = self.query_one("#browsers", DataTable)
        names = sorted(board.views)
        selected = self.legion.browser.select or self.selected()
        self.legion.browser.select = None
        if [str(k.value) for k in table.rows] != names:
            table.clear()
            for name in names:
                table.add_row(*self._cells(board.views[name]), key=name)
        else:
            for name in names if agents is None else sorted(agents & set(names)):
                for (key, _), cell in zip(
                    [*COLUMNS, ("page", "")], self._cells(board.views[name]), strict=True
                ):
                    table.update_cell(name, key, cell)
        if selected in board.views:
            table.move_cursor(row=names.index(selected))
        self._summary()
        self._detail()

    def _summary(self) -> None:
        board = self.legion.browser.board
        cap = f"of at most {board.max_running} " if board.max_running is not None else ""
        waiting = [v.agent for v in board.waiting()]
        text = Text(f"browsers · {board.running} {cap}running")
        if waiting:
            who = ", ".join(waiting[:4]) + (
                f" and {len(waiting) - 4} more" if len(waiting) > 4 else ""
            )
            text.append(" · ")
            text.append(
                f"{who} {'waits' if len(waiting) == 1 else 'wait'} for a human",
                style=self._style("warning", bold=True),
            )
        if not board.loaded:
            text = Text("browsers · reading them from the host...")
        self.query_one("#summary", Static).update(text)

    def selected(self) -> str | None:
        table = self.query_one("#browsers", DataTable)
        if table.row_count == 0:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return str(row_key.value) if row_key.value is not None else None

    def _detail(self) -> None:
        detail = self.query_one("#detail", Static)
        agent = self.selected()
        view = self.legion.browser.board.views.get(agent) if agent else None
        if view is None:
            detail.update(Text("No agents in legion.toml yet."))
            return
        self.legion.browser.board.drop_expired(view)
        out = Text()
        label = self._style("muted")

        def row(name: str, value: str | Text) -> None:
            out.append(f"\n{name:<7}", style=label)
            out.append(value)

        out.append(line(view.agent, 32), style=Style(bold=True))
        if not view.enabled:
            out.append(" · browser off: can_use_browser = false for this agent")
        else:
            out.append(f" · {view.state}")
            if view.reason:
                out.append(f" ({line(view.reason, 200)})")
        row("page", line(view.title, TITLE_SHOWN) or "-")
        row("url", line(view.url, URL_SHOWN) or "-")
        if view.last_action is not None:
            outcome = {True: " · ok", False: " · failed", None: ""}[view.last_ok]
            error = f" ({line(view.last_error, 80)})" if view.last_error else ""
            row(
                "last",
                f"{line(view.last_action, 20)} at {stamp(view.last_action_at)}{outcome}{error}",
            )
        if view.waiting:
            since = f" since {stamp(view.human_since)}" if view.human_since else ""
            asks = Text(f"WAITING{since}: ", style=self._style("warning", bold=True))
            asks.append(line(view.human_reason, REASON_SHOWN) or "(no reason given)")
            row("human", asks)
        if view.link is not None:  # on lines of their own: the operator copies them
            row(
                "VNC",
                f"a link valid until {stamp(view.link.expires_at)} "
                f"({key_of(self.legion, 'browser-copy')} copies it); from a laptop, first:",
            )
            out.append("\n" + line(view.link.ssh_hint, 500))  # the host's, shown safe anyway
            out.append("\n")
            out.append(line(view.link.link, 2000), style=self._style("accent"))
        elif view.handoff_expires_at:
            row(
                "VNC",
                f"a link is open until {stamp(view.handoff_expires_at)} (made elsewhere; "
                f"{key_of(self.legion, 'browser-handoff')} makes one for you)",
            )
        if view.enabled:
            hand, done = key_of(self.legion, "browser-handoff"), key_of(self.legion, "browser-done")
            hint = (
                f"{hand}: hand off (a VNC link: log in, solve it), then {done}: resume the agent"
                if view.waiting
                else f"{hand}: watch or drive it over VNC · {done}: end a hand-off"
            )
            out.append("\n\n")
            out.append(hint, style=label)
        detail.update(out)

    def on_resize(self) -> None:
        if self.is_mounted:
            self.show()  # the page column takes what the width leaves

    @on(DataTable.RowHighlighted, "#browsers")
    def highlighted(self) -> None:
        self._detail()

    # --- keys -----------------------------------------------------------------------------

    def _agent(self) -> str | None:
        agent = self.selected()
        if agent is None:
            self.notify("no agent selected", severity="warning", markup=False)
        return agent

    def action_handoff(self) -> None:
        if (agent := self._agent()) is not None:
            self.legion.browser.handoff(agent)

    def action_done(self) -> None:
        if (agent := self._agent()) is not None:
            self.legion.browser.resume(agent)

    def action_stop(self) -> None:
        if (agent := self._agent()) is not None:
            self.legion.browser.stop(agent)

    def action_copy_link(self) -> None:
        if (agent := self._agent()) is not None:
            self.legion.browser.copy_link(agent)

    def action_refresh(self) -> None:
        self.legion.browser.load()
