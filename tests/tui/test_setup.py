"""The first-run setup screen (issue 9): no legion.toml, the TUI opens on setup; it writes a
valid config and a vault entry through `legion.setup`, the host applies it, and the starter
answers a chat. The key is masked and never kept, shown or written outside the vault."""

from __future__ import annotations

import pytest

from legion.config import parse_config
from legion.fleet.backend import FakeBackend
from legion.gateway.vault import Vault
from tests.fakes.provider import FakeProvider
from tests.fleetproc import agent_processes
from tui.screens.setup import SetupScreen
from tui.widgets.agent_pane import AgentPane, Reply

from .conftest import Starter

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

KEY = "sk-tui-setup-Hq3Jw7Kp2Lx9Mz4Nb6"


async def test_first_run_sets_up_and_starts_a_starter(tui: Starter, fake: FakeProvider) -> None:
    """issue 9: the setup flow writes a valid config and a vault entry, refuses a weak key
    with the reason, and the starter it starts answers a chat through the vault's key."""
    backend = FakeBackend()
    async with tui(first_run=True, runtimes=(), backend=backend) as run:
        await run.until(lambda: isinstance(run.app.screen, SetupScreen))
        screen = run.app.screen
        assert isinstance(screen, SetupScreen)
        key = screen.query_one("#key")
        assert key.password  # type: ignore[attr-defined]
        # an OpenAI-compatible endpoint (the fake provider), its model, the key
        screen.query_one("#provider").value = "compatible"  # type: ignore[attr-defined]
        await run.until(lambda: screen.query_one("#api-base").display)
        screen.query_one("#api-base").value = fake.base_url  # type: ignore[attr-defined]
        screen.query_one("#model").value = "fake"  # type: ignore[attr-defined]
        key.focus()
        await run.pilot.press(*"weak", "enter")  # refused, with the reason, nothing written
        await run.until(
            lambda: "the key was not accepted" in str(screen.query_one("#problems").render())
        )
        assert not run.paths.config.exists()
        key.value = ""  # type: ignore[attr-defined]
        await run.pilot.press(*KEY, "enter")
        await run.until(lambda: not isinstance(run.app.screen, SetupScreen), 30)
        assert key.value == ""  # type: ignore[attr-defined]
        await run.until(lambda: "assistant" in run.app.state.agents)
        config = parse_config(run.paths.config.read_text())
        assert config.llm.models["fake"].credential == "compatible"
        assert KEY not in run.paths.config.read_text()
        vault = Vault(run.paths.vault_db, run.paths.vault_key)
        try:
            assert vault.system_secret("compatible") == KEY
        finally:
            vault.close()
        await run.until(lambda: backend.starts.get("assistant") == 1)
        titles = lambda: [getattr(m, "title", "") for m in run.seen]  # noqa: E731
        await run.until(lambda: "setup: Start" in titles())
        shown = " ".join(str(getattr(m, "detail", "")) for m in run.seen)
        assert KEY not in shown
        with agent_processes(run.paths, ("assistant",)):
            await run.pilot.press("enter", *"hello", "enter")
            pane = run.app.fleet.query_one("#pane-assistant", AgentPane)
            await run.until(lambda: bool(run.events("agent_reply", "assistant")), 60)
            await run.until(lambda: bool(pane.query(Reply)))
        assert run.events("agent_reply", "assistant")[-1].text == "echo: hello"
        assert fake.requests[-1].headers["authorization"] == f"Bearer {KEY}"


async def test_skipping_the_setup_leaves_an_empty_fleet(tui: Starter) -> None:
    """issue 9: Escape leaves the setup; nothing is written."""
    async with tui(first_run=True, runtimes=(), backend=FakeBackend()) as run:
        await run.until(lambda: isinstance(run.app.screen, SetupScreen))
        await run.pilot.press("escape")
        await run.until(lambda: not isinstance(run.app.screen, SetupScreen))
        assert not run.paths.config.exists() and run.app.state.agents == {}
