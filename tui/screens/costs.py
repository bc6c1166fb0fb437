"""Fleet cost gauges: today and this month, fleet-wide and per agent, against the caps, with
the latest refusals (who was refused and why)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Static

from tui.text import plain
from tui.widgets.footer import LegionFooter
from tui.widgets.gauge import SpendGauge

if TYPE_CHECKING:
    from tui.app import LegionApp


class CostsScreen(Screen[None]):
    CSS_PATH = "costs.tcss"

    @property
    def legion(self) -> LegionApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield self.legion.make_header()
        with VerticalScroll(id="costs"):
            yield Static("fleet", classes="-heading")
            yield SpendGauge("today", id="fleet-today")
            yield SpendGauge("this month", id="fleet-month")
            yield Static(
                "agents (today against the daily cap, month against the monthly cap)",
                classes="-heading",
            )
            yield VerticalScroll(id="agents")
            yield Static("refusals", classes="-heading")
            yield Static("none", id="refusals")
        yield LegionFooter()

    def on_mount(self) -> None:
        self.show()
        self.legion.load_costs()

    def on_screen_resume(self) -> None:
        self.legion.load_costs()

    def show(self) -> None:
        state = self.legion.state
        self.query_one("#fleet-today", SpendGauge).show(state.fleet_today, state.fleet_cap)
        self.query_one("#fleet-month", SpendGauge).show(state.fleet_month, None)
        box = self.query_one("#agents", VerticalScroll)
        have = {g.id for g in box.query(SpendGauge)}
        for name in sorted(state.agents):
            if f"today-{name}" not in have:
                box.mount(SpendGauge(f"{name} today", id=f"today-{name}"))
                box.mount(SpendGauge(f"{name} month", id=f"month-{name}"))
        for gauge in list(box.query(SpendGauge)):
            agent = (gauge.id or "").split("-", 1)[1]
            view = state.agents.get(agent)
            if view is None:
                gauge.remove()
            elif gauge.id and gauge.id.startswith("today-"):
                gauge.show(view.today_usd, view.daily_cap)
            else:
                gauge.show(view.month_usd, view.monthly_cap)
        refused = [f"{v.name}: {v.refused}" for v in state.agents.values() if v.refused]
        self.query_one("#refusals", Static).update(plain("\n".join(refused) or "none"))
        self.query_one("#refusals", Static).set_class(bool(refused), "-refused")
