"""The fleet supervisor with the fake backend: restarts, backoff, the hourly cap, state,
parallel starts, and the engine's status feed with its listing safety net."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from legion.config import parse_config
from legion.fleet.backend import FakeBackend
from legion.host import Host
from legion.mesh import audit
from legion.paths import Paths
from tests.conftest import agent_client, control_client

pytestmark = pytest.mark.anyio

CONFIG = """
[runtime]
restart_max_per_hour = 3
heartbeat_timeout_s = 10

[agents.alice]
[agents.bob]
autostart = false
"""


class Mono:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait for a condition the host reaches on its own (an event consumed, a tick run)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


async def test_autostart_and_spec_hardening_inputs(home: Path) -> None:
    backend = FakeBackend()
    paths = Paths.resolve(home)
    async with Host.running(parse_config(CONFIG), paths, runtime=backend) as host:
        assert backend.starts == {"alice": 1}  # bob has autostart = false
        spec = backend.specs["alice"]
        assert (spec.memory_mb, spec.cpus, spec.pids) == (384, 0.5, 256)
        assert spec.data_dir == paths.agent_data("alice")
        assert spec.socket_dir == paths.agent_socket_dir("alice")
        assert (spec.data_dir / "workspace").is_dir()
        assert host.fleet.runs["alice"].state == "running"
        assert "OPENAI" not in " ".join(spec.env) and set(spec.env) == {"LEGION_AGENT"}


async def test_crash_restarts_with_backoff_then_fails_after_the_hourly_cap(home: Path) -> None:
    backend = FakeBackend()
    paths = Paths.resolve(home)
    async with Host.running(parse_config(CONFIG), paths, runtime=backend) as host:
        mono = Mono()
        host.fleet.monotonic = mono
        fleet = host.fleet
        states = []
        async with host.bus.subscribe() as sub:
            for expected_delay in (1, 2, 4):
                backend.crash("alice")  # the feed tells the fleet, which checks alice at once
                await until(lambda: fleet.runs["alice"].state == "restarting")
                assert "exited with code 137" in fleet.runs["alice"].reason
                mono.now += expected_delay - 0.5
                await fleet.check("alice")  # too early: backoff holds
                assert fleet.runs["alice"].state == "restarting"
                mono.now += 0.5
                await fleet.check("alice")
                assert fleet.runs["alice"].state == "running"
            backend.crash("alice")
            await until(lambda: fleet.runs["alice"].state == "failed")
            while not sub.queue.empty():
                states.append(sub.queue.get_nowait())
        run = fleet.runs["alice"]
        assert run.state == "failed" and "restarted 3 times in the last hour" in run.reason
        assert backend.starts["alice"] == 4
        changes = [e.state for e in states if e.type == "agent_state"]
        assert changes.count("restarting") == 3 and changes[-1] == "failed"
        records = [
            r for r in audit.query(host.store.conn, actor="host") if r.action == "agent.failed"
        ]
        assert records and records[0].target == "alice"
        # failed stays failed until the operator starts it again
        mono.now += 100
        await fleet.check("alice")
        assert backend.starts["alice"] == 4
        async with control_client(paths) as operator:
            started = await operator.post("/v1/agents/alice/start")
            assert started.json()["state"] == "running"
        assert backend.starts["alice"] == 5


async def test_heartbeat_silence_restarts(home: Path) -> None:
    backend = FakeBackend()
    paths = Paths.resolve(home)
    async with Host.running(parse_config(CONFIG), paths, runtime=backend) as host:
        mono = Mono()
        host.fleet.monotonic = mono
        host.fleet.runs["alice"].started_at = mono.now
        async with agent_client(paths, "alice") as alice:
            await alice.post("/v1/heartbeat", json={})
        mono.now += 5
        await host.fleet.check("alice")
        assert host.fleet.runs["alice"].state == "running"
        host.last_seen["alice"] -= 11  # silent for longer than heartbeat_timeout_s
        mono.now += 6
        await host.fleet.check("alice")
        assert host.fleet.runs["alice"].state == "restarting"
        assert "no heartbeat" in host.fleet.runs["alice"].reason


async def test_restart_makes_unacked_items_visible_again(home: Path) -> None:
    backend = FakeBackend()
    paths = Paths.resolve(home)
    config = parse_config(CONFIG + "\n[host]\nvisibility_timeout_s = 600\n")
    async with (
        Host.running(config, paths, runtime=backend) as host,
        control_client(paths) as operator,
        agent_client(paths, "alice") as alice,
    ):
        await operator.post("/v1/messages", json={"to": "alice", "payload": "job"})
        taken = (await alice.post("/v1/inbox/poll", json={})).json()["items"]
        assert len(taken) == 1
        assert (await alice.post("/v1/inbox/poll", json={})).json()["items"] == []
        await operator.post("/v1/agents/alice/restart")
        again = (await alice.post("/v1/inbox/poll", json={})).json()["items"]
        assert [i["id"] for i in again] == [taken[0]["id"]] and again[0]["deliveries"] == 2
        assert host.fleet.runs["alice"].state == "running"


async def test_unavailable_backend_is_retried(home: Path) -> None:
    backend = FakeBackend()
    backend.fail_starts = True
    paths = Paths.resolve(home)
    async with Host.running(parse_config(CONFIG), paths, runtime=backend) as host:
        mono = Mono()
        host.fleet.monotonic = mono
        run = host.fleet.runs["alice"]
        assert run.state == "unavailable" and "fail starts" in run.reason
        backend.fail_starts = False
        run.next_attempt = mono.now
        await host.fleet.check("alice")
        assert run.state == "running"


async def test_agent_list_and_actions_over_the_control_socket(home: Path) -> None:
    backend = FakeBackend()
    paths = Paths.resolve(home)
    async with (
        Host.running(parse_config(CONFIG), paths, runtime=backend),
        control_client(paths) as operator,
    ):
        listing = (await operator.get("/v1/agents")).json()
        assert listing["runtime"] == "fake"
        assert {a["name"]: a["state"] for a in listing["agents"]} == {
            "alice": "running",
            "bob": "stopped",
        }
        stopped = await operator.post("/v1/agents/alice/stop")
        assert stopped.json()["state"] == "stopped" and "alice" not in backend.states
        bad = await operator.post("/v1/agents/alice/explode")
        assert bad.status_code == 404
        ghost = await operator.post("/v1/agents/ghost/start")
        assert ghost.status_code == 404


async def test_without_a_runtime_the_host_starts_nothing(home: Path) -> None:
    paths = Paths.resolve(home)
    async with Host.running(parse_config(CONFIG), paths), control_client(paths) as operator:
        listing = (await operator.get("/v1/agents")).json()
        assert listing["runtime"] is None
        refused = await operator.post("/v1/agents/alice/start")
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "no_runtime"


async def test_config_reload_adds_and_removes_agents(home: Path) -> None:
    backend = FakeBackend()
    paths = Paths.resolve(home)
    paths.home.mkdir(parents=True, exist_ok=True)
    paths.config.write_text(CONFIG)
    async with (
        Host.running(parse_config(CONFIG), paths, runtime=backend) as host,
        control_client(paths) as operator,
    ):
        paths.config.write_text(
            CONFIG.replace("[agents.bob]\nautostart = false\n", "") + "[agents.carol]\n"
        )
        result = (await operator.post("/v1/config/reload")).json()
        assert result == {
            "file": str(paths.config),
            "added": ["carol"],
            "removed": ["bob"],
            "changed": [],
            "restart_needed": [],
            "agents_to_restart": [],
        }
        assert paths.agent_socket("carol").is_socket()
        assert not paths.agent_socket("bob").exists()
        assert backend.starts.get("carol") == 1
        async with agent_client(paths, "carol") as carol:
            assert (await carol.get("/v1/whoami")).json()["agent"] == "carol"
        assert set(host.config.agents) == {"alice", "carol"}


async def test_containers_left_by_a_dead_host_are_swept(home: Path) -> None:
    backend = FakeBackend()
    backend.crash("ghost", exit_code=0)  # a container of an agent no longer configured
    backend.crash("alice", exit_code=0)
    paths = Paths.resolve(home)
    async with Host.running(parse_config(CONFIG), paths, runtime=backend) as host:
        assert "ghost" not in backend.states
        assert backend.states["alice"].state == "running"  # replaced by a fresh start
        assert any(
            r.action == "agent.orphan_removed" and r.target == "ghost"
            for r in audit.query(host.store.conn, actor="host")
        )


def fleet_config(count: int, extra: str = "") -> str:
    agents = "".join(f"[agents.a{i:02d}]\n" for i in range(count))
    return f"[runtime]\nheartbeat_timeout_s = 600\n{extra}\n{agents}"


async def test_issue_10_agents_start_in_parallel_bounded_by_start_concurrency(home: Path) -> None:
    """issue 10: a host start launches its agents `start_concurrency` at a time, not one
    after the other under one lock; each agent's start and stop never overlap."""
    backend = FakeBackend()
    backend.start_delay_s = 0.05
    config = parse_config(fleet_config(12, "start_concurrency = 4"))
    started = time.monotonic()
    async with Host.running(config, Paths.resolve(home), runtime=backend) as host:
        elapsed = time.monotonic() - started
        assert backend.max_starting == 4
        assert all(run.state == "running" for run in host.fleet.runs.values())
        assert len(host.fleet.runs) == 12
        assert elapsed < 12 * 0.05  # one at a time would take 0.6 s at least
        # the operator stops an agent while its restart is under way: the stop waits
        backend.log.clear()
        restart = asyncio.create_task(host.fleet.restart("a03"))
        await until(lambda: ("start", "a03") in backend.log)
        await host.fleet.stop("a03")
        await restart
        assert backend.log == [
            ("stop", "a03"),
            ("start", "a03"),
            ("started", "a03"),
            ("stop", "a03"),
        ]
        assert host.fleet.runs["a03"].state == "stopped"


