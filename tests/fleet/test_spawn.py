"""Sub-agents (issue 14): `spawn_agent` through a real host and real sockets, with the fake
runtime backend (containers as states; the real-container figures are in
tests/fleet/test_docker_extend.py) and the fake LLM provider.

What is proved: the budget carve-out never lets parent plus children overspend the
parent's cap under concurrent spawns and calls; the unspent part goes back; a spawned
agent's permissions are the intersection of its template and its parent's; it cannot
spawn; TTL, operator stop and host restart end it and tell the parent; its result comes
back to the parent's inbox as a `task_result`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from legion.config import parse_config
from legion.fleet.backend import FakeBackend
from legion.gateway.vault import Vault
from legion.host import Host
from legion.mesh import audit
from legion.paths import Paths
from tests.conftest import agent_client, control_client
from tests.fakes.provider import FakeProvider, Reply

pytestmark = pytest.mark.anyio

PROVIDER_KEY = "sk-spawn-test-provider-7Tq2Wm9Xc"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def config_text(base_url: str, *, daily: float = 1.0, concurrent: int = 3) -> str:
    return f"""
[llm.models.m]
model = "openai/fake"
api_base = "{base_url}"
credential = "provider"
input_cost_per_mtok = 100.0
output_cost_per_mtok = 100.0

[llm.models.other]
model = "openai/other"
api_base = "{base_url}"
credential = "provider"
input_cost_per_mtok = 1.0
output_cost_per_mtok = 1.0

[teams.red]

[agents.parent]
model = "m"
team = "red"
[agents.parent.budget]
daily_usd = {daily}
[agents.parent.permissions]
can_spawn = true
can_manage_cron = true
blackboard_read = ["shared/**", "private/**"]
blackboard_write = ["notes/**"]
can_message = ["plain"]
[agents.parent.spawn]
max_concurrent = {concurrent}
default_budget_usd = 0.2
max_budget_usd = 0.5
default_ttl_s = 60.0
max_ttl_s = 120.0
[agents.parent.spawn.permissions]
blackboard_read = ["shared/public/**", "elsewhere/**"]
blackboard_write = ["notes/**", "other/**"]
can_spawn = true
can_manage_cron = true

