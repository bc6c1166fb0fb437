"""The TUI against a real host (issue 9): embedded in the test's loop and attached to a real
daemon, agent runtimes as processes on the fake provider. Pilot drives the keyboard; the
assertions read the messages the app received and what its widgets hold."""

from __future__ import annotations

import pytest

from legion.fleet.backend import FakeBackend
from tests.fakes.provider import FakeProvider
from tests.fleetproc import fleet_config
from tui.screens.blackboard import BlackboardScreen
from tui.screens.dialogs import ConfirmScreen, FormScreen
from tui.widgets.agent_pane import AgentPane, Reply
from tui.widgets.agent_row import AgentRow
from tui.widgets.ticker import EventsTicker

from .conftest import Starter

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture(params=["embedded", "attached"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_header_says_which_host_is_live(tui: Starter, mode: str) -> None:
    async with tui(mode) as run:
        title = str(run.app.fleet.query_one("#title").render())
        if mode == "attached":
            assert f"attached to daemon pid {run.app.client.host_pid}" in title  # type: ignore[union-attr]
        else:
            assert "embedded host" in title


async def test_chat_streams_into_its_pane_token_by_token(
    tui: Starter, mode: str, fake: FakeProvider
) -> None:
    from tests.fakes.provider import Reply as Scripted

    text = "Here is **the plan**: first we read, then we write, then we check it all."
    fake.script(Scripted(content=text, chunk_delay_s=0.04))
    async with tui(mode) as run:
        await run.pilot.press("enter")  # open alice's pane from the sidebar
        pane = run.app.fleet.query_one("#pane-alice", AgentPane)
        await run.pilot.press(*"hello there")
        await run.pilot.press("enter")
        partial: set[str] = set()  # what the pane showed while the reply was arriving

        def replied() -> bool:
            live = pane.live
            if live is not None and live.text:
                partial.add(live.text)
            return bool(run.events("agent_reply", "alice"))

        await run.until(replied)
        deltas = run.events("token_delta", "alice")
        assert "".join(d.text for d in deltas) == text
        assert len(deltas) > 10  # two characters per chunk: token by token
        assert len(partial) >= 3  # shown several times, growing, before the reply ended
        assert all(text.startswith(p) for p in partial)
        await run.until(lambda: not pane.query(".-streaming"))
        assert pane.live is None
        assert [r.source for r in pane.query(Reply)] == [text]  # then Markdown, once
        assert str(pane.query_one(".-user").render()) == "> hello there"


async def test_palette_sets_a_blackboard_key(tui: Starter, mode: str) -> None:
    async with tui(mode) as run:
        await run.command("blackboard: Set")
        await run.until(lambda: isinstance(run.app.screen, FormScreen))
        await run.pilot.press(*"notes/plan", "enter", *'{"step": 2}', "enter", *"600", "enter")
        await run.until(lambda: bool(run.events("blackboard_changed")))
        client = run.app.client
        assert client is not None
        entry = await client.bb_get("notes/plan")
        assert entry.value == {"step": 2} and entry.writer == "operator" and entry.expires_at
        await run.pilot.press("f3")
        screen = run.app.screen
        assert isinstance(screen, BlackboardScreen)
        await run.until(lambda: "notes/plan" in screen.entries)
        await run.until(lambda: "step" in str(screen.query_one("#value").render()))


async def test_palette_restarts_an_agent(tui: Starter) -> None:
    backend = FakeBackend()
    async with tui(backend=backend) as run:
        assert backend.starts["alice"] == 1
        await run.command("agent: Restart alice")
        await run.until(lambda: backend.starts["alice"] == 2)
        await run.until(
            lambda: (
                [e.state for e in run.events("agent_state", "alice")][-2:]
                == ["starting", "running"]
            )
        )
        done = [m for m in run.seen if type(m).__name__ == "ActionDone"]
        assert done and done[-1].ok and done[-1].title == "agent: Restart alice"  # type: ignore[attr-defined]


async def test_an_agent_that_fails_shows_its_reason(tui: Starter, fake: FakeProvider) -> None:
    backend = FakeBackend()
    text = fleet_config(fake.base_url).replace(
        'backend = "none"', 'backend = "none"\nrestart_max_per_hour = 0'
    )
    async with tui(backend=backend, config_text=text) as run:
        await run.until(lambda: run.app.state.agents["alice"].state == "running")
        backend.crash("alice", exit_code=3)
        await run.until(lambda: run.app.state.agents["alice"].state == "failed")
        reason = run.app.state.agents["alice"].reason
        assert "container exited with code 3" in reason and "giving up" in reason
        row = run.app.fleet.query_one("#agent-alice", AgentRow)
        await run.until(lambda: "container exited" in str(row.query_one("RowBody").render()))
        assert "failed" in str(row.query_one("RowBody").render())
        ticker = run.app.fleet.query_one(EventsTicker)
        await run.until(
            lambda: any("alice failed: container exited with code 3" in x for x in ticker.lines)
        )
        # its pane, opened now, shows the reason too (from this session's transcript)
        await run.pilot.press("enter")
        pane = run.app.fleet.query_one("#pane-alice", AgentPane)
        await run.until(lambda: bool(pane.query(".-error")))
        assert "container exited with code 3" in str(pane.query_one(".-error").render())


async def test_a_budget_refusal_shows_who_and_why(tui: Starter, fake: object) -> None:
    async with tui() as run:
        # a daily cap far below one call's worst case: the gateway refuses with 402
        client = run.app.client
        assert client is not None
        text = (run.paths.config).read_text().replace("daily_usd = 1.0", "daily_usd = 0.000001")
        run.paths.config.write_text(text)
        await client.config_reload()
        run.app.load_costs()
        await run.until(lambda: run.app.state.agents["alice"].daily_cap == 0.000001)
        await run.pilot.press("enter", *"spend", "enter")
        await run.until(lambda: bool(run.events("agent_reply", "alice")))
        reply = run.events("agent_reply", "alice")[-1]
        assert "budget_exceeded" in reply.text
        await run.until(lambda: bool(run.app.state.agents["alice"].refused))
        ticker = run.app.fleet.query_one(EventsTicker)
        await run.until(
            lambda: any(
                "alice refused an LLM call on m: budget: daily cap $1e-06" in line
                for line in ticker.lines
            )
        )
        await run.pilot.press("f5")
        await run.until(
            lambda: (
                "alice: budget: daily cap" in str(run.app.screen.query_one("#refusals").render())
            )
        )


async def test_agent_text_is_never_markup_nor_control(tui: Starter, fake: object) -> None:
    """issue 9: agent-controlled text shows as typed: no Rich markup, no terminal escapes."""
    from tests.fakes.provider import Reply as Scripted

    async with tui() as run:
        hostile = "[bold red]fake[/] \x1b[2J\x1b]0;pwned\x07 \u202edesrever"
        fake.script(Scripted(content=hostile))  # type: ignore[attr-defined]
        await run.pilot.press("enter", *"x", "enter")
        await run.until(lambda: bool(run.events("agent_reply", "alice")))
        pane = run.app.fleet.query_one("#pane-alice", AgentPane)
        await run.until(lambda: bool(pane.query(Reply)) and not pane.query(".-streaming"))
        source = pane.query(Reply).last().source
        assert "\x1b" not in source and "\x07" not in source and "\u202e" not in source
        assert "[bold red]fake[/]" in source and "\\x1b[2J" in source and "\\u202e" in source


async def test_quitting_an_embedded_host_with_a_busy_agent_asks_first(
    tui: Starter, fake: object
) -> None:
    from tests.fakes.provider import Reply as Scripted

    async with tui() as run:
        fake.script(Scripted(content="slow " * 200, chunk_delay_s=0.05))  # type: ignore[attr-defined]
        await run.pilot.press("enter", *"go", "enter")
        await run.until(lambda: run.app.state.agents["alice"].activity == "thinking")
        await run.pilot.press("ctrl+q")
        await run.until(lambda: isinstance(run.app.screen, ConfirmScreen))
        await run.pilot.press("n")
        await run.until(lambda: not isinstance(run.app.screen, ConfirmScreen))
        assert run.app.is_running and run.app.client is not None


async def test_a_remapped_key_works(tui: Starter) -> None:
    async with tui(keys={"show-blackboard": "f12"}) as run:
        await run.pilot.press("f3")
        assert not isinstance(run.app.screen, BlackboardScreen)
        await run.pilot.press("f12")
        await run.until(lambda: isinstance(run.app.screen, BlackboardScreen))


async def test_an_agent_flooding_notices_cannot_grow_a_pane_without_bound(tui: Starter) -> None:
    """issue 9 (attack pass): an agent's socket can send notices as fast as it likes; the
    pane keeps its newest MAX_WIDGETS items mounted and stays responsive."""
    from tests.conftest import agent_client
    from tui.widgets.agent_pane import MAX_WIDGETS

    async with tui(runtimes=()) as run:
        await run.pilot.press("enter")
        pane = run.app.fleet.query_one("#pane-alice", AgentPane)
        async with agent_client(run.paths, "alice") as alice:
            for n in range(MAX_WIDGETS + 150):
                response = await alice.post("/v1/notify", json={"text": f"notice {n}"})
                response.raise_for_status()
        last = f"notice {MAX_WIDGETS + 149}"
        await run.until(lambda: any(last in str(w.render()) for w in pane.query(".-note")))
        history = pane.query_one("#history")
        assert len(history.children) <= MAX_WIDGETS
        assert not any(str(w.render()) == "notice 0" for w in pane.query(".-note"))


async def test_a_huge_streamed_reply_is_capped_in_the_pane(
    tui: Starter, fake: FakeProvider
) -> None:
    """issue 9 (attack pass): a model streaming megabytes into one reply does not make every
    Markdown append slower and slower: the pane shows the first MAX_REPLY_CHARS and says so."""
    from tests.fakes.provider import Reply as Scripted
    from tui.widgets.agent_pane import MAX_REPLY_CHARS

    huge = "word " * (MAX_REPLY_CHARS // 5 + 20_000)
    fake.script(Scripted(content=huge, chunk_chars=20_000))
    text = fleet_config(fake.base_url, max_tokens=200_000)
    async with tui(config_text=text) as run:
        await run.pilot.press("enter", *"go", "enter")
        await run.until(lambda: bool(run.events("agent_reply", "alice")), 60)
        pane = run.app.fleet.query_one("#pane-alice", AgentPane)
        # The message hook sees the reply's batch before the pane applied it: wait for what
        # the pane shows (the finished reply, the live box gone), not for the event.
        await run.until(lambda: bool(pane.query(Reply)) and not pane.query(".-streaming"), 60)
        assert len(run.events("agent_reply", "alice")[-1].text) > MAX_REPLY_CHARS  # really huge
        [reply] = pane.query(Reply)  # one reply, not the streamed one plus a copy
        source = reply.source
        assert len(source) < MAX_REPLY_CHARS + 200
        assert source.endswith("*(the rest of this reply is not shown here)*")


def _legion_stop(home: object) -> None:
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "legion", "--home", str(home), "stop"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr


async def test_when_the_daemon_stops_the_tui_says_so(tui: Starter) -> None:
    import asyncio

    async with tui("attached", runtimes=()) as run:
        await asyncio.to_thread(_legion_stop, run.paths.home)
        header = run.app.fleet.query_one("#title")
        await run.until(lambda: "the host stopped" in str(header.render()))
        await run.command("config: Check")
        await run.until(lambda: any(type(m).__name__ == "ActionDone" for m in run.seen))
        done = [m for m in run.seen if type(m).__name__ == "ActionDone"][-1]
        assert not done.ok  # type: ignore[attr-defined]
        assert run.app.is_running


async def test_legion_stop_ends_an_embedded_tui(tui: Starter) -> None:
    import asyncio

    async with tui(runtimes=()) as run:
        await asyncio.to_thread(_legion_stop, run.paths.home)
        await run.until(lambda: not run.app.is_running)
        assert not run.paths.control_socket.exists()


async def test_panes_side_by_side_with_focus_and_zoom(tui: Starter) -> None:
    from tui.widgets.pane_grid import PaneGrid

    async with tui(agents=("alice", "bob", "carol"), runtimes=()) as run:
        fleet = run.app.fleet
        for name in ("alice", "bob", "carol"):
            await fleet.open_agent(name)
        grid = fleet.query_one(PaneGrid)
        assert [p.agent for p in grid.panes()] == ["alice", "bob", "carol"]
        assert grid.has_class("-cols-2")  # 120 columns: two side by side

        def focused() -> str | None:
            pane = fleet._focused_pane()
            return pane.agent if pane is not None else None

        await run.until(lambda: focused() == "carol")
        await run.pilot.press("f6")
        await run.until(lambda: focused() == "alice")
        await run.pilot.press("f7")
        await run.pilot.pause()
        shown = [p.agent for p in grid.panes() if p.display and p.region.width]
        assert grid.has_class("-zoomed") and shown == ["alice"]
        await run.pilot.press("f6")  # zoomed, the next pane takes the screen
        await run.pilot.pause()
        assert [p.agent for p in grid.panes() if p.region.width] == ["bob"]
        await run.pilot.press("f7")
        await run.pilot.pause()
        assert not grid.has_class("-zoomed")
        assert len([p for p in grid.panes() if p.region.width]) == 3
        await run.pilot.press("f8")  # close the focused one (bob)
        await run.until(lambda: [p.agent for p in grid.panes()] == ["alice", "carol"])


async def test_at_80_columns_panes_stack_and_the_sidebar_collapses(tui: Starter) -> None:
    from tui.widgets.pane_grid import PaneGrid
    from tui.widgets.sidebar import FleetSidebar

    async with tui(agents=("alice", "bob"), runtimes=(), size=(80, 24)) as run:
        fleet = run.app.fleet
        sidebar = fleet.query_one(FleetSidebar)
        assert sidebar.region.width == 80  # nothing open yet: the fleet, full width
        await run.pilot.press("enter")
        await run.until(lambda: sidebar.region.width == 0)
        await fleet.open_agent("bob")
        grid = fleet.query_one(PaneGrid)
        await run.pilot.pause()
        assert grid.has_class("-cols-1")
        alice, bob = grid.panes()
        assert alice.region.x == bob.region.x and alice.region.y < bob.region.y  # stacked
        await run.pilot.press("escape")  # the sidebar comes back over the panes
        await run.until(lambda: sidebar.region.width == 80)
