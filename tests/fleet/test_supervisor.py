"""The fleet supervisor with the fake backend: restarts, backoff, the hourly cap, state."""

from __future__ import annotations

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
                backend.crash("alice")
                await fleet.check("alice")
                assert fleet.runs["alice"].state == "restarting"
                assert "exited with code 137" in fleet.runs["alice"].reason
                mono.now += expected_delay - 0.5
                await fleet.check("alice")  # too early: backoff holds
                assert fleet.runs["alice"].state == "restarting"
                mono.now += 0.5
                await fleet.check("alice")
                assert fleet.runs["alice"].state == "running"
            backend.crash("alice")
            await fleet.check("alice")
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
