"""One agent in the fleet sidebar: state, what it is doing, queue depth, spend gauge."""

from __future__ import annotations

from textual.content import Content
from textual.widget import Widget
from textual.widgets import ListItem

from tui.state import AgentView
from tui.text import safe
from tui.widgets.gauge import bar, level, money

STATE_STYLE = {
    "idle": "$success",
    "queued": "$accent",
    "thinking": "$primary",
    "tool": "$secondary",
    "starting": "$warning",
    "paused": "$warning",
    "failed": "$error",
    "stopped": "$text-muted",
}
LABEL = {"tool": "running a tool", "queued": "queued"}
GAUGE_STYLE = {"ok": "$success", "warn": "$warning", "over": "$error", "none": "$text-muted"}


def row_content(view: AgentView, width: int = 26) -> Content:
    activity = view.shown_activity
    label = LABEL.get(activity, activity)
    if view.refused:
        doing, style = view.refused, "$error"
    elif view.doing or activity == "failed":
        doing, style = view.doing or view.reason, "$text-muted"
    elif view.last_cron:
        doing, style = view.last_cron, "$warning"
    else:
        doing, style = view.automation(), "$text-muted"
    share = view.budget_share
    gauge_width = max(4, width - 18)
    lane = f"q{view.queue}" + (f"+{view.in_progress}" if view.in_progress else "")
    if view.steers:
        lane += f" s{view.steers}"
    return Content.assemble(
        ("● ", STATE_STYLE.get(activity, "")),
        (safe(view.name), "bold"),
        "  ",
        (label, STATE_STYLE.get(activity, "")),
        "\n  ",
        (safe(doing)[: width - 2] or "-", style),
        "\n  ",
        (bar(share, gauge_width), GAUGE_STYLE[level(share)]),
        f" {money(view.today_usd)} {lane}",
    )


class RowBody(Widget):
    """Renders its agent's view as it is now (the view is the state's, updated in place)."""

    DEFAULT_CSS = "RowBody { height: 3; width: 1fr; }"

    def __init__(self, view: AgentView) -> None:
        super().__init__()
        self.view = view

    def render(self) -> Content:
        return row_content(self.view, max(20, self.size.width))


class AgentRow(ListItem):
    DEFAULT_CSS = """
    AgentRow { height: 3; padding: 0 0 0 1; }
    """

    def __init__(self, view: AgentView) -> None:
        super().__init__(RowBody(view), id=f"agent-{view.name}", name=view.name)
        self.agent = view.name

    def show(self, view: AgentView) -> None:
        body = self.query_one(RowBody)
        body.view = view
        body.refresh()