async def test_issue_10_restarts_after_a_crash_of_every_agent_run_in_parallel(home: Path) -> None:
    """issue 10: when every container dies at once (an engine restart), the restarts run
    `start_concurrency` at a time too, each agent in a task of its own."""
    backend = FakeBackend()
    config = parse_config(fleet_config(10, "start_concurrency = 3"))
    async with Host.running(config, Paths.resolve(home), runtime=backend) as host:
        backend.start_delay_s = 0.1
        backend.max_starting = 0
        for agent in list(backend.states):
            backend.crash(agent)
        await until(lambda: all(r.state == "restarting" for r in host.fleet.runs.values()))
        await until(lambda: all(r.state == "running" for r in host.fleet.runs.values()))
        assert backend.max_starting == 3
        assert sum(backend.starts.values()) == 20


async def test_issue_10_supervision_makes_no_call_per_container(home: Path) -> None:
    """issue 10: an idle fleet costs the engine nothing per agent and per second: the
    supervisor follows one status feed and lists the containers once at start (the
    safety net runs every status_resync_s, 30 s here), never a status call per agent."""
    backend = FakeBackend()
    async with Host.running(
        parse_config(fleet_config(50)), Paths.resolve(home), runtime=backend
    ) as host:
        host.fleet.interval_s = 0.01
        ticks = host.fleet.ticks
        await until(lambda: host.fleet.ticks >= ticks + 20)
        assert backend.calls.get("status", 0) == 0
        assert backend.calls["watch"] == 1 and backend.calls["statuses"] == 1
        assert host.fleet.feed_up
        # a death is still seen at once, through the feed
        backend.crash("a07", exit_code=3)
        await until(lambda: host.fleet.runs["a07"].state == "restarting")
        assert "container exited with code 3" in host.fleet.runs["a07"].reason
        assert backend.calls.get("status", 0) == 0


