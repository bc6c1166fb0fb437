"""`?`: every key, by where it applies, after the remapping of `[tui.keys]`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.keys import format_key
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from tui.keys import bindings, effective

if TYPE_CHECKING:
    from tui.app import LegionApp

SCOPES = {
    "app": "everywhere",
    "fleet": "fleet screen",
    "sidebar": "fleet sidebar",
    "pane": "agent pane",
    "blackboard": "blackboard",
    "audit": "audit log",
    "browser": "browser panel",
    "setup": "first-run setup",
    "form": "forms",
    "confirm": "questions",
    "readout": "read-outs",
}


def show_keys(keys: str) -> str:
    return " / ".join(format_key(k.strip()) for k in keys.split(","))


class HelpScreen(ModalScreen[None]):
    CSS_PATH = "help.tcss"
    BINDINGS = bindings("readout")

    def compose(self) -> ComposeResult:
        app: LegionApp = self.app  # type: ignore[assignment]
        with Vertical(id="help"):
            yield Static(
                'Keys (remap them in legion.toml [tui.keys]: id = "key"). '
                "Ctrl+P opens every command by name.",
                id="intro",
            )
            table: DataTable[Text] = DataTable(id="keys", cursor_type="row", zebra_stripes=True)
            table.add_columns("where", "key", "id", "what it does")
            for scope, binding_id, keys, tooltip in effective(app.key_overrides):
                table.add_row(
                    Text(SCOPES.get(scope, scope)),
                    Text(show_keys(keys)),
                    Text(binding_id),
                    Text(tooltip),
                )
            yield table

    def on_mount(self) -> None:
        self.query_one(DataTable).focus()

    def action_close(self) -> None:
        self.dismiss(None)
