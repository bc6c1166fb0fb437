"""issue 13: the TUI's browser panel, against a real host.

Without Docker, the browser state comes from the host's own browser service (`host.browsers`:
its slots, and the events its code publishes on the host's bus), and the operator's keys and
commands go through the real control routes (done, stop, hand-off and its error). The docker
test (tests/browser/test_browser_panel_docker.py) runs a real browser container.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from rich.text import Text
from textual.widgets import DataTable, Static

from legion.api.hostclient import open_host
from legion.fleet.backend import FakeBackend
from legion.host import Host
from legion.mesh import audit
from legion.wire.events import BrowserActed, BrowserHandoff
from tests.fakes.provider import FakeProvider
from tests.fleetproc import fleet_config, prepare_home
from tui.app import LegionApp
from tui.screens.browser import OTHER_COLUMNS, BrowserScreen
from tui.screens.dialogs import ConfirmScreen, FormScreen

from .conftest import Run, Starter

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def browser_config(base_url: str, extra: str = "") -> str:
    """alice and bob may use a browser, carol may not."""
    text = fleet_config(base_url, ("alice", "bob", "carol"), extra)
    for name in ("alice", "bob"):
        section = f"[agents.{name}.permissions]\n"
        text = text.replace(section, section + "can_use_browser = true\n")
    return text


@asynccontextmanager
async def panel(
    home: Path,
    config_text: str,
    *,
    runtime: Any = None,
    clock: Callable[[], float] | None = None,
    size: tuple[int, int] = (120, 40),
    keys: dict[str, str] | None = None,
) -> AsyncIterator[tuple[Run, Host]]:
    """The app on an embedded host (in this loop), with the host itself for the test."""
    paths = prepare_home(home, config_text)
    hosts: list[Host] = []
    kw: dict[str, Any] = {"clock": clock} if clock is not None else {}
    app = LegionApp(
        lambda: open_host(paths, runtime=runtime or FakeBackend(), on_host=hosts.append, **kw),
        home=str(home),
        refresh_s=0.5,
        keys=keys,
        **kw,
    )
    seen: list[Any] = []
    try:
        async with app.run_test(size=size, message_hook=seen.append) as pilot:
            run = Run(app, pilot, paths, seen)
            await run.until(
                lambda: app.loaded.is_set() and app.subscribed.is_set() and app.browser.board.loaded
            )
            yield run, hosts[0]
            await app.shutdown_host()
    finally:
        await app.shutdown_host()


def toasts(app: LegionApp) -> list[Any]:
    return list(app._notifications)


def toast(app: LegionApp, title_part: str) -> Any | None:
    return next((n for n in toasts(app) if title_part in (n.title or "")), None)


def cell(screen: BrowserScreen, agent: str, column: str) -> str:
    value = screen.query_one("#browsers", DataTable).get_cell(agent, column)
    return value.plain if isinstance(value, Text) else str(value)


def detail(screen: BrowserScreen) -> str:
    rendered = screen.query_one("#detail", Static).render()
    return rendered.plain if isinstance(rendered, Text) else str(rendered)


async def open_panel(run: Run) -> BrowserScreen:
    await run.pilot.press("f10")
    await run.until(lambda: isinstance(run.app.screen, BrowserScreen))
    screen = run.app.screen
    assert isinstance(screen, BrowserScreen)
    await run.until(lambda: screen.query_one("#browsers", DataTable).row_count == 3)
    return screen


async def select(run: Run, screen: BrowserScreen, agent: str) -> None:
    table = screen.query_one("#browsers", DataTable)
    table.move_cursor(row=sorted(run.app.browser.board.views).index(agent))
    await run.until(lambda: screen.selected() == agent)


def start_browser(host: Host, agent: str, reason: str) -> Any:
    """The host's browser service marks `agent`'s browser running, as after a start (the
    `browser_state` event comes from its own code). There is no container here, so the slot
    is held busy, as during an action: the host's reaper, which stops a running browser whose
    container went away, leaves it alone for the test."""
    slot = host.browsers.slot(agent)
    slot.busy += 1
    host.browsers._set(slot, "running", reason)
    return slot


def ask_for_a_human(host: Host, agent: str, reason: str) -> Any:
    """What `browser_request_human` does once the agent's browser runs: the slot waits for
    the operator and the host publishes the request (legion/browser/human.py)."""
    from legion.browser.human import Human

    slot = host.browsers.slot(agent)
    if slot.human is None:  # asking again while waiting keeps the first request
        slot.human = Human(reason, host.clock())
    host.bus.publish(
        BrowserHandoff(at=host.clock(), agent=agent, state="requested", reason=reason, url=slot.url)
    )
    return slot.human


async def test_the_panel_follows_the_host_and_the_keys_act_on_it(
    home: Path, fake: FakeProvider
) -> None:
    """issue 13: the browser panel lists every agent's browser from the host, follows its
    browser events live (state, page, last action, waiting for a human with the reason),
    raises a notification when an agent asks for a human, and `d` (with a note) ends the
    hand-off through the host: audited, the waiting agent is told the note, the row clears.
    `h` without a container runtime says why, with the host's error code."""
    async with panel(home, browser_config(fake.base_url)) as (run, host):
        screen = await open_panel(run)
        assert cell(screen, "carol", "browser") == "off"
        assert cell(screen, "alice", "browser") == "stopped"
        # the host's browser service starts alice's browser and she acts in it
        slot = start_browser(host, "alice", "started in 1.2s")
        slot.url, slot.title = "http://127.0.0.1:8123/login", "Shop login"
        host.browsers._acted(slot, "navigate", ok=True)
        await run.until(lambda: cell(screen, "alice", "last") == "navigate ✓")
        assert cell(screen, "alice", "browser") == "running"
        assert cell(screen, "alice", "page") == "Shop login"
        await select(run, screen, "alice")
        assert "http://127.0.0.1:8123/login" in detail(screen)
        assert "running (started in 1.2s)" in detail(screen)
        # she asks for a human: a notification, the row and the detail say so
        human = ask_for_a_human(host, "alice", "please log in to the shop")
        await run.until(lambda: toast(run.app, "alice asks for a human") is not None)
        notice = toast(run.app, "alice asks for a human")
        assert "please log in to the shop" in notice.message and notice.severity == "warning"
        assert "f10" in notice.message.lower() and "h hands off" in notice.message
        await run.until(lambda: cell(screen, "alice", "human") == "WAITING")
        assert "WAITING since" in detail(screen) and "please log in to the shop" in detail(screen)
        assert "alice waits for a human" in str(screen.query_one("#summary", Static).render())
        # asking again while waiting raises no second notification
        ask_for_a_human(host, "alice", "please log in to the shop")
        await run.until(lambda: len(run.events("browser_handoff", "alice")) == 2)
        await run.pilot.pause(0.1)
        assert len([n for n in toasts(run.app) if "asks for a human" in n.title]) == 1
        # d: a note, Enter; the host ends the hand-off
        await run.pilot.press("d")
        await run.until(lambda: isinstance(run.app.screen, FormScreen))
        await run.pilot.press(*"logged in as ops", "enter")
        await run.until(lambda: human.done.is_set())
        assert human.note == "logged in as ops"
        await run.until(lambda: cell(screen, "alice", "human") == "-")
        assert "WAITING" not in detail(screen)
        records = [r for r in audit.query(host.store.conn) if r.action == "browser.handoff_done"]
        assert [(r.actor, r.target, r.detail["note"]) for r in records] == [
            ("operator", "alice", "logged in as ops")
        ]
        assert run.events("browser_handoff", "alice")[-1].state == "done"
        # h: the host cannot start a browser here; the error says so
        await run.pilot.press("h")
        await run.until(lambda: toast(run.app, "browser: Hand off alice") is not None)
        failed = toast(run.app, "browser: Hand off alice")
        assert failed.severity == "error" and "no_browser_runtime" in failed.message


