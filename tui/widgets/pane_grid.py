"""Agent panes side by side in a grid; one column when narrow; zoom shows the focused one."""

from __future__ import annotations

from textual.containers import Grid

from tui.widgets.agent_pane import AgentPane


class PaneGrid(Grid):
    DEFAULT_CSS = """
    PaneGrid { grid-size: 2; grid-gutter: 0 1; height: 1fr; }
    PaneGrid.-cols-1 { grid-size: 1; }
    PaneGrid.-cols-3 { grid-size: 3; }
    PaneGrid.-zoomed { grid-size: 1; }
    PaneGrid.-zoomed > AgentPane { display: none; }
    PaneGrid.-zoomed > AgentPane.-zoom { display: block; }
    PaneGrid > #empty { column-span: 3; color: $text-muted; padding: 1 2; }
    """

    def panes(self) -> list[AgentPane]:
        return list(self.query(AgentPane))

    def layout_for(self, width: int) -> None:
        count = len(self.panes())
        cols = 1 if width < 100 or count <= 1 else (3 if width >= 170 and count >= 3 else 2)
        for n in (1, 2, 3):
            self.set_class(cols == n, f"-cols-{n}")
