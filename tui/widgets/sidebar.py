"""The fleet sidebar: every agent, one row each; Enter opens its pane."""

from __future__ import annotations

from typing import Any

from textual.message import Message
from textual.widgets import ListView

from tui.keys import bindings
from tui.state import AgentView
from tui.widgets.agent_row import AgentRow


class FleetSidebar(ListView):
    BINDINGS = bindings("sidebar")
    DEFAULT_CSS = """
    FleetSidebar {
        width: 32; height: 1fr; border-right: vkey $foreground 20%; background: $surface;
    }
    FleetSidebar:focus { border-right: vkey $primary; }
    """

    class OpenPane(Message):
        def __init__(self, agent: str) -> None:
            super().__init__()
            self.agent = agent

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rows: dict[str, AgentRow] = {}  # by agent: no DOM query per batch of events

    def sync(self, views: dict[str, AgentView], changed: set[str] | None = None) -> None:
        """Add, remove and refresh rows (only `changed` ones, when given). A batch that
        changed no agent (a burst of tokens) costs a comparison of names, nothing else."""
        rows = self._rows
        if changed is not None and not changed and views.keys() == rows.keys():
            return
        for name in [n for n in rows if n not in views]:
            rows.pop(name).remove()
        for name in sorted(views):
            if name not in rows:
                rows[name] = row = AgentRow(views[name])
                self.append(row)
            elif changed is None or name in changed:
                rows[name].show(views[name])
        if self.index is None and views:
            self.index = 0

    def selected_agent(self) -> str | None:
        item = self.highlighted_child
        return item.agent if isinstance(item, AgentRow) else None

    def action_open_pane(self) -> None:
        agent = self.selected_agent()
        if agent is not None:
            self.post_message(self.OpenPane(agent))