async def test_palette_commands_act_on_the_host(home: Path, fake: FakeProvider) -> None:
    """issue 13: `browser: Stop NAME` asks, then stops the browser through the host (audited,
    the panel shows it stopped); `browser: Resume NAME` ends a hand-off from any screen;
    `browser: Show` opens the panel; agents without can_use_browser have no commands."""
    async with panel(home, browser_config(fake.base_url)) as (run, host):
        start_browser(host, "bob", "started in 0.8s")
        human = ask_for_a_human(host, "bob", "a CAPTCHA")
        await run.until(lambda: run.app.browser.board.views["bob"].waiting)
        await run.command("browser: Resume bob")
        await run.until(lambda: isinstance(run.app.screen, FormScreen))
        await run.pilot.press("enter")
        await run.until(lambda: human.done.is_set())
        assert human.note == "the operator is done"
        await run.command("browser: Stop bob")
        await run.until(lambda: isinstance(run.app.screen, ConfirmScreen))
        await run.pilot.press("y")
        await run.until(lambda: toast(run.app, "browser: Stop bob") is not None)
        assert "is stopped" in toast(run.app, "browser: Stop bob").message
        records = audit.query(host.store.conn, actor="operator")
        assert [r.target for r in records if r.action == "browser.stop"] == ["bob"]
        await run.until(lambda: run.app.browser.board.views["bob"].state == "stopped")
        await run.command("browser: Show")
        await run.until(lambda: isinstance(run.app.screen, BrowserScreen))
        from tui.commands import BrowserCommands

        titles = [t for t, _, _ in BrowserCommands(run.app.screen).commands()]
        assert "browser: Hand off alice" in titles and "browser: Stop bob" in titles
        assert not [t for t in titles if t.endswith("carol")]


