"""What the operator sees in the browser panel (issue 13): SVG snapshots at 80x24 and 120x40.

Deterministic like tests/tui/test_snapshots.py: a fixed home path, the host's and the TUI's
clocks injected (2026-01-01 12:00 UTC), and fixed browser state set in the host's own browser
service (its slots, and the events its code publishes). `pytest --snapshot-update` rewrites
them after a change you have looked at.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from legion.api.hostclient import open_host
from legion.fleet.backend import FakeBackend
from legion.host import Host
from legion.paths import Paths
from tests.fakes.provider import FakeProvider
from tests.fleetproc import prepare_home
from tests.tui.test_browser_panel import ask_for_a_human, browser_config, start_browser
from tests.tui.test_snapshots import NOW, SIZES, clock, ready, until
from tui.app import LegionApp

pytestmark = pytest.mark.slow

HOME = Path("/tmp/lg-snapshots")  # fixed: the header shows it


@pytest.fixture
def browser_home() -> Iterator[Paths]:
    shutil.rmtree(HOME, ignore_errors=True)
    with FakeProvider() as fake:
        yield prepare_home(HOME, browser_config(fake.base_url))
    shutil.rmtree(HOME, ignore_errors=True)


@pytest.mark.parametrize("size", SIZES, ids=["80x24", "120x40"])
def test_browser_panel_with_an_agent_waiting_for_a_human(
    snap_compare: Any, browser_home: Paths, size: tuple[int, int]
) -> None:
    """The browser panel (F10). You should see: "browsers · 2 of at most 4 running · alice
    waits for a human" with the last part in the warning colour; a table of alice (running,
    WAITING in bold warning colour, navigate ✓, "Shop login"), bob (running, -, click ✗ in
    the error colour, his page title shown literally with its escape sequence as
    `\\x1b]0;pwned\\x07` and `[bold red]...[/]` as typed, not as markup) and carol (off);
    alice's row selected, and under the table her detail: "alice · running (started in
    1.2s)", page, url http://127.0.0.1:8123/login, last "navigate at 12:00:00 · ok", "human
    WAITING since 12:00:00: please log in to the shop (2FA code on the ops phone)", and the
    hint "h: hand off ..., then d: resume the agent"; the footer with h Hand off, d Resume."""
    hosts: list[Host] = []
    app = LegionApp(
        lambda: open_host(browser_home, clock=clock, runtime=FakeBackend(), on_host=hosts.append),
        home=str(browser_home.home),
        clock=clock,
        refresh_s=3600,
    )

    async def run_before(pilot: Pilot[Any]) -> None:
        await ready(pilot)
        host = hosts[0]
        browsers = host.browsers
        for agent, seconds in (("alice", 1.2), ("bob", 0.9)):
            start_browser(host, agent, f"started in {seconds}s")
        alice = browsers.slot("alice")
        alice.url, alice.title = "http://127.0.0.1:8123/login", "Shop login"
        browsers._acted(alice, "navigate", ok=True)
        bob = browsers.slot("bob")
        bob.url = "http://127.0.0.1:8123/next"
        bob.title = "\x1b]0;pwned\x07[bold red]Totally normal page[/]"
        browsers._acted(bob, "click", ok=False, error="stale_ref")
        ask_for_a_human(host, "alice", "please log in to the shop (2FA code on the ops phone)")
        board = app.browser.board
        await until(
            pilot,
            lambda: (
                board.loaded
                and board.running == 2
                and board.views["alice"].waiting
                and board.views["bob"].last_ok is False
                and not app.browser._reload_pending
            ),
        )
        await pilot.press("f10")
        await until(pilot, lambda: app.screen.__class__.__name__ == "BrowserScreen")
        await until(pilot, lambda: app.screen.query_one("#browsers").row_count == 3)  # type: ignore[attr-defined]
        assert board.views["alice"].last_action_at == NOW
        app.clear_notifications()  # the toast is tested in test_browser_panel.py
        await pilot.pause()

    assert snap_compare(app, terminal_size=size, run_before=run_before)
