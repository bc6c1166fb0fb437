"""An idle agent's liveness comes from its parked inbox poll, not from heartbeats (issue 10)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from legion.config import parse_config
from legion.host import Host
from legion.paths import Paths
from tests.api.process_backend import ProcessBackend
from tests.api.raw import RawConn, request

pytestmark = pytest.mark.anyio


async def until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_issue_10_a_parked_poll_keeps_an_agent_alive_until_its_client_goes(
    home: Path,
) -> None:
    """issue 10: while an agent's inbox poll is parked the host counts it alive (its
    connection is live: polls are disconnect-aware), however long ago the poll began; when
    the client hangs up, its last sign of life is the moment it went, and silence counts
    from there."""
    now = [1000.0]
    config = parse_config("[host]\nlong_poll_max_s = 600\n[agents.alice]\n")
    async with Host.running(config, Paths.resolve(home), clock=lambda: now[0]) as host:
        assert host.seen_at("alice") is None
        conn = await RawConn.open(host.paths.agent_socket("alice"))
        await conn.send(request("POST", "/v1/inbox/poll", b'{"wait_s": 600}'))
        await until(lambda: host.polls_parked.get("alice") == 1)
        assert host.last_seen["alice"] == 1000.0
        now[0] = 5000.0  # far beyond any heartbeat timeout
        assert host.seen_at("alice") == 5000.0
        conn.writer.transport.abort()  # the process died
        await until(lambda: "alice" not in host.polls_parked)
        assert host.last_seen["alice"] == 5000.0
        now[0] = 5100.0
        assert host.seen_at("alice") == 5000.0  # silent since it went


async def test_issue_10_an_idle_runtime_sends_no_heartbeats_and_is_not_restarted(
    home: Path,
) -> None:
    """issue 10: every idle agent sent a heartbeat every 10 s and renewed its poll every
    30 s, the host's idle CPU growing with the fleet. The real runtime (a process) now
    tells its status once and then only keeps its poll parked: over twice the heartbeat
    timeout and past its heartbeat interval, the host sees no further heartbeat, and the
    supervisor (timeout 5 s) does not take the silence for a hang."""
    config = parse_config(
        "[host]\nlong_poll_max_s = 600\n[runtime]\nheartbeat_timeout_s = 5\n[agents.alice]\n"
    )
    backend = ProcessBackend()
    async with Host.running(config, Paths.resolve(home), runtime=backend) as host:
        async with host.bus.subscribe() as sub:  # before the runtime's first request
            await until(lambda: "alice" in host.last_poll, 30)
            await until(lambda: host.polls_parked.get("alice") == 1, 10)
            first_poll = host.last_poll["alice"]
            started = time.monotonic()
            ticks = host.fleet.ticks
            # A window longer than the heartbeat interval (10 s) and twice the timeout,
            # with the supervisor's checks running all along.
            while time.monotonic() - started < 11.0 or host.fleet.ticks < ticks + 10:
                assert host.fleet.runs["alice"].state == "running"
                await asyncio.sleep(0.2)
            beats = []
            while not sub.queue.empty():
                event = sub.queue.get_nowait()
                if event.type == "agent_heartbeat":
                    beats.append(event)
        run = host.fleet.runs["alice"]
        assert run.state == "running" and not run.restarts, run
        assert [b.status for b in beats] == ["idle"], beats  # told once, then the poll
        assert host.last_poll["alice"] == first_poll  # one poll held all along
        assert host.polls_parked.get("alice") == 1
