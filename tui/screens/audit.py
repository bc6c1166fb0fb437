"""The audit log: newest records, filterable by agent (actor) and decision, with the result of
verifying the hash chain."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from rich.style import Style
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, Input, Static

from tui.keys import bindings
from tui.messages import Loaded
from tui.text import safe
from tui.widgets.footer import LegionFooter

if TYPE_CHECKING:
    from tui.app import LegionApp

PAGE = 300


class AuditScreen(Screen[None]):
    CSS_PATH = "audit.tcss"
    BINDINGS = bindings("audit")

    @property
    def legion(self) -> LegionApp:
        return self.app  # type: ignore[return-value]

    def __init__(self) -> None:
        super().__init__()
        self.denied_only = False
        self.verdict = "not verified yet (Ctrl+V)"

    def compose(self) -> ComposeResult:
        yield self.legion.make_header()
        with Horizontal(id="filters"):
            yield Static("agent", classes="-label")
            yield Input(placeholder="all (type a name, Enter)", id="actor")
            yield Static("", id="decision")
        yield Static("", id="verdict")
        table: DataTable[Text] = DataTable(id="records", cursor_type="row", zebra_stripes=True)
        table.add_columns("seq", "time", "actor", "action", "target", "decision", "detail")
        yield table
        yield LegionFooter()

    def on_mount(self) -> None:
        self._show_filters()
        self.query_one("#records", DataTable).focus()  # the keys act on it; Tab for the filter
        self.action_refresh()

    def on_screen_resume(self) -> None:
        self.action_refresh()

    def _show_filters(self) -> None:
        self.query_one("#decision", Static).update(
            "decision: deny only (Ctrl+D)" if self.denied_only else "decision: all (Ctrl+D)"
        )
        self.query_one("#verdict", Static).update(f"chain: {self.verdict}")

    @work(exclusive=True, group="audit-load", exit_on_error=False)
    async def action_refresh(self) -> None:
        client = await self.legion.client_ready()
        actor = self.query_one("#actor", Input).value.strip() or None
        page = await client.audit(
            actor=actor, decision="deny" if self.denied_only else None, limit=PAGE
        )
        self.post_message(Loaded("audit", page))

    @work(exclusive=True, group="audit-verify", exit_on_error=False)
    async def action_verify(self) -> None:
        client = await self.legion.client_ready()
        self.post_message(Loaded("audit-verdict", await client.audit_verify()))

    def action_toggle_denied(self) -> None:
        self.denied_only = not self.denied_only
        self._show_filters()
        self.action_refresh()

    @on(Input.Submitted, "#actor")
    def actor_changed(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_refresh()
        self.query_one("#records", DataTable).focus()

    @on(Loaded)
    def loaded(self, message: Loaded) -> None:
        if message.kind == "audit-verdict":
            v = message.data
            self.verdict = (
                f"ok · {v.checked} records · head {v.head_hash[:16]}"
                if v.ok
                else f"BROKEN at seq {v.bad_seq}: {v.reason} ({v.checked} intact before it)"
            )
            self.query_one("#verdict", Static).set_class(not v.ok, "-broken")
            self._show_filters()
            return
        if message.kind != "audit":
            return
        table = self.query_one("#records", DataTable)
        table.clear()
        deny = Style(color=self.app.theme_variables.get("error"), bold=True)
        for r in reversed(message.data.records):  # newest first
            style = deny if r.decision == "deny" else ""
            reason = r.detail.get("reason") or r.detail.get("code") or ""
            table.add_row(
                Text(str(r.seq)),
                Text(datetime.fromtimestamp(r.ts).strftime("%m-%d %H:%M:%S")),
                Text(safe(r.actor)),
                Text(safe(r.action)),
                Text(safe(r.target)[:60]),
                Text(r.decision, style=style),
                Text(safe(str(reason))[:60]),
            )
