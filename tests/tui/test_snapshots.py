"""What the operator sees (issue 9): SVG snapshots of the main screens at 80x24 and 120x40.

Deterministic: a fixed home path, the host's clock and the TUI's clock injected (2026-01-01
12:00 UTC), fixed data (spend booked through the real budget code, blackboard keys written
through the client, a scripted model). `pytest --snapshot-update` rewrites them after a
change you have looked at (the report page shows old and new side by side).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from legion.api.hostclient import open_host
from legion.config import parse_config
from legion.fleet.backend import FakeBackend
from legion.host import Host
from legion.paths import Paths
from tests.conftest import agent_client
from tests.fakes.provider import FakeProvider, Reply, ToolCall
from tests.fleetproc import agent_processes, fleet_config, prepare_home
from tui.app import LegionApp

pytestmark = pytest.mark.slow

NOW = 1767268800.0  # 2026-01-01 12:00:00 UTC
HOME = Path("/tmp/lg-snapshots")  # fixed: the header shows it
SIZES = [(80, 24), (120, 40)]


def clock() -> float:
    return NOW


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider(chunk_chars=3) as provider:
        yield provider


@pytest.fixture
def snap_home(fake: FakeProvider) -> Iterator[Paths]:
    """A home with three agents, spend booked today (one near its cap), ready to open."""
    shutil.rmtree(HOME, ignore_errors=True)
    text = fleet_config(fake.base_url, ("alice", "bob", "carol"))
    paths = prepare_home(HOME, text)

    async def book() -> None:
        async with Host.running(parse_config(text), paths, clock=clock) as host:
            for agent, usd in (("alice", 0.12), ("bob", 0.85), ("carol", 0.0)):
                if usd:
                    r = host.budgets.reserve(agent, "m", "openai/fake", f"req-{agent}", usd)
                    from legion.gateway.llm.budget import Usage

                    host.budgets.settle(r, Usage(100, 50, usd), status="ok")

    asyncio.run(book())
    yield paths
    shutil.rmtree(HOME, ignore_errors=True)


def make_app(paths: Paths) -> LegionApp:
    backend = FakeBackend()
    return LegionApp(
        lambda: open_host(paths, clock=clock, runtime=backend),
        home=str(paths.home),
        clock=clock,
        refresh_s=3600,  # no periodic reload mid-snapshot
    )


async def ready(pilot: Pilot[Any]) -> LegionApp:
    app: LegionApp = pilot.app  # type: ignore[assignment]
    async with asyncio.timeout(30):
        while not (app.loaded.is_set() and app.subscribed.is_set()):
            await pilot.pause(0.02)
    await pilot.pause()
    return app


async def until(pilot: Pilot[Any], predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(30):
        while not predicate():
            await pilot.pause(0.02)


# --- the fleet: sidebar, a pane with a streamed reply and tool calls, the ticker -----------


@pytest.mark.parametrize("size", SIZES, ids=["80x24", "120x40"])
def test_fleet_with_a_conversation(
    snap_compare: Any, snap_home: Paths, fake: FakeProvider, size: tuple[int, int]
) -> None:
    """The fleet screen after one chat with alice. You should see: the header "legion ·
    embedded host · /tmp/lg-snapshots" and 12:00:00; at 120x40 the sidebar with alice, bob
    (his gauge in the warning colour, 85% of $1) and carol, each idle with spend and queue;
    alice's pane with "> plan the outline", two tool lines (blackboard_write, blackboard_claim,
    collapsed with a tick) and the Markdown reply with a bold key and a two-item list; the
    ticker with bob's notice. At 80x24 the sidebar is collapsed and the pane fills the width."""
    fake.script(
        Reply(
            tool_calls=[
                ToolCall("blackboard_write", {"key": "notes/plan", "value": "outline"}, id="c1"),
                ToolCall("blackboard_claim", {"key": "notes/plan", "ttl_s": 600}, id="c2"),
            ]
        ),
        Reply(content="Done: **notes/plan** is written and claimed.\n\n- intro\n- method"),
    )

    async def run_before(pilot: Pilot[Any]) -> None:
        app = await ready(pilot)
        with agent_processes(snap_home, ("alice",)):
            await app.fleet.open_agent("alice")
            await pilot.press(*"plan the outline", "enter")
            await until(pilot, lambda: app.state.agents["alice"].activity == "idle"
                        and any(i.kind == "reply" and i.done and "method" in i.text
                                for i in app.state.agents["alice"].transcript))  # fmt: skip
            await until(pilot, lambda: not app.fleet.query(".-streaming"))
        app.state.ticker.clear()
        app.fleet.query_one("#ticker").clear()  # type: ignore[attr-defined]
        from tui.state import Tick

        tick = Tick(NOW, "warning", "bob: nearing my daily budget")
        app.fleet.query_one("#ticker").add([tick])  # type: ignore[attr-defined]
        app.fleet.query_one("#history").scroll_end(animate=False)
        await pilot.pause()

    assert snap_compare(make_app(snap_home), terminal_size=size, run_before=run_before)