async def test_issue_10_the_listing_catches_what_the_feed_missed(home: Path) -> None:
    """issue 10: a death the event stream lost is found by the periodic listing
    (status_resync_s), and a container that vanished entirely is `missing`."""
    backend = FakeBackend()
    config = parse_config(fleet_config(3, "status_resync_s = 1"))
    async with Host.running(config, Paths.resolve(home), runtime=backend) as host:
        host.fleet.interval_s = 0.05
        backend.crash("a01", tell=False)
        del backend.states["a02"]  # removed behind the host's back, no event either
        assert host.fleet.runs["a01"].state == "running"
        await until(
            lambda: (
                host.fleet.runs["a01"].state in ("restarting", "running")
                and host.fleet.resyncs >= 2
                and backend.starts["a01"] == 2
            )
        )
        await until(lambda: backend.starts["a02"] == 2)
        records = [
            r for r in audit.query(host.store.conn, actor="host") if r.action == "agent.restarting"
        ]
        reasons = {r.target: r.detail["reason"] for r in records}
        assert reasons == {"a01": "container exited with code 137", "a02": "container missing"}
        assert backend.starts["a00"] == 1


async def test_issue_10_a_listing_never_overrides_a_newer_event_or_start(home: Path) -> None:
    """issue 10: a listing taken before an event arrived, or before an agent started, is
    older than what the fleet knows: it neither revives a dead container nor marks a
    fresh one missing."""
    backend = FakeBackend()
    async with Host.running(
        parse_config(fleet_config(2) + "[agents.late]\nautostart = false\n"),
        Paths.resolve(home),
        runtime=backend,
    ) as host:
        fleet = host.fleet
        mono = Mono()
        fleet.monotonic = mono
        await until(lambda: fleet.resyncs == 1)  # the listing made when the feed opened
        backend.hold_listing = asyncio.Event()
        listing = asyncio.create_task(fleet.resync())
        await until(lambda: backend.calls["statuses"] == 2)  # its snapshot is taken
        backend.crash("a00")  # newer than the snapshot
        await until(lambda: fleet.runs["a00"].state == "restarting")
        backend.tell_starts = False  # its start event is still on its way
        await fleet.start("late")  # started after the snapshot: not in it
        backend.hold_listing.set()
        await listing
        dead = fleet.runs["a00"].container_id
        assert dead is not None and fleet.observed[dead].state == "exited"
        assert fleet.runs["late"].state == "running"
        late = fleet.runs["late"].container_id
        assert late is not None and late not in fleet.observed  # not marked missing
        await fleet.check("late")
        assert fleet.runs["late"].state == "running"


