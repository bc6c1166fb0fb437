"""Cron jobs on a real host with an injected clock (issue 12): runs, overlaps, failures,
tool mode with no model call, missed-run policies across a restart, the agent's tools."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from legion.config import parse_config
from legion.host import Host
from legion.paths import Paths
from tests.automation.conftest import Clock, at, config, host_at
from tests.conftest import agent_client, control_client
from tests.fakes.provider import FakeProvider

pytestmark = pytest.mark.anyio


async def add_job(host: Host, **spec: Any) -> dict[str, Any]:
    async with control_client(host.paths) as operator:
        response = await operator.post("/v1/cron/jobs", json=spec)
        assert response.status_code == 200, response.text
        return dict(response.json())


def inbox(host: Host, agent: str) -> list[tuple[str, Any]]:
    import json

    return [
        (str(sender), json.loads(payload))
        for sender, payload in host.store.execute(
            "SELECT sender, payload FROM inbox WHERE agent = ? ORDER BY id", (agent,)
        )
    ]


def ack_all(host: Host, agent: str) -> None:
    ids = [int(r[0]) for r in host.store.execute("SELECT id FROM inbox WHERE agent = ?", (agent,))]
    host.inboxes.ack(agent, ids)


async def test_a_message_job_runs_at_its_slot_once(home: Path) -> None:
    clock = Clock(at("2024-09-02 08:59:30"))
    async with host_at(home, config(), clock) as host:
        job = await add_job(
            host, agent="alice", name="standup", schedule="0 9 * * 1-5", message="post the plan"
        )
        assert job["next_run_at"] == at("2024-09-02 09:00") and job["state"] == "active"
        assert host.automation.cron.fire_due() == 0  # not yet
        clock.set(at("2024-09-02 09:00:00.2"))
        assert host.automation.cron.fire_due() == 1
        assert host.automation.cron.fire_due() == 0  # a slot runs once
        [(sender, payload)] = inbox(host, "alice")
        assert sender == f"cron:{job['id']}"
        assert payload["text"] == "post the plan"
        assert payload["cron"]["name"] == "standup" and payload["cron"]["trigger"] == "schedule"
        after = host.automation.cron.get(job["id"])
        assert after.runs == 1 and after.running
        assert after.next_run_at == at("2024-09-03 09:00")


async def test_a_job_still_running_is_skipped_and_counted(home: Path) -> None:
    """issue 12: the previous run's inbox item is not handled yet: skip, count."""
    clock = Clock(at("2024-09-02 09:00"))
    async with host_at(home, config(), clock) as host:
        job = await add_job(host, agent="alice", name="tick", schedule="every 10s", message="t")
        for _ in range(3):
            clock.advance(10)
            host.automation.cron.fire_due()
        view = host.automation.cron.get(job["id"])
        assert (view.runs, view.overlaps) == (1, 2)
        assert len(inbox(host, "alice")) == 1
        ack_all(host, "alice")  # handled
        clock.advance(10)
        host.automation.cron.fire_due()
        assert host.automation.cron.get(job["id"]).runs == 2
        async with control_client(host.paths) as operator:
            runs = (await operator.get(f"/v1/cron/jobs/{job['id']}/runs")).json()["runs"]
        assert [r["trigger"] for r in runs] == ["schedule", "schedule"]


async def test_a_bad_job_fails_with_its_reason_and_the_others_keep_running(home: Path) -> None:
    """issue 12: an agent removed by a reload fails its job; the scheduler goes on."""
    clock = Clock(at("2024-09-02 09:00"))
    async with host_at(home, config(), clock) as host:
        a = await add_job(host, agent="alice", name="a", schedule="every 60s", message="a")
        b = await add_job(host, agent="bob", name="b", schedule="every 60s", message="b")
        new = parse_config(config().split("[agents.bob]")[0])
        await host.apply_config(new)
        clock.advance(60)
        assert host.automation.cron.fire_due() == 1
        assert host.automation.cron.get(a["id"]).runs == 1
        failed = host.automation.cron.get(b["id"])
        assert failed.state == "failed" and "bob is no longer configured" in failed.reason
        ack_all(host, "alice")
        clock.advance(60)
        assert host.automation.cron.fire_due() == 1  # alice's job goes on
        async with control_client(host.paths) as operator:
            resumed = await operator.post(f"/v1/cron/jobs/{b['id']}/resume")
        assert resumed.status_code == 409 and resumed.json()["error"]["code"] == "job_broken"
        # a broken expression stored in the db (a downgrade, a hand edit) fails the same way
        host.store.execute("UPDATE cron_jobs SET schedule = '99 * * * *' WHERE id = ?", (a["id"],))
        host.automation.cron._schedules.clear()
        clock.advance(60)
        assert host.automation.cron.fire_due() == 0
        assert "not a valid cron expression" in host.automation.cron.get(a["id"]).reason


