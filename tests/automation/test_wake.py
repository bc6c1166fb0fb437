"""Wake checks (issue 12): an idle agent whose checks find nothing costs zero model calls;
a finding starts one turn with what was found; HEARTBEAT.md is read safely."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent_container.loop import AgentRuntime
from legion.automation.wake import parse_rules
from tests.agent_container.harness import runtime_task, until
from tests.automation.conftest import Clock, at, config, host_at
from tests.fakes.provider import FakeProvider, Reply

pytestmark = pytest.mark.anyio

WAKE = """
[agents.alice.wake]
interval_s = 60.0
watch = ["notes/**"]
"""


def heartbeat(home: Path, text: str | None = None) -> Path:
    folder = home / "agents" / "alice" / "workspace"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "HEARTBEAT.md"
    if text is not None:
        path.write_text(text)
    return path


def audit_actions(host: object, prefix: str) -> list[str]:
    rows = host.store.execute(  # type: ignore[attr-defined]
        "SELECT action FROM audit WHERE action LIKE ? ORDER BY seq", (prefix + "%",)
    )
    return [str(r[0]) for r in rows]


async def test_an_idle_agent_costs_zero_model_calls_over_many_wake_intervals(home: Path) -> None:
    """issue 12: 200 wake intervals with nothing to find: no LLM call, every check counted,
    nothing written to the audit log."""
    heartbeat(
        home,
        "# My rules\nBe thorough.\n- when blackboard teams/x/** changes: re-plan\n"
        "- every monday at 09:00 weekly review\n- at 2031-01-01 09:00 new year\n",
    )
    clock = Clock(at("2024-09-01 00:00"))  # a Sunday
    async with (
        FakeProvider() as fake,
        host_at(home, config(fake.base_url, WAKE), clock) as host,
    ):
        runtime = AgentRuntime(str(host.paths.agent_socket("alice")), str(home / "ws"))
        async with runtime_task(runtime):
            assert await until(lambda: "alice" in host.last_poll)
            for _ in range(200):
                clock.advance(60)
                await host.automation.wake.check_due()
            status = host.automation.wake.status("alice")
            assert status is not None
            assert fake.requests == []
            assert status.checks >= 200 and status.dispatched == 0
            assert status.skipped == status.checks
            assert status.heartbeat == "read (3 rules)" and status.rule_errors == []
            assert audit_actions(host, "wake.") == []
            # `legion status` shows it
            st = host.status()
            alice = next(a for a in st.agents if a.name == "alice")
            assert alice.wake is not None and alice.wake.skipped == status.skipped


async def test_a_finding_starts_one_turn_with_what_was_found(home: Path) -> None:
    heartbeat(home, "- when blackboard teams/x/** changes: re-plan\n- every day at 09:00 standup")
    clock = Clock(at("2024-09-02 08:58"))
    async with (
        FakeProvider() as fake,
        host_at(home, config(fake.base_url, WAKE), clock) as host,
    ):
        runtime = AgentRuntime(str(host.paths.agent_socket("alice")), str(home / "ws"))
        async with runtime_task(runtime):
            wake = host.automation.wake
            assert await wake.check("alice") == "nothing"  # starts watching from now
            host.blackboard.put("notes/plan", {"step": 1}, "operator")
            host.blackboard.put("secret/other", 1, "operator")  # not watched
            fake.script(Reply(content="noted"))
            clock.advance(60)
            assert await wake.check("alice") == "dispatched"
            assert await until(lambda: len(fake.requests) == 1 and host.inboxes.depth("alice") == 0)
            user = fake.requests[0].body["messages"][-1]["content"]
            assert user.startswith("[wake check") and '<data source="wake check">' in user
            assert "notes/plan v1 (put by operator)" in user and "secret/other" not in user
            clock.advance(60)  # 09:00 passed: the time rule is due
            fake.script(Reply(content="standup done"))
            assert await wake.check("alice") == "dispatched"
            assert await until(lambda: len(fake.requests) == 2 and host.inboxes.depth("alice") == 0)
            assert (
                "due: every day at 09:00 standup"
                in fake.requests[1].body["messages"][-1]["content"]
            )
            for _ in range(30):  # then nothing again: no more calls
                clock.advance(60)
                await wake.check("alice")
            assert len(fake.requests) == 2
            assert audit_actions(host, "wake.") == ["wake.dispatch", "wake.dispatch"]


async def test_a_busy_or_pending_agent_is_not_woken(home: Path) -> None:
    clock = Clock(at("2024-09-02 08:00"))
    async with host_at(home, config(extra=WAKE), clock) as host:
        wake = host.automation.wake
        await wake.check("alice")
        host.blackboard.put("notes/a", 1, "operator")
        host.send("operator", "alice", "hello")  # work in its lane already
        assert await wake.check("alice") == "busy"
        host.inboxes.ack("alice", [int(r[0]) for r in host.store.execute("SELECT id FROM inbox")])
        assert await wake.check("alice") == "dispatched"  # the change was kept for later
        host.blackboard.put("notes/b", 1, "operator")
        assert await wake.check("alice") == "pending"  # the wake item is not handled yet
        assert host.inboxes.depth("alice") == 1


@pytest.mark.parametrize("kind", ["symlink", "fifo", "too-large", "directory"])
async def test_a_planted_heartbeat_file_is_refused_never_followed(home: Path, kind: str) -> None:
    """issue 12 / invariant 9: the agent owns the file; the host never trusts it."""
    path = heartbeat(home)
    outside = home / "outside.md"
    outside.write_text("- every day at 00:00 leak\n")
    if kind == "symlink":
        path.symlink_to(outside)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "too-large":
        path.write_text("- every 1h x\n" + "x" * 5000)
    else:
        path.mkdir()
    clock = Clock(at("2024-09-02 08:00"))
    async with host_at(home, config(extra=WAKE), clock) as host:
        for _ in range(5):
            clock.advance(60)
            assert await host.automation.wake.check("alice") == "nothing"
        status = host.automation.wake.status("alice")
        assert status is not None and status.heartbeat.startswith("refused"), status.heartbeat
        assert audit_actions(host, "wake.") == ["wake.heartbeat_refused"]  # once, not 5 times


async def test_a_planted_workspace_link_is_refused(home: Path) -> None:
    (home / "agents" / "alice").mkdir(parents=True)
    target = home / "elsewhere"
    target.mkdir()
    (target / "HEARTBEAT.md").write_text("- every 1m x\n")
    (home / "agents" / "alice" / "workspace").symlink_to(target)
    async with host_at(home, config(extra=WAKE)) as host:
        await host.automation.wake.check("alice")
        status = host.automation.wake.status("alice")
        assert status is not None and "symbolic link" in status.heartbeat


def test_the_rule_grammar() -> None:
    rules, errors = parse_rules(
        "\n".join(
            [
                "# heading and prose are ignored",
                "- write good notes",
                "- when blackboard teams/research/** changes: summarise",
                "* every weekday at 9:05 morning check",
                "- every mon,thu at 18:30",
                "- every 2h: look around",
                "- at 2030-01-31 09:00 send the report",
                "- every someday at 09:00",
                "- when blackboard a/*/*/* changes",
                "- every 10s",
                "- at 2030-02-30 09:00",
                "- every day at 25:00",
            ]
        )
    )
    assert [(r.kind, r.note) for r in rules] == [
        ("blackboard", "summarise"),
        ("daily", "morning check"),
        ("daily", ""),
        ("interval", "look around"),
        ("once", "send the report"),
    ]
    assert rules[1].days == frozenset({0, 1, 2, 3, 4}) and (rules[1].hour, rules[1].minute) == (
        9,
        5,
    )
    assert rules[2].days == frozenset({0, 3})
    assert len(errors) == 5 and all("line" in e for e in errors)
    assert "'someday' is not a day" in errors[0]
    many, errs = parse_rules("\n".join(f"- every {n + 1}h" for n in range(60)))
    assert len(many) == 50 and "more than 50 rules" in errs[0]