async def test_issue_10_a_broken_event_stream_is_followed_again_and_resynced(home: Path) -> None:
    """issue 10: when the engine ends the event stream (it restarted), the fleet opens it
    again and lists the containers, so a death during the gap is not missed."""
    backend = FakeBackend()
    async with Host.running(
        parse_config(fleet_config(2)), Paths.resolve(home), runtime=backend
    ) as host:
        await until(lambda: host.fleet.feed_up)
        backend.fail_watch = True
        backend.end_feeds()
        await until(lambda: not host.fleet.feed_up)
        backend.crash("a01", tell=False)  # during the outage: no feed to tell
        await until(lambda: backend.calls["watch"] >= 2)  # a try refused by the engine
        backend.fail_watch = False
        await until(lambda: host.fleet.feed_up, timeout_s=20)
        await until(lambda: backend.starts["a01"] == 2, timeout_s=20)
        assert backend.calls["watch"] >= 3  # the first, a refused one, the one that worked
        assert host.fleet.resyncs >= 2


async def test_issue_10_an_unhealthy_container_is_restarted(home: Path) -> None:
    """issue 10: the engine's health verdict comes through the feed; unhealthy restarts."""
    backend = FakeBackend()
    async with Host.running(
        parse_config(fleet_config(1)), Paths.resolve(home), runtime=backend
    ) as host:
        backend.unhealthy("a00")
        await until(lambda: backend.starts["a00"] == 2)
        records = [
            r for r in audit.query(host.store.conn, actor="host") if r.action == "agent.restarting"
        ]
        assert records[0].detail["reason"] == "container unhealthy (its health check failed)"