async def test_tool_mode_writes_the_blackboard_with_no_model_call(home: Path) -> None:
    """issue 12: a tool job runs one host-side tool directly: no inbox item, no LLM call."""
    clock = Clock(at("2024-09-02 09:00"))
    async with FakeProvider() as fake, host_at(home, config(fake.base_url), clock) as host:
        job = await add_job(
            host,
            agent="alice",
            name="stamp",
            schedule="every 60s",
            tool="blackboard_write",
            args={"key": "notes/stamp", "value": {"ok": True}},
        )
        clock.advance(60)
        assert host.automation.cron.fire_due() == 1
        entry = host.blackboard.get("notes/stamp")
        assert entry is not None and entry.writer == "alice" and entry.value == {"ok": True}
        assert inbox(host, "alice") == [] and fake.requests == []
        runs = host.automation.cron.runs(job["id"])
        assert runs[0].status == "done" and "notes/stamp" in runs[0].detail
        # as alice, with alice's permissions: a key it may not write fails the run
        bad = await add_job(
            host,
            agent="alice",
            name="nope",
            schedule="every 60s",
            tool="blackboard_write",
            args={"key": "secret/x", "value": 1},
        )
        clock.advance(60)
        host.automation.cron.fire_due()
        assert host.blackboard.get("secret/x") is None
        failed = host.automation.cron.runs(bad["id"])[0]
        assert failed.status == "failed" and "may not bb.put" in failed.detail
        denies = list(
            host.store.execute(
                "SELECT actor, action, target FROM audit"
                " WHERE decision = 'deny' AND action = 'bb.put'"
            )
        )
        assert denies == [("alice", "bb.put", "secret/x")]
        assert host.automation.cron.get(job["id"]).runs == 2  # the good one ran again


async def test_job_specs_are_checked_before_anything_is_stored(home: Path) -> None:
    async with host_at(home, config()) as host, control_client(host.paths) as operator:
        cases = [
            ({"schedule": "every 1s", "message": "x", "agent": "zed"}, "unknown_agent"),
            ({"schedule": "0 0 30 2 *", "message": "x"}, "invalid_schedule"),
            ({"schedule": "@daily", "message": "x", "timezone": "Mars/Base"}, "invalid_timezone"),
            ({"schedule": "@daily"}, "invalid_job"),
            ({"schedule": "@daily", "tool": "run_command", "args": {}}, "invalid_body"),
            ({"schedule": "@daily", "tool": "publish", "args": {"topic": "t"}}, "invalid_args"),
            ({"schedule": "@daily", "message": "x", "tool": "notify_user"}, "invalid_job"),
        ]
        for spec, code in cases:
            body = {"agent": "alice", "name": "j", **spec}
            response = await operator.post("/v1/cron/jobs", json=body)
            assert response.json()["error"]["code"] == code, (spec, response.text)
        assert (await operator.get("/v1/cron/jobs")).json()["jobs"] == []


async def test_agents_manage_their_own_jobs_within_the_cap(home: Path) -> None:
    """issue 12: cron_set/cron_list/cron_remove need can_manage_cron and respect the cap."""
    async with host_at(home, config()) as host:
        async with agent_client(host.paths, "alice") as alice:
            for name in ("one", "two"):
                r = await alice.put(
                    f"/v1/cron/{name}", json={"schedule": "@hourly", "message": name}
                )
                assert r.status_code == 200, r.text
                assert r.json()["created_by"] == "alice"
            third = await alice.put("/v1/cron/three", json={"schedule": "@hourly", "message": "3"})
            assert third.status_code == 409 and third.json()["error"]["code"] == "cron_limit"
            # changing an existing job is not a new one
            again = await alice.put("/v1/cron/two", json={"schedule": "@daily", "message": "2"})
            assert again.status_code == 200 and again.json()["schedule"] == "@daily"
            listed = (await alice.get("/v1/cron")).json()["jobs"]
            assert [j["name"] for j in listed] == ["one", "two"]
            assert (await alice.delete("/v1/cron/one")).status_code == 200
            assert (await alice.delete("/v1/cron/one")).status_code == 404
            bad = await alice.put("/v1/cron/..%2Fx", json={"schedule": "@daily", "message": "x"})
            assert bad.json()["error"]["code"] == "invalid_job_name"
        async with agent_client(host.paths, "bob") as bob:
            denied = await bob.put("/v1/cron/mine", json={"schedule": "@hourly", "message": "x"})
            assert denied.status_code == 403
            assert (await bob.get("/v1/cron")).status_code == 403
            # bob cannot touch alice's jobs: names are per caller
            assert (await bob.delete("/v1/cron/two")).status_code == 403
        # the operator's job for alice is the operator's: alice can neither change nor drop it
        await add_job(host, agent="alice", name="ops", schedule="@daily", message="o")
        async with agent_client(host.paths, "alice") as alice:
            change = await alice.put("/v1/cron/ops", json={"schedule": "@hourly", "message": "x"})
            assert change.status_code == 403 and change.json()["error"]["code"] == "not_your_job"
            assert (await alice.delete("/v1/cron/ops")).status_code == 403
        async with control_client(host.paths) as operator:
            ops = [
                j
                for j in (await operator.get("/v1/cron/jobs")).json()["jobs"]
                if j["name"] == "ops"
            ]
            await operator.delete(f"/v1/cron/jobs/{ops[0]['id']}")
        # the agent sees its schedules in /v1/self (its prompt's runtime context)
        me = host.self_status("alice")
        assert me.schedules == ["two (@daily, UTC)"]
        records = list(
            host.store.execute(
                "SELECT actor, action, decision FROM audit WHERE action LIKE 'cron.%' ORDER BY seq"
            )
        )
        assert ("bob", "cron.set", "deny") in records and ("alice", "cron.set", "allow") in records