[agents.plain]
model = "m"
"""


@asynccontextmanager
async def spawning_host(
    home: Path, text: str, clock: Clock | None = None
) -> AsyncIterator[tuple[Host, FakeBackend]]:
    paths = Paths.resolve(home)
    paths.home.mkdir(parents=True, exist_ok=True)
    vault = Vault(paths.vault_db, paths.vault_key)
    vault.set("provider", PROVIDER_KEY, tier="system")
    vault.close()
    backend = FakeBackend()
    async with Host.running(
        parse_config(text), paths, runtime=backend, clock=clock or time.time
    ) as host:
        yield host, backend


async def spawn(host: Host, body: dict[str, Any], parent: str = "parent") -> httpx.Response:
    async with agent_client(host.paths, parent) as client:
        return await client.post("/v1/agents/spawn", json=body)


async def poll(host: Host, agent: str, wait_s: float = 0.0) -> list[dict[str, Any]]:
    async with agent_client(host.paths, agent) as client:
        response = await client.post("/v1/inbox/poll", json={"wait_s": wait_s})
        response.raise_for_status()
        items: list[dict[str, Any]] = response.json()["items"]
        return items


def spent(host: Host, *agents: str) -> float:
    marks = ",".join("?" * len(agents))
    row = host.store.execute(
        f"SELECT COALESCE(SUM(cost_usd), 0) FROM ledger WHERE agent IN ({marks})", agents
    ).fetchone()
    return float(row[0])


async def test_a_spawned_agent_runs_its_task_and_its_result_reaches_the_parent(home: Path) -> None:
    """issue 14: the task's result comes back to the parent's inbox as a `task_result`;
    the sub-agent is listed with its parent until then, and removed after. The spawner
    follows the bus only while a sub-agent lives (an idle subscriber would make every
    streamed token's event get built for nobody)."""
    async with (
        FakeProvider() as fake,
        spawning_host(home, config_text(fake.base_url)) as (
            host,
            backend,
        ),
    ):
        assert host.bus.subscriber_count == 0
        made = await spawn(host, {"role": "fact checker", "task": "check the date"})
        assert made.status_code == 200, made.text
        assert host.bus.subscriber_count == 1
        child = made.json()
        name = child["agent"]
        assert name.startswith("parent-") and child["parent"] == "parent"
        assert child["budget_usd"] == 0.2 and child["ttl_s"] == 60.0 and child["model"] == "m"
        assert backend.states[name].state == "running"
        spec = backend.specs[name]
        assert spec.skills_dir is not None and spec.identity_dir is not None
        async with control_client(host.paths) as operator:
            agents = {a["name"]: a for a in (await operator.get("/v1/agents")).json()["agents"]}
        assert agents[name]["parent"] == "parent" and agents["parent"]["parent"] is None
        assert agents[name]["mode"] == "task" and agents[name]["team"] == "red"
        # the child sees its task, from its parent, and its own view of itself
        (item,) = await poll(host, name)
        assert item["id"] == child["item_id"] and item["sender"] == "parent"
        assert item["payload"]["task"] == "check the date"
        async with agent_client(host.paths, name) as me:
            view = (await me.get("/v1/self")).json()
            assert view["parent"] == "parent" and view["mode"] == "task"
            assert view["permissions"]["can_spawn"] is False
            assert view["permissions"]["can_manage_cron"] is False
            assert view["budget_left"]["daily_usd"] == pytest.approx(0.2)
            reply = await me.post(
                "/v1/replies",
                json={
                    "in_reply_to": item["id"],
                    "text": "it is Tuesday",
                    "kind": "task_result",
                    "result": {"status": "done", "output": "it is Tuesday"},
                },
            )
            assert reply.json()["delivered_to"] == "parent"
        (answer,) = await poll(host, "parent")
        assert answer["sender"] == name
        assert answer["payload"]["kind"] == "task_result"
        assert answer["payload"]["reply_to"] == child["item_id"]
        assert answer["payload"]["result"]["status"] == "done"
        # reported: it is gone, everything of it removed, its unspent budget back
        deadline = time.monotonic() + 10
        while name in host.config.agents and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert name not in host.config.agents and name not in backend.states
        assert not host.paths.agent_socket(name).exists()
        assert not host.paths.agent_data(name).exists()
        assert host.budgets.remaining("parent")["daily"] == pytest.approx(1.0)
        records = [(r.action, r.target, r.decision) for r in audit.query(host.store.conn)]
        assert ("agent.spawn", name, "allow") in records
        assert ("agent.reaped", name, "allow") in records
        deadline = time.monotonic() + 5
        while host.bus.subscriber_count and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert host.bus.subscriber_count == 0


async def test_a_spawned_agents_permissions_are_the_intersection_and_it_cannot_spawn(
    home: Path,
) -> None:
    """issue 14: template [agents.parent.spawn.permissions] intersected with the parent's."""
    async with FakeProvider() as fake, spawning_host(home, config_text(fake.base_url)) as (host, _):
        name = (await spawn(host, {"role": "r", "task": "t"})).json()["agent"]
        async with agent_client(host.paths, name) as child, control_client(host.paths) as op:
            for key in (
                "shared/public/a",
                "shared/secret",
                "private/x",
                "elsewhere/y",
                "teams/red/z",
            ):
                await op.put(f"/v1/blackboard/entries/{key}", json={"value": 1})

            async def reads(key: str) -> int:
                return (await child.get(f"/v1/blackboard/entries/{key}")).status_code

            async def writes(key: str) -> int:
                return (
                    await child.put(f"/v1/blackboard/entries/{key}", json={"value": 2})
                ).status_code

            assert await reads("shared/public/a") == 200  # both allow
            assert await reads("shared/secret") == 403  # the parent does, the template not
            assert await reads("private/x") == 403  # the parent does, the template not
            assert await reads("elsewhere/y") == 403  # the template does, the parent not
            assert await reads("teams/red/z") == 200  # the team's space: both, by the team
            assert await writes("notes/n") == 200
            assert await writes("other/o") == 403  # the template does, the parent not
            listed = (await child.get("/v1/blackboard/entries")).json()["entries"]
            assert {e["key"] for e in listed} <= {"shared/public/a", "teams/red/z", "notes/n"}
            assert {"shared/public/a", "teams/red/z"} <= {e["key"] for e in listed}
            # no right to spawn in turn, whatever its template says
            again = await child.post("/v1/agents/spawn", json={"role": "r", "task": "t"})
            assert again.status_code == 403 and again.json()["error"]["code"] == "permission_denied"
            denied = await child.post("/v1/messages", json={"to": "plain", "payload": "hi"})
            assert denied.status_code == 403  # the template grants no can_message
        reasons = [
            r.detail.get("reason", "")
            for r in audit.query(host.store.conn)
            if r.actor == name and r.decision == "deny"
        ]
        assert any("spawned by parent, which may not" in reason for reason in reasons)


async def test_only_agents_with_can_spawn_spawn_and_within_their_limits(home: Path) -> None:
    async with (
        FakeProvider() as fake,
        spawning_host(home, config_text(fake.base_url, concurrent=2)) as (host, _),
    ):
        plain = await spawn(host, {"role": "r", "task": "t"}, parent="plain")
        assert plain.status_code == 403 and "can_spawn" in plain.json()["error"]["message"]
        too_long = await spawn(host, {"role": "r", "task": "t", "ttl_s": 121})
        assert too_long.status_code == 422 and "ttl_s" in too_long.json()["error"]["message"]
        too_rich = await spawn(host, {"role": "r", "task": "t", "budget_usd": 0.6})
        assert too_rich.status_code == 422
        model = await spawn(host, {"role": "r", "task": "t", "model": "other"})
        assert model.status_code == 403 and "may not use model" in model.json()["error"]["message"]
        assert (await spawn(host, {"role": "", "task": "t"})).status_code == 422
        assert (await spawn(host, {"role": "r", "task": "t", "ttl_s": -1})).status_code == 422
        assert (await spawn(host, {"role": "r", "task": "t", "extra": 1})).status_code == 422
        first = await spawn(host, {"role": "r", "task": "t"})
        second = await spawn(host, {"role": "r", "task": "t"})
        assert first.status_code == second.status_code == 200
        third = await spawn(host, {"role": "r", "task": "t"})
        assert third.status_code == 429 and third.json()["error"]["code"] == "spawn_limit"
        refusals = [r for r in audit.query(host.store.conn) if r.action == "agent.spawn_refused"]
        assert len(refusals) >= 4


async def test_the_ttl_ends_a_sub_agent_and_the_parent_is_told(home: Path) -> None:
    """issue 14: TTL reaping."""
    clock = Clock()
    async with (
        FakeProvider() as fake,
        spawning_host(home, config_text(fake.base_url), clock) as (
            host,
            backend,
        ),
    ):
        made = (await spawn(host, {"role": "r", "task": "t", "ttl_s": 30})).json()
        name = made["agent"]
        await host.spawner.check()
        assert name in host.config.agents  # not yet
        clock.now += 31
        await host.spawner.check()
        assert name not in host.config.agents and name not in backend.states
        (told,) = await poll(host, "parent")
        assert told["sender"] == name and told["payload"]["kind"] == "task_result"
        assert told["payload"]["reply_to"] == made["item_id"]
        result = told["payload"]["result"]
        assert result["status"] == "failed" and "time to live of 30s" in result["output"]
        async with control_client(host.paths) as operator:
            names = [a["name"] for a in (await operator.get("/v1/agents")).json()["agents"]]
        assert name not in names


async def test_legion_agents_stop_ends_a_sub_agent(home: Path) -> None:
    async with FakeProvider() as fake, spawning_host(home, config_text(fake.base_url)) as (host, _):
        made = (await spawn(host, {"role": "r", "task": "t"})).json()
        async with control_client(host.paths) as operator:
            stopped = await operator.post(f"/v1/agents/{made['agent']}/stop")
            assert stopped.status_code == 200 and stopped.json()["state"] == "stopped"
        await host.spawner.check()
        assert made["agent"] not in host.config.agents
        (told,) = await poll(host, "parent")
        assert "the operator stopped it" in told["payload"]["result"]["output"]


async def test_a_reload_keeps_sub_agents_and_does_not_report_them_as_changes(home: Path) -> None:
    async with FakeProvider() as fake:
        text = config_text(fake.base_url)
        async with spawning_host(home, text) as (host, _):
            host.paths.config.write_text(text)
            name = (await spawn(host, {"role": "r", "task": "t"})).json()["agent"]
            async with control_client(host.paths) as operator:
                result = (await operator.post("/v1/config/reload")).json()
            assert result["removed"] == [] and result["changed"] == []
            assert name in host.config.agents and host.permissions.bounds[name] == "parent"
            assert host.paths.agent_socket(name).exists()


async def test_a_host_restart_ends_sub_agents_and_tells_their_parents(home: Path) -> None:
    """issue 14: sub-agents are not resumed; their parents hear it; carves close."""
    async with FakeProvider() as fake:
        text = config_text(fake.base_url)
        async with spawning_host(home, text) as (host, _):
            made = (await spawn(host, {"role": "r", "task": "t", "budget_usd": 0.4})).json()
            assert host.budgets.remaining("parent")["daily"] == pytest.approx(0.6)
        async with spawning_host(home, text) as (host, backend):
            assert made["agent"] not in host.config.agents and not backend.states.get(made["agent"])
            assert host.budgets.remaining("parent")["daily"] == pytest.approx(1.0)
            assert host.budgets.carve.open == {}
            (told,) = await poll(host, "parent")
            assert told["sender"] == made["agent"]
            assert "host restarted" in told["payload"]["result"]["output"]
            assert not host.paths.agent_data(made["agent"]).exists()


# --- money --------------------------------------------------------------------------------


async def call(host: Host, agent: str) -> int:
    async with agent_client(host.paths, agent) as client:
        response = await client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "count to three"}], "max_tokens": 50},
        )
        return response.status_code


