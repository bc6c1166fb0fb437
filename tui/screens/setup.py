"""First run (no legion.toml): a provider and model, the key into the vault, a starter fleet.

What it writes and checks is `legion.setup` (the same as `legion setup`). The key field is
masked, its value goes to the vault only (never to legion.toml, a log or a notification),
and the field is cleared once the key is stored. "Set up and start" writes the file, then
the host applies it (a config reload), which starts the starter's agents.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Input, Label, Select, Static

from legion.setup import PROVIDERS, STARTERS, Applied, Choice, SetupError, apply, problems
from tui.keys import bindings
from tui.text import plain
from tui.widgets.footer import LegionFooter

if TYPE_CHECKING:
    from tui.app import LegionApp


class SetupScreen(Screen[Applied | None]):
    CSS_PATH = "setup.tcss"
    BINDINGS = bindings("setup")

    @property
    def legion(self) -> LegionApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield self.legion.make_header()
        with VerticalScroll(id="setup"), Vertical(classes="dialog -wide"):
            yield Static(
                "Welcome to legion. No legion.toml yet: pick a model provider and a starter "
                "fleet. The key goes into the vault (encrypted, system tier), never into "
                "legion.toml. The same flow without the TUI: `legion setup`.",
                id="intro",
            )
            yield Label("provider")
            yield Select(
                [(p.label, p.id) for p in PROVIDERS.values()],
                value="openai",
                allow_blank=False,
                id="provider",
            )
            yield Label("model")
            yield Input(value=PROVIDERS["openai"].models[0], id="model")
            yield Label("endpoint URL (OpenAI-compatible)", id="api-base-label")
            yield Input(placeholder="http://127.0.0.1:11434/v1", id="api-base")
            yield Label("API key", id="key-label")
            yield Input(password=True, placeholder="pasted, never shown", id="key")
            yield Label("starter")
            yield Select(
                [(f"{name}: {what}", name) for name, what in STARTERS.items()],
                value="assistant",
                allow_blank=False,
                id="starter",
            )
            yield Label("each agent's daily budget, USD")
            yield Input(value="1.0", id="daily")
            yield Static(id="problems")
            with Horizontal(classes="-buttons"):
                yield Button("Set up and start", variant="primary", id="apply")
                yield Button("Skip", id="skip")
        yield LegionFooter()

    def on_mount(self) -> None:
        if self.app.is_headless:
            for field in self.query(Input):
                field.cursor_blink = False  # snapshots: the same frame every run
        self._show_provider("openai")
        self.query_one("#key", Input).focus()

    def _show_provider(self, provider: str) -> None:
        spec = PROVIDERS[provider]
        for name in ("#api-base", "#api-base-label"):
            self.query_one(name).display = spec.compatible
        optional = "" if spec.key_required else " (none for a local server)"
        self.query_one("#key-label", Label).update(f"{spec.label} API key{optional}")

    @on(Select.Changed, "#provider")
    def provider_changed(self, event: Select.Changed) -> None:
        provider = str(event.value)
        if provider in PROVIDERS:
            self._show_provider(provider)
            self.query_one("#model", Input).value = PROVIDERS[provider].models[0]

    def choice(self) -> Choice:
        daily_text = self.query_one("#daily", Input).value.strip()
        try:
            daily = float(daily_text) if daily_text else 1.0
        except ValueError:
            daily = float("nan")  # problems() says what to write
        return Choice(
            provider=str(self.query_one("#provider", Select).value),
            model=self.query_one("#model", Input).value.strip(),
            starter=str(self.query_one("#starter", Select).value),
            api_base=self.query_one("#api-base", Input).value.strip() or None,
            key=self.query_one("#key", Input).value or None,
            daily_usd=daily,
        )

    def show_problems(self, found: list[str]) -> None:
        self.query_one("#problems", Static).update(plain("\n".join(f"✖ {p}" for p in found)))

    @on(Input.Submitted)
    def submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.run_setup()

    @on(Button.Pressed, "#apply")
    def pressed_apply(self) -> None:
        self.run_setup()

    @on(Button.Pressed, "#skip")
    def action_skip(self) -> None:
        self.dismiss(None)

    def run_setup(self) -> None:
        choice = self.choice()
        if self.query_one("#provider", Select).value not in PROVIDERS:
            return
        if not PROVIDERS[choice.provider].compatible:
            choice.api_base = None  # the field is hidden: what it may hold is not asked for
        found = problems(choice)
        if found:
            self.show_problems(found)
            return
        self.show_problems([])
        self.query_one("#apply", Button).disabled = True
        self._apply(choice)

    @work(exclusive=True, group="setup", exit_on_error=False)
    async def _apply(self, choice: Choice) -> None:
        client = await self.legion.client_ready()
        try:
            applied = await asyncio.to_thread(apply, client.paths, choice)
        except SetupError as exc:
            self.show_problems(exc.problems)
            self.query_one("#apply", Button).disabled = False
            return
        finally:
            choice.key = None
        self.query_one("#key", Input).value = ""  # the key lives in the vault only
        self.dismiss(applied)