async def test_missed_runs_follow_the_policy_across_a_restart(home: Path) -> None:
    """issue 12: the host is down past several slots: skip counts them, run_once runs one."""
    clock = Clock(at("2024-09-02 09:00"))
    async with host_at(home, config(), clock) as host:
        skip = await add_job(host, agent="alice", name="skip", schedule="every 60s", message="s")
        once = await add_job(
            host, agent="alice", name="once", schedule="*/1 * * * *", message="o", missed="run_once"
        )
    clock.advance(10 * 60 + 5)  # down for ten minutes
    async with host_at(home, config(), clock) as host:
        skipped = host.automation.cron.get(skip["id"])
        ran = host.automation.cron.get(once["id"])
        assert (skipped.runs, skipped.missed_runs) == (0, 10)
        assert (ran.runs, ran.missed_runs) == (1, 9)
        assert skipped.next_run_at == ran.next_run_at == at("2024-09-02 09:11")
        [(sender, payload)] = inbox(host, "alice")
        assert payload["cron"]["trigger"] == "missed" and sender == f"cron:{once['id']}"
    async with host_at(home, config(), clock) as host:  # a restart runs nothing again
        assert host.automation.cron.get(once["id"]).runs == 1
        assert len(inbox(host, "alice")) == 1


async def test_pause_resume_and_run_now(home: Path) -> None:
    clock = Clock(at("2024-09-02 09:00"))
    async with host_at(home, config(), clock) as host, control_client(host.paths) as operator:
        job = await add_job(host, agent="alice", name="p", schedule="every 60s", message="p")
        jid = job["id"]
        assert (await operator.post(f"/v1/cron/jobs/{jid}/pause")).json()["state"] == "paused"
        clock.advance(600)
        assert host.automation.cron.fire_due() == 0
        resumed = (await operator.post(f"/v1/cron/jobs/{jid}/resume")).json()
        assert resumed["state"] == "active" and resumed["missed_runs"] == 0
        manual = await operator.post(f"/v1/cron/jobs/{jid}/run")
        assert manual.status_code == 200 and manual.json()["trigger"] == "manual"
        again = await operator.post(f"/v1/cron/jobs/{jid}/run")
        assert again.status_code == 409 and again.json()["error"]["code"] == "job_running"
        assert (await operator.delete(f"/v1/cron/jobs/{jid}")).json()["removed"] is True
        assert (await operator.get(f"/v1/cron/jobs/{jid}")).status_code == 404
        assert (await operator.get("/v1/cron/jobs/abc")).status_code == 404


async def test_self_shows_the_agents_own_job_names_as_written_and_masks_the_operators(
    home: Path,
) -> None:
    """issue 7 (redaction is no oracle) with issue 12: /v1/self carries the agent's own cron
    job names, which come back as written even when a name equals a vault value; the
    operator-authored part (a system prompt holding a pasted secret) is still masked."""
    from legion.gateway.redact import MASK
    from legion.gateway.vault import Vault

    secret = "qzkvwmxrtplbnhjd"  # lower case: a valid job name, and a valid vault value
    paths = Paths.resolve(home)
    vault = Vault(paths.vault_db, paths.vault_key)
    vault.set("lowercase", secret, tier="system")
    vault.close()
    text = config().replace(
        "max_tool_rounds = 4\n", f'max_tool_rounds = 4\nsystem_prompt = "key {secret}"\n'
    )
    async with host_at(home, text) as host, agent_client(host.paths, "alice") as alice:
        for name in (secret, "plainjob"):
            r = await alice.put(f"/v1/cron/{name}", json={"schedule": "@hourly", "message": "x"})
            assert r.status_code == 200, r.text
        me = (await alice.get("/v1/self")).json()
        assert me["system_prompt"] == f"key {MASK}"
        assert [line.split(" ", 1)[0] for line in me["schedules"]] == sorted([secret, "plainjob"])