async def test_parent_plus_children_never_overspend_the_parents_cap(home: Path) -> None:
    """issue 14: concurrent spawns and concurrent calls of parent and children; the ledger
    total of all of them stays within the parent's daily cap, the carve-out is held while
    the children live, and what they did not spend goes back when they end."""
    cap = 0.3
    async with (
        FakeProvider() as fake,
        spawning_host(home, config_text(fake.base_url, daily=cap, concurrent=20)) as (host, _),
    ):
        spawned = await asyncio.gather(
            *(spawn(host, {"role": "r", "task": "t", "budget_usd": 0.07}) for _ in range(10))
        )
        ok = [r.json()["agent"] for r in spawned if r.status_code == 200]
        refused = [r for r in spawned if r.status_code != 200]
        assert len(ok) == 4  # 4 x 0.07 = 0.28 fits in 0.30; a fifth does not
        assert all(r.status_code == 402 for r in refused)
        assert "does not fit" in refused[0].json()["error"]["message"]
        left = host.budgets.remaining("parent")["daily"]
        assert left == pytest.approx(cap - 4 * 0.07)
        # everyone calls at once, three at a time each, until the money runs out
        statuses: list[int] = []

        async def drain(agent: str) -> None:
            for _ in range(200):
                status = await call(host, agent)
                statuses.append(status)
                if status == 402:
                    return

        await asyncio.gather(*(drain(agent) for agent in ["parent", *ok] for _ in range(3)))
        assert statuses.count(200) > 0 and statuses.count(402) > 0
        assert set(statuses) <= {200, 402}
        total = spent(host, "parent", *ok)
        assert total > cap / 2  # they did spend (what each holds at the end is under a call)
        print(
            f"\ncarve-out: {statuses.count(200)} calls served, {statuses.count(402)} refused; "
            f"parent + 4 children spent ${total:.6f} of a ${cap} cap"
        )
        assert total <= cap + 1e-9
        for child in ok:
            assert spent(host, child) <= 0.07 + 1e-9
        # the children end: what they did not spend is the parent's again
        for child in ok:
            await host.spawner.reap(child, "test over")
        assert host.budgets.carve.open == {}
        assert host.budgets.remaining("parent")["daily"] == pytest.approx(cap - total, abs=1e-9)
        # and the fleet cap saw the same money once
        assert host.budgets.spent_today("parent") == pytest.approx(total, abs=1e-9)


