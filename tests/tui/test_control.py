"""The TUI's kill switch, steering and automation read-outs (issue 9), on a real host (embedded
and attached to a real daemon), agent runtimes as processes on the fake provider."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from legion.api.client import ControlClient
from legion.api.hostclient import open_host
from legion.wire.events import (
    CronRunEvent,
    PauseChanged,
    QueueDepth,
    SteerTaken,
    WakeChecked,
    WebhookReceived,
)
from tests.conftest import Daemon, control_client
from tests.fakes.provider import FakeProvider
from tests.fakes.provider import Reply as Scripted
from tests.fleetproc import fleet_config, prepare_home
from tui.app import LegionApp
from tui.state import FleetState
from tui.widgets.agent_pane import AgentPane
from tui.widgets.agent_row import AgentRow, row_content
from tui.widgets.ticker import EventsTicker

from .conftest import Run, Starter

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture(params=["embedded", "attached"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def row_text(run: Run, agent: str) -> str:
    return str(run.app.fleet.query_one(f"#agent-{agent}", AgentRow).query_one("RowBody").render())


async def test_fleet_pause_all_cuts_a_stream_and_resume_restores(
    tui: Starter, mode: str, fake: FakeProvider
) -> None:
    """issue 9: `fleet: Pause all` cuts the reply streaming in a pane within a second, the
    call is settled, the sidebar says paused, the agent's next call is refused; `fleet:
    Resume all` lets it through again."""
    content = "slow " * 400
    fake.script(Scripted(content=content, chunk_delay_s=0.05))  # 1000 chunks: ~50 s
    async with tui(mode) as run:
        await run.pilot.press("enter", *"go", "enter")
        pane = run.app.fleet.query_one("#pane-alice", AgentPane)
        await run.until(lambda: len(run.events("token_delta", "alice")) >= 5)
        await run.command("fleet: Pause all")
        await run.until(lambda: bool(run.events("pause_changed")))
        cut_at = time.monotonic()
        [paused] = run.events("pause_changed")
        assert paused.fleet and paused.paused == ["alice"] and paused.cut == 1
        # the agent's turn ends with the gateway's refusal: it says how to resume
        await run.until(lambda: bool(run.events("agent_reply", "alice")))
        reply = run.events("agent_reply", "alice")[-1]
        assert "agent_paused" in reply.text and "legion resume --all" in reply.text
        streamed = "".join(e.text for e in run.events("token_delta", "alice"))
        assert len(streamed) < len(content)  # cut: the stream did not run to its end
        assert time.monotonic() - cut_at < 5
        await run.until(lambda: "paused" in row_text(run, "alice"))
        assert "paused" in str(pane.border_title)
        costs = await _costs(run)
        assert costs["alice"]["reserved_usd"] == 0.0 and costs["alice"]["today_usd"] > 0
        # a new message is refused at once (nothing reserved), and the pane shows why
        await run.pilot.press(*"again", "enter")
        await run.until(lambda: len(run.events("agent_reply", "alice")) == 2)
        assert "nothing was dispatched or reserved" in run.events("agent_reply", "alice")[-1].text
        await run.until(lambda: "legion resume --all" in row_text(run, "alice"))
        await run.command("fleet: Resume all")
        await run.until(lambda: len(run.events("pause_changed")) == 2)
        await run.until(lambda: "paused" not in row_text(run, "alice"))
        ticker = run.app.fleet.query_one(EventsTicker)
        assert any("the whole fleet paused by operator" in line for line in ticker.lines)
        assert any("the whole fleet resumed by operator" in line for line in ticker.lines)
        await run.pilot.press(*"third", "enter")
        await run.until(lambda: len(run.events("agent_reply", "alice")) == 3)
        assert run.events("agent_reply", "alice")[-1].text.startswith("echo: ")


async def test_palette_pauses_one_agent(tui: Starter) -> None:
    """issue 9: `agent: Pause NAME` pauses that agent only; the sidebar says so."""
    async with tui(agents=("alice", "bob"), runtimes=()) as run:
        await run.command("agent: Pause bob")
        await run.until(lambda: bool(run.events("pause_changed")))
        assert run.events("pause_changed")[0].paused == ["bob"]
        await run.until(lambda: "paused" in row_text(run, "bob"))
        assert "paused" not in row_text(run, "alice")
        client = run.app.client
        assert client is not None
        assert (await client.paused()).paused == ["bob"]
        await run.command("agent: Resume bob")
        await run.until(lambda: len(run.events("pause_changed")) == 2)
        assert (await client.paused()).paused == []


async def test_a_tui_attached_later_reads_the_pause(
    home: Path, fake: FakeProvider, daemon: Callable[[], Daemon]
) -> None:
    """issue 9: the pause is the host's (stored in host.db): a TUI attaching later shows it."""
    paths = prepare_home(home, fleet_config(fake.base_url, ("alice", "bob")))
    daemon().start()
    with ControlClient(paths) as operator:
        operator.pause("bob", reason="night")
    app = LegionApp(lambda: open_host(paths), home=str(home), refresh_s=0.5)
    async with app.run_test(size=(120, 40)) as pilot:
        async with asyncio.timeout(30):
            while not app.loaded.is_set():
                await pilot.pause(0.02)
        await pilot.pause()
        row = app.fleet.query_one("#agent-bob", AgentRow).query_one("RowBody")
        assert "paused" in str(row.render())
        assert app.state.agents["bob"].paused and not app.state.agents["alice"].paused
        await app.shutdown_host()


async def test_the_steer_key_sends_the_input_as_a_steer(tui: Starter, mode: str) -> None:
    """issue 9: Ctrl+S in a pane sends the input as a steer (an inbox item of kind steer,
    ahead of the queue), shown in the pane as such."""
    async with tui(mode, runtimes=()) as run:  # no runtime: the steer waits in the lane
        await run.pilot.press("enter", *"focus on the tests", "ctrl+s")
        await run.until(lambda: bool(run.events("inbox_queued", "alice")))
        [queued] = run.events("inbox_queued", "alice")
        assert queued.kind == "steer" and queued.sender == "operator"
        pane = run.app.fleet.query_one("#pane-alice", AgentPane)
        await run.until(lambda: bool(pane.query(".-steer")))
        assert "» steer: focus on the tests" in str(pane.query_one(".-steer").render())
        await run.until(lambda: run.app.state.agents["alice"].steers == 1)
        await run.until(lambda: " s1" in row_text(run, "alice"))
        done = [m for m in run.seen if type(m).__name__ == "ActionDone"]
        assert done and done[-1].title == "agent: Steer alice" and done[-1].ok  # type: ignore[attr-defined]


async def test_cron_runs_and_lane_depth_show_in_the_sidebar_and_ticker(tui: Starter) -> None:
    """issue 9: a cron job's run goes to the ticker, the job count to the fleet state (the
    sidebar shows it when the agent is idle), and the lane's depth (queue_depth events) to
    the row's queue."""
    async with tui(runtimes=()) as run:  # no runtime: what cron sends waits in the lane
        async with control_client(run.paths) as operator:
            created = await operator.post(
                "/v1/cron/jobs",
                json={"agent": "alice", "name": "digest", "schedule": "@daily", "message": "go"},
            )
            assert created.status_code == 200, created.text
            job = created.json()["id"]
            ran = await operator.post(f"/v1/cron/jobs/{job}/run")
            assert ran.status_code == 200, ran.text
        ticker = run.app.fleet.query_one(EventsTicker)
        await run.until(lambda: any("cron alice/digest ran" in line for line in ticker.lines))
        await run.until(lambda: bool(run.events("queue_depth", "alice")))
        await run.until(lambda: "q1" in row_text(run, "alice"))
        run.app.load_agents()  # the job count comes with the host's status
        await run.until(lambda: run.app.state.agents["alice"].automation() == "cron 1")


def test_automation_events_fold_into_the_fleet_state() -> None:
    """issue 9: every automation event the host emits reaches the sidebar or the ticker."""
    state = FleetState()
    state.view("alice")
    now = 1767268800.0
    change = state.apply(
        [
            QueueDepth(at=now, agent="alice", waiting=3, in_progress=1, steers=1),
            SteerTaken(at=now, agent="alice", item_id=7, sender="operator"),
            CronRunEvent(
                at=now, job_id=1, agent="alice", name="digest", run_id=2, status="failed",
                detail="the agent is not configured",
            ),
            WakeChecked(at=now, agent="alice", outcome="dispatched", findings=2, skipped_total=9),
            WakeChecked(at=now, agent="alice", outcome="nothing", findings=0, skipped_total=10),
            WebhookReceived(at=now, hook="gh", agent="alice", job="j1", status="accepted"),
            WebhookReceived(
                at=now, hook="gh", agent="alice", job=None, status="refused", reason="bad signature"
            ),
            PauseChanged(
                at=now, action="pause", target="alice", by="operator", cut=2, paused=["alice"],
                fleet=False,
            ),
        ]
    )  # fmt: skip
    view = state.agents["alice"]
    assert (view.queue, view.in_progress, view.steers) == (3, 1, 0)  # the steer was taken
    assert view.paused and view.shown_activity == "paused" and view.cron_failed == 1
    texts = [t.text for t in change.ticks]
    assert texts == [
        "alice took a steer from operator",
        "cron alice/digest failed: the agent is not configured",
        "alice woke: 2 finding(s)",
        "webhook gh -> alice (job j1)",
        "webhook gh refused: bad signature",
        "alice paused by operator; 2 call(s) in flight cut",
    ]
    shown = str(row_content(view, 40))
    assert "paused" in shown and "cron digest failed" in shown and "q3+1" in shown
    assert [i.text for i in view.transcript] == ["steer from operator taken by the running turn"]


async def _costs(run: Run) -> dict[str, Any]:
    client = run.app.client
    assert client is not None
    report = await client.costs()
    return {a.agent: a.model_dump() for a in report.agents}