async def test_a_remapped_browser_key_is_used_and_named(home: Path, fake: FakeProvider) -> None:
    """issue 13: the panel's keys come from [tui.keys] like the others, and the notification
    names the keys the operator actually has."""
    keys = {"show-browser": "f12", "browser-handoff": "o"}
    async with panel(home, browser_config(fake.base_url), keys=keys) as (run, host):
        ask_for_a_human(host, "alice", "log in")
        await run.until(lambda: toast(run.app, "alice asks for a human") is not None)
        message = toast(run.app, "alice asks for a human").message
        assert "f12" in message.lower() and "o hands off" in message
        await run.pilot.press("f10")
        assert not isinstance(run.app.screen, BrowserScreen)
        await run.pilot.press("f12")
        await run.until(lambda: isinstance(run.app.screen, BrowserScreen))


async def test_hostile_page_text_renders_as_text(home: Path, fake: FakeProvider) -> None:
    """issue 13 (attack pass): a page's title and URL and an agent's reason are chosen by
    whoever wrote the page or drives the agent: terminal controls, Rich markup, bidi
    overrides and megabytes. The row, the detail and the notification show them escaped,
    literally, and cut to a bounded length; the app stays responsive."""
    hostile = "\x1b]0;pwned\x07[bold red]fake[/] \x1b[2J\u202eevil\r"
    huge = "A" * 1_000_000
    async with panel(home, browser_config(fake.base_url), size=(80, 24)) as (run, host):
        screen = await open_panel(run)
        await select(run, screen, "alice")
        at = host.clock()
        host.bus.publish(
            BrowserActed(
                at=at,
                agent="alice",
                action="navigate" + hostile,
                url="http://x/" + hostile + huge,
                title=hostile + huge,
                ok=False,
                error=hostile,
            )
        )
        host.bus.publish(
            BrowserHandoff(at=at, agent="alice", state="requested", reason=hostile + huge)
        )
        await run.until(lambda: cell(screen, "alice", "human") == "WAITING")
        shown = [cell(screen, "alice", c) for c in ("page", "last")] + [detail(screen)]
        notice = toast(run.app, "alice asks for a human")
        assert notice is not None
        shown.append(notice.message)
        for text in shown:
            for raw in ("\x1b", "\x07", "\u202e", "\r"):
                assert raw not in text, (raw, text[:200])
        assert len(cell(screen, "alice", "page")) <= 80 - OTHER_COLUMNS
        assert "[bold red]fake[/]" in detail(screen) and "\\x1b]0;pwned\\x07" in detail(screen)
        assert "\\u202e" in detail(screen)
        assert len(detail(screen)) < 3000 and len(notice.message) < 500
        # still answering keys
        await run.pilot.press("f1")
        await run.until(lambda: run.app.screen.__class__.__name__ == "HelpScreen")