async def test_a_carve_survives_a_restart_as_the_parents_spend(home: Path) -> None:
    """The children's spend stays booked to the parent after the children and the host
    are gone (the carves table says whose they were)."""
    async with FakeProvider() as fake:
        text = config_text(fake.base_url, daily=0.3, concurrent=5)
        async with spawning_host(home, text) as (host, _):
            child = (await spawn(host, {"role": "r", "task": "t", "budget_usd": 0.1})).json()[
                "agent"
            ]
            assert await call(host, child) == 200
            used = spent(host, child)
            assert used > 0
        async with spawning_host(home, text) as (host, _):
            assert host.budgets.remaining("parent")["daily"] == pytest.approx(0.3 - used)


# --- with real agent runtimes (in-process) -----------------------------------------------


async def test_spawn_agent_end_to_end_with_runtimes(home: Path) -> None:
    """issue 14: the parent's model calls spawn_agent; the sub-agent's runtime works the
    task and finishes it; the result comes back into the parent's conversation, which
    answers the operator."""
    from agent_container.loop import AgentRuntime
    from tests.agent_container.harness import ask, runtime_task, until

    async with FakeProvider() as fake:
        text = (
            config_text(fake.base_url)
            .replace(
                '[agents.parent]\nmodel = "m"',
                '[agents.parent]\nmodel = "m"\nallowed_models = ["other"]',
            )
            .replace("_cost_per_mtok = 100.0", "_cost_per_mtok = 1.0")
        )
        async with spawning_host(home, text) as (host, _):
            fake.script(
                {
                    "tool_calls": [
                        {
                            "name": "spawn_agent",
                            "arguments": {
                                "role": "adder",
                                "task": "add 40 and 2",
                                "model": "other",
                            },
                        }
                    ]
                },
                {"content": "I asked a helper."},
                {"content": "The helper says 42."},
                model="fake",
            )
            fake.script(
                {
                    "tool_calls": [
                        {"name": "finish_task", "arguments": {"status": "done", "output": "42"}}
                    ]
                },
                model="other",
            )
            parent = AgentRuntime(
                socket_path=str(host.paths.agent_socket("parent")),
                workspace=str(home / "parent-ws"),
                data_dir=str(home / "parent-data"),
                max_backoff_s=0.5,
            )
            async with runtime_task(parent):
                first = await ask(host, {"text": "what is 40 + 2?"}, to="parent")
                assert first.text == "I asked a helper."
                assert await until(lambda: len(host.spawner.children) == 1, 10)
                (name,) = host.spawner.children
                child = AgentRuntime(
                    socket_path=str(host.paths.agent_socket(name)),
                    workspace=str(home / "child-ws"),
                    data_dir=str(home / "child-data"),
                    max_backoff_s=0.5,
                )
                async with host.bus.subscribe() as events, runtime_task(child):
                    async with asyncio.timeout(30):
                        while True:
                            event = await events.get()
                            if (
                                event.type == "agent_reply"
                                and event.agent == "parent"
                                and event.text == "The helper says 42."
                            ):
                                break
                assert await until(lambda: name not in host.config.agents, 10)
            spawn_request = next(r for r in fake.requests if r.body.get("model") == "other")
            system = spawn_request.body["messages"][0]["content"]
            assert "sub-agent that parent started" in system
            tools = {t["function"]["name"] for t in spawn_request.body["tools"]}
            assert "spawn_agent" not in tools  # no right to spawn: not even offered
            parent_tools = {t["function"]["name"] for t in fake.requests[0].body["tools"]}
            assert "spawn_agent" in parent_tools