# --- the blackboard browser -----------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES, ids=["80x24", "120x40"])
def test_blackboard_browser(snap_compare: Any, snap_home: Paths, size: tuple[int, int]) -> None:
    """The blackboard screen (F3). You should see: "blackboard · 3 keys · 0 claimed"; rows
    for notes/outline (v2, operator), notes/plan (v1) and team/status (expires 12:10:00);
    the first row selected and its JSON value pretty-printed on the right."""

    async def run_before(pilot: Pilot[Any]) -> None:
        app = await ready(pilot)
        client = app.client
        assert client is not None
        await client.bb_put("notes/outline", {"sections": ["intro", "method"]})
        await client.bb_put("notes/outline", {"sections": ["intro", "method", "results"]})
        await client.bb_put("notes/plan", "draft by friday")
        await client.bb_put("team/status", {"ok": True}, ttl_s=600)
        await pilot.press("f3")
        await until(pilot, lambda: len(getattr(app.screen, "entries", {})) == 3)
        await pilot.pause()

    assert snap_compare(make_app(snap_home), terminal_size=size, run_before=run_before)


# --- the audit log --------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES, ids=["80x24", "120x40"])
def test_audit_log_denied_only_and_verified(
    snap_compare: Any, snap_home: Paths, size: tuple[int, int]
) -> None:
    """The audit screen (F4) filtered to denied decisions (Ctrl+D), after Ctrl+V. You should
    see: "decision: deny only"; "chain: ok · N records · head ..." in the success colour;
    one row: alice's bb.put on secrets/keys, decision deny in the error colour."""

    async def run_before(pilot: Pilot[Any]) -> None:
        app = await ready(pilot)
        client = app.client
        assert client is not None
        await client.bb_put("notes/x", 1)
        async with agent_client(snap_home, "alice") as alice:  # outside its write grants
            denied = await alice.put("/v1/blackboard/entries/secrets/keys", json={"value": 1})
            assert denied.status_code == 403
        await pilot.press("f4", "ctrl+d", "ctrl+v")
        await until(pilot, lambda: "ok ·" in str(app.screen.query_one("#verdict").render()))
        await until(pilot, lambda: app.screen.query_one("#records").row_count == 1)  # type: ignore[attr-defined]
        await pilot.pause()

    assert snap_compare(make_app(snap_home), terminal_size=size, run_before=run_before)


# --- cost gauges ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES, ids=["80x24", "120x40"])
def test_cost_gauges(snap_compare: Any, snap_home: Paths, size: tuple[int, int]) -> None:
    """The costs screen (F5). You should see: fleet today $0.97 of $5.00 (19%) and this month
    $0.97 with no cap; per agent: alice $0.12 of $1.00 (12%, success colour), bob $0.85 of
    $1.00 (85%, warning colour), carol $0.00; months against $10.00; refusals: none."""

    async def run_before(pilot: Pilot[Any]) -> None:
        app = await ready(pilot)
        await pilot.press("f5")
        await until(pilot, lambda: bool(app.screen.query("#today-carol")))
        await pilot.pause()

    assert snap_compare(make_app(snap_home), terminal_size=size, run_before=run_before)


# --- help ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES, ids=["80x24", "120x40"])
def test_help_lists_every_key(snap_compare: Any, snap_home: Paths, size: tuple[int, int]) -> None:
    """The help screen (F1 or ?). You should see: a table of where / key / id / what it does,
    starting with "everywhere  f1 / ?  help  Show every key and what it does."."""

    async def run_before(pilot: Pilot[Any]) -> None:
        await ready(pilot)
        await pilot.press("f1")
        await pilot.pause()

    assert snap_compare(make_app(snap_home), terminal_size=size, run_before=run_before)