def test_a_list_read_before_an_event_or_a_link_does_not_undo_it() -> None:
    """issue 13: the panel reads the host's list after hand-off events, and events keep
    coming meanwhile; a list that was asked for before an event (or before the operator's
    link came) must not undo what the event said, nor drop the link: the view keeps it and
    another read is asked for."""
    from legion.wire.browser import BrowserInfo, BrowserList, Handoff
    from tui.browser import BrowserBoard

    now = 1767268800.0
    board = BrowserBoard(lambda: now)

    def listing(waiting: bool, expires: float | None) -> BrowserList:
        info = BrowserInfo(
            agent="alice",
            enabled=True,
            state="running",
            waiting_for_human=waiting,
            human_reason="log in" if waiting else "",
            handoff_expires_at=expires,
        )
        return BrowserList(browsers=[info], running=1, max_running=4)

    first = board.load(listing(False, None), since=board.seq)
    assert not first.asked and not board.views["alice"].waiting
    since = board.seq  # a read starts...
    asked = board.apply([BrowserHandoff(at=now, agent="alice", state="requested", reason="log in")])
    assert [v.agent for v in asked.asked] == ["alice"] and asked.reload
    board.took_link(
        Handoff(
            agent="alice", link="http://127.0.0.1:1/x", ssh_hint="ssh", port=1, expires_at=now + 60
        )
    )
    stale = board.load(listing(False, None), since=since)  # ...and answers from before
    view = board.views["alice"]
    assert view.waiting and view.link is not None and stale.reload
    fresh = board.load(listing(True, now + 60), since=board.seq)
    assert view.waiting and view.link is not None and not fresh.reload and not fresh.asked
    board.apply([BrowserHandoff(at=now, agent="alice", state="done")])
    assert not view.waiting and view.link is None
    # a first list that finds an agent already waiting reports it (the TUI started late)
    late = BrowserBoard(lambda: now)
    assert [v.agent for v in late.load(listing(True, None), since=0).asked] == ["alice"]


async def test_attached_to_a_daemon_the_panel_lists_and_resumes(
    tui: Starter, fake: FakeProvider
) -> None:
    """issue 13: attached to a real daemon over its control socket, the panel reads the same
    list (carol has no browser) and `d` ends a hand-off through the daemon (audited there)."""
    async with tui("attached", config_text=browser_config(fake.base_url), runtimes=()) as run:
        assert run.app.client is not None and run.app.client.mode == "attached"
        screen = await open_panel(run)
        assert cell(screen, "carol", "browser") == "off"
        assert cell(screen, "bob", "browser") == "stopped"
        await select(run, screen, "bob")
        await run.pilot.press("d")
        await run.until(lambda: isinstance(run.app.screen, FormScreen))
        await run.pilot.press(*"nothing to do", "enter")
        await run.until(lambda: toast(run.app, "browser: Resume bob") is not None)
        assert "bob resumes" in toast(run.app, "browser: Resume bob").message
        page = await run.app.client.audit(actor="operator")
        done = [r for r in page.records if r.action == "browser.handoff_done"]
        assert [(r.target, r.detail["note"]) for r in done] == [("bob", "nothing to do")]
        await run.until(lambda: run.events("browser_handoff", "bob") != [])
        assert run.events("browser_handoff", "bob")[-1].state == "done"