async def test_pausing_a_parent_pauses_its_sub_agents(home: Path) -> None:
    """issue 9 (kill switch): a sub-agent works for its parent on the parent's money, so a
    pause of the parent cuts the sub-agent's stream in flight, refuses its new calls naming
    the parent to resume, and refuses new spawns; resuming the parent resumes them all.
    An unrelated agent is untouched."""
    async with (
        FakeProvider(chunk_delay_s=0.05) as fake,
        spawning_host(home, config_text(fake.base_url)) as (host, _),
    ):
        child = (await spawn(host, {"role": "r", "task": "t"})).json()["agent"]
        fake.script(Reply(content="word " * 400))  # ~20 s of stream
        body = {"messages": [{"role": "user", "content": "go"}], "stream": True, "max_tokens": 1500}
        async with (
            agent_client(host.paths, child) as client,
            client.stream("POST", "/v1/chat/completions", json=body) as response,
        ):
            assert response.status_code == 200, await response.aread()
            lines = response.aiter_lines()
            got = 0
            while got < 3:
                if (await lines.__anext__()).startswith("data: "):
                    got += 1
            async with control_client(host.paths) as operator:
                state = (await operator.post("/v1/pause", json={"agent": "parent"})).json()
            assert state["cut"] == 1  # the child's call, not the parent's (it has none)
            assert set(state["paused"]) == {"parent", child}
            async with asyncio.timeout(2):
                rest = [line async for line in lines if line.startswith("data: ")]
        error = json.loads(rest[-1][6:])["error"]
        assert error["code"] == "agent_paused" and "legion resume parent" in error["message"]
        assert await call(host, child) == 423
        async with agent_client(host.paths, child) as client:
            refused = (
                await client.post("/v1/chat/completions", json=body | {"stream": False})
            ).json()
        assert "sub-agent of parent" in refused["error"]["message"]
        again = await spawn(host, {"role": "r", "task": "t"})
        assert again.status_code == 423 and again.json()["error"]["code"] == "agent_paused"
        assert await call(host, "plain") == 200
        async with control_client(host.paths) as operator:
            state = (await operator.post("/v1/resume", json={"agent": "parent"})).json()
        assert state["paused"] == []
        assert await call(host, child) == 200
        assert (await spawn(host, {"role": "r", "task": "t"})).status_code == 200
