"""The blackboard browser: keys with version, writer, TTL and claim; the value of the selected
key beside them. Refreshes itself when the blackboard changes."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Static

from tui.keys import bindings
from tui.messages import ActionDone, Loaded
from tui.text import block, safe
from tui.widgets.footer import LegionFooter

if TYPE_CHECKING:
    from tui.app import LegionApp


def _when(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts).strftime("%m-%d %H:%M:%S")


class BlackboardScreen(Screen[None]):
    CSS_PATH = "blackboard.tcss"
    BINDINGS = bindings("blackboard")

    @property
    def legion(self) -> LegionApp:
        return self.app  # type: ignore[return-value]

    def __init__(self) -> None:
        super().__init__()
        self.entries: dict[str, Any] = {}
        self.claims: dict[str, Any] = {}

    def compose(self) -> ComposeResult:
        yield self.legion.make_header()
        yield Static("blackboard", id="heading")
        with Horizontal(id="bb-body"):
            table: DataTable[Text] = DataTable(id="keys", cursor_type="row", zebra_stripes=True)
            table.add_columns("key", "ver", "writer", "updated", "expires", "claim")
            yield table
            with VerticalScroll(id="value-box"):
                yield Static("", id="value")
        yield LegionFooter()

    def on_mount(self) -> None:
        self.query_one("#keys", DataTable).focus()
        self.action_refresh()

    def on_screen_resume(self) -> None:
        self.action_refresh()

    @work(exclusive=True, group="blackboard-load", exit_on_error=False)
    async def action_refresh(self) -> None:
        client = await self.legion.client_ready()
        listing = await client.bb_list()
        claims = await client.claims()
        self.post_message(Loaded("blackboard", (listing, claims)))

    @on(Loaded)
    def loaded(self, message: Loaded) -> None:
        if message.kind != "blackboard":
            return
        listing, claims = message.data
        self.entries = {e.key: e for e in listing.entries}
        self.claims = {c.key: c for c in claims.claims}
        table = self.query_one("#keys", DataTable)
        selected = self._selected()
        table.clear()
        for key in sorted(set(self.entries) | set(self.claims)):
            entry = self.entries.get(key)
            claim = self.claims.get(key)
            table.add_row(
                Text(safe(key)),
                Text(str(entry.version) if entry else "-"),
                Text(safe(entry.writer) if entry else "-"),
                Text(_when(entry.updated_at) if entry else "-"),
                Text(_when(entry.expires_at) if entry else "-"),
                Text(f"{safe(claim.owner)} until {_when(claim.expires_at)}" if claim else "-"),
                key=key,
            )
        count = len(self.entries)
        self.query_one("#heading", Static).update(
            f"blackboard · {count} key{'s' if count != 1 else ''} · {len(self.claims)} claimed"
        )
        if selected in self.entries:
            table.move_cursor(row=table.get_row_index(selected))
        self._show(self._selected())

    def _selected(self) -> str | None:
        table = self.query_one("#keys", DataTable)
        if not table.row_count:
            return None
        try:
            return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
        except Exception:
            return None

    def _show(self, key: str | None) -> None:
        box = self.query("#value").results(Static)
        target = next(box, None)
        if target is None:
            return  # not composed yet; `loaded` shows it
        entry = self.entries.get(key) if key else None
        if entry is None:
            target.update("(no key selected)")
            return
        value = json.dumps(entry.value, indent=2, ensure_ascii=False, default=str)
        target.update(block(f"{entry.key}  v{entry.version}\n\n{value}"))

    @on(DataTable.RowHighlighted)
    def highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show(str(event.row_key.value) if event.row_key is not None else None)

    def action_delete_key(self) -> None:
        key = self._selected()
        if key is not None:
            self.legion.confirm_then(
                f"Delete blackboard key {key!r}?",
                "blackboard: Delete",
                f"bb-{key}",
                lambda client: self._delete(client, key),
            )

    async def _delete(self, client: Any, key: str) -> str:
        result = await client.bb_delete(key)
        return f"deleted {key}" if result.deleted else f"{key} was already gone"

    @on(ActionDone)
    def done(self, message: ActionDone) -> None:
        if message.title.startswith("blackboard"):
            self.action_refresh()
