"""Invariant 4: default deny, always audited.

A table test for every field of PermissionsConfig, team grants, unknown agents and the
operator; Guard audits each decision exactly once; a denial over a real agent socket is
a typed 403 with an audit record.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from legion.config import PermissionsConfig, parse_config
from legion.errors import Forbidden, NotFound
from legion.mesh import audit
from legion.mesh.audit import AuditLog
from legion.mesh.permissions import OPERATOR, Guard, Perm, Permissions
from legion.store import Store
from tests.conftest import HostFactory, agent_client

CONFIG = """
# never connected: loopback is refused by the address policy ([egress] allow is empty)
[mcp.github]
url = "http://127.0.0.1:9/mcp"

[teams.red]
[teams.blue]

[agents.nobody]

[agents.alice]
team = "red"

[agents.alice.permissions]
can_message = ["bob", "helper-*"]
can_publish = ["news/*"]
can_subscribe = ["alerts/**"]
blackboard_read = ["shared/**"]
blackboard_write = ["shared/alice/*"]
allowed_apis = ["search"]
egress_hosts = ["api.github.com", "*.example.org"]
allowed_credentials = ["github-*"]
can_manage_cron = true
can_spawn = true
allowed_mcp = ["github", "team-*"]
can_steer = ["bob"]
can_use_browser = true
browser_actions = ["navigate", "snapshot"]

[agents.bob]
team = "blue"

[agents.bob.permissions]
can_manage_cron = false
can_spawn = false
"""

ALL_PERMS = list(Perm)


@pytest.fixture(scope="module")
def perms() -> Permissions:
    return Permissions(parse_config(CONFIG))


def test_every_permissions_field_has_a_perm() -> None:
    # Perm.LLM is derived from the agent's model and allowed_models, not from the matrix;
    # browser_actions narrows Perm.BROWSER (can_use_browser) rather than being one.
    fields = set(PermissionsConfig.model_fields) - {"browser_actions"}
    assert {p.value for p in Perm if p is not Perm.LLM} == fields


# (perm, target, alice allowed?) -- alice has one grant per field; nobody has none.
TABLE: list[tuple[Perm, str, bool]] = [
    (Perm.MESSAGE, "bob", True),
    (Perm.MESSAGE, "helper-1", True),
    (Perm.MESSAGE, "carol", False),
    (Perm.MESSAGE, "bobby", False),
    (Perm.PUBLISH, "news/tech", True),
    (Perm.PUBLISH, "news/tech/ai", False),
    (Perm.PUBLISH, "alerts/x", False),
    (Perm.SUBSCRIBE, "alerts/a/b", True),
    (Perm.SUBSCRIBE, "alerts", False),
    (Perm.SUBSCRIBE, "news/tech", False),
    (Perm.BB_READ, "shared/x", True),
    (Perm.BB_READ, "shared/x/y/z", True),
    (Perm.BB_READ, "private/x", False),
    (Perm.BB_READ, "shared", False),
    (Perm.BB_WRITE, "shared/alice/notes", True),
    (Perm.BB_WRITE, "shared/alice/a/b", False),
    (Perm.BB_WRITE, "shared/bob/notes", False),
    (Perm.BB_WRITE, "shared/x", False),
    (Perm.EGRESS, "api.github.com", True),
    (Perm.EGRESS, "docs.example.org", True),
    (Perm.EGRESS, "evil.com", False),
    (Perm.API, "search", True),
    (Perm.API, "search2", False),
    (Perm.API, "browse", False),
    (Perm.CREDENTIAL, "github-token", True),
    (Perm.CREDENTIAL, "gitlab-token", False),
    (Perm.CREDENTIAL, "github-a/b", False),
    (Perm.MCP, "github", True),
    (Perm.MCP, "team-tools", True),
    (Perm.MCP, "githubx", False),
    (Perm.CRON, "", True),
    (Perm.CRON, "nightly", True),
    (Perm.SPAWN, "", True),
    (Perm.SPAWN, "worker", True),
    (Perm.STEER, "bob", True),
    (Perm.STEER, "carol", False),
    (Perm.BROWSER, "navigate", True),  # issue 13: browser_actions narrows can_use_browser
    (Perm.BROWSER, "snapshot", True),
    (Perm.BROWSER, "click", False),
]


def test_table_covers_every_field() -> None:
    perms_in_table = {perm for perm, _, _ in TABLE}
    assert perms_in_table == set(Perm) - {Perm.LLM}  # LLM: see tests/gateway/test_gateway.py
    # every list-valued permission is tested both ways
    for perm in set(Perm) - {Perm.LLM}:
        outcomes = {allowed for p, _, allowed in TABLE if p is perm}
        if perm not in (Perm.CRON, Perm.SPAWN):
            assert outcomes == {True, False}, perm


@pytest.mark.parametrize(
    ("perm", "target", "allowed"), TABLE, ids=[f"{p.value}:{t or '-'}" for p, t, _ in TABLE]
)
def test_alice_table(perms: Permissions, perm: Perm, target: str, allowed: bool) -> None:
    decision = perms.decide("alice", perm, target)
    assert decision.allowed is allowed, decision.reason
    assert perms.allows("alice", perm, target) is allowed
    assert decision.reason


@pytest.mark.parametrize(
    ("perm", "target", "_"), TABLE, ids=[f"{p.value}:{t or '-'}" for p, t, _ in TABLE]
)
def test_default_deny_for_agent_without_permissions(
    perms: Permissions, perm: Perm, target: str, _: bool
) -> None:
    decision = perms.decide("nobody", perm, target)
    assert decision.allowed is False, decision.reason


@pytest.mark.parametrize("perm", [Perm.CRON, Perm.SPAWN])
def test_flags_explicitly_false_deny(perms: Permissions, perm: Perm) -> None:
    assert perms.decide("bob", perm, "").allowed is False
    assert perms.decide("bob", perm, "anything").allowed is False


def test_deny_reason_names_agent_and_target(perms: Permissions) -> None:
    decision = perms.decide("alice", Perm.BB_WRITE, "private/x")
    assert "alice" in decision.reason
    assert "private/x" in decision.reason


# --- team grants ----------------------------------------------------------------------------

TEAM_TABLE: list[tuple[Perm, str, bool]] = [
    (Perm.BB_READ, "teams/blue/plan", True),
    (Perm.BB_WRITE, "teams/blue/plan", True),
    (Perm.BB_READ, "teams/blue/a/b/c", True),
    (Perm.BB_WRITE, "teams/blue/a/b/c", True),
    (Perm.BB_READ, "teams/red/plan", False),
    (Perm.BB_WRITE, "teams/red/plan", False),
    (Perm.BB_READ, "teams/blue", False),
    (Perm.BB_WRITE, "teams/bluex/plan", False),
    (Perm.BB_READ, "teams/plan", False),
    # the team grant is only for the blackboard
    (Perm.PUBLISH, "teams/blue/plan", False),
    (Perm.SUBSCRIBE, "teams/blue/plan", False),
    (Perm.MESSAGE, "teams/blue/plan", False),
    (Perm.API, "teams/blue/plan", False),
    (Perm.CREDENTIAL, "teams/blue/plan", False),
]


@pytest.mark.parametrize(
    ("perm", "target", "allowed"),
    TEAM_TABLE,
    ids=[f"{p.value}:{t}" for p, t, _ in TEAM_TABLE],
)
def test_team_member_grants(perms: Permissions, perm: Perm, target: str, allowed: bool) -> None:
    # bob (team blue) has no blackboard patterns of his own
    assert perms.decide("bob", perm, target).allowed is allowed


def test_team_grant_adds_to_own_patterns(perms: Permissions) -> None:
    assert perms.allows("alice", Perm.BB_WRITE, "teams/red/x")
    assert perms.allows("alice", Perm.BB_WRITE, "shared/alice/x")
    assert not perms.allows("alice", Perm.BB_WRITE, "teams/blue/x")
    assert "teams/red/**" in perms.patterns("alice", Perm.BB_READ)
    assert "teams/red/**" not in perms.patterns("alice", Perm.PUBLISH)


def test_agent_without_team_gets_no_team_grant(perms: Permissions) -> None:
    for team in ("red", "blue"):
        assert not perms.allows("nobody", Perm.BB_READ, f"teams/{team}/x")
        assert not perms.allows("nobody", Perm.BB_WRITE, f"teams/{team}/x")


# --- unknown agents and the operator --------------------------------------------------------


@pytest.mark.parametrize("perm", ALL_PERMS, ids=[p.value for p in ALL_PERMS])
@pytest.mark.parametrize("agent", ["ghost", "", "Alice", "alice ", "host", "system"])
def test_unknown_agent_denied(perms: Permissions, agent: str, perm: Perm) -> None:
    for target in ("", "shared/x", "**", "bob", "search"):
        decision = perms.decide(agent, perm, target)
        assert decision.allowed is False, (agent, perm, target)
    assert perms.patterns(agent, perm) == []


@pytest.mark.parametrize("perm", ALL_PERMS, ids=[p.value for p in ALL_PERMS])
def test_operator_allowed_everything(perms: Permissions, perm: Perm) -> None:
    for target in ("", "private/x", "teams/red/x", "anyone", "**"):
        assert perms.decide(OPERATOR, perm, target).allowed is True


def test_operator_allowed_with_empty_config() -> None:
    empty = Permissions(parse_config(""))
    assert empty.allows(OPERATOR, Perm.BB_WRITE, "x")
    assert not empty.allows("alice", Perm.BB_WRITE, "x")


# --- Guard: one audit record per decision ---------------------------------------------------


@pytest.fixture
def guard_and_store(tmp_path: Path) -> Iterator[tuple[Guard, Store]]:
    store = Store(tmp_path / "host.db")
    guard = Guard(Permissions(parse_config(CONFIG)), AuditLog(store.conn))
    yield guard, store
    store.close()


def test_guard_allow_writes_one_allow_record(guard_and_store: tuple[Guard, Store]) -> None:
    guard, store = guard_and_store
    assert audit.query(store.conn) == []
    guard.check("alice", Perm.BB_WRITE, "shared/alice/x", "bb.put", size=3)
    records = audit.query(store.conn)
    assert len(records) == 1
    [record] = records
    assert record.decision == "allow"
    assert record.actor == "alice"
    assert record.action == "bb.put"
    assert record.target == "shared/alice/x"
    assert record.detail.get("size") == 3
    assert record.detail.get("reason")


def test_guard_deny_raises_403_and_writes_one_deny_record(
    guard_and_store: tuple[Guard, Store],
) -> None:
    guard, store = guard_and_store
    with pytest.raises(Forbidden) as info:
        guard.check("alice", Perm.BB_WRITE, "private/x", "bb.put")
    exc = info.value
    assert exc.status == 403
    assert exc.code == "permission_denied"
    body = exc.body()
    assert body.error.status == 403
    assert body.error.code == "permission_denied"
    assert "alice" in exc.message
    assert "blackboard_write" in exc.message  # the fix: which permission to grant
    records = audit.query(store.conn)
    assert len(records) == 1
    assert records[0].decision == "deny"
    assert records[0].actor == "alice"
    assert records[0].target == "private/x"


def test_guard_audits_every_decision_in_order(guard_and_store: tuple[Guard, Store]) -> None:
    guard, store = guard_and_store
    checks = [
        ("alice", Perm.BB_READ, "shared/a", "allow"),
        ("alice", Perm.BB_READ, "private/a", "deny"),
        ("nobody", Perm.PUBLISH, "news/x", "deny"),
        ("ghost", Perm.MESSAGE, "alice", "deny"),
        (OPERATOR, Perm.BB_WRITE, "private/a", "allow"),
        ("alice", Perm.SPAWN, "worker", "allow"),
        ("bob", Perm.CRON, "", "deny"),
        ("bob", Perm.BB_WRITE, "teams/blue/x", "allow"),
    ]
    for actor, perm, target, expected in checks:
        if expected == "deny":
            with pytest.raises(Forbidden):
                guard.check(actor, perm, target, f"test.{perm.value}")
        else:
            guard.check(actor, perm, target, f"test.{perm.value}")
    records = audit.query(store.conn)
    assert len(records) == len(checks)
    got = [(r.actor, r.target, r.decision, r.action) for r in records]
    want = [(a, t, d, f"test.{p.value}") for a, p, t, d in checks]
    assert got == want
    assert [r.seq for r in records] == list(range(1, len(checks) + 1))
    assert audit.verify(store.conn).ok


def test_guard_records_survive_reopen(tmp_path: Path) -> None:
    store = Store(tmp_path / "host.db")
    guard = Guard(Permissions(parse_config(CONFIG)), AuditLog(store.conn))
    with pytest.raises(Forbidden):
        guard.check("nobody", Perm.BB_READ, "x", "bb.get")
    store.close()
    reopened = Store(tmp_path / "host.db")
    try:
        records = audit.query(reopened.conn)
        assert [(r.actor, r.decision) for r in records] == [("nobody", "deny")]
    finally:
        reopened.close()


# --- end to end over a real agent socket ----------------------------------------------------


@pytest.mark.anyio
async def test_denied_blackboard_write_over_socket(running_host: HostFactory) -> None:
    async with running_host(CONFIG) as host, agent_client(host.paths, "alice") as alice:
        denied = await alice.put("/v1/blackboard/entries/private/plan", json={"value": 1})
        assert denied.status_code == 403
        assert denied.headers["content-type"].startswith("application/json")
        error = denied.json()["error"]
        assert error["code"] == "permission_denied"
        assert error["status"] == 403
        assert "alice" in error["message"]

        records = audit.query(host.store.conn, actor="alice")
        deny = [r for r in records if r.decision == "deny" and r.target == "private/plan"]
        assert len(deny) == 1, records
        assert deny[0].action == "bb.put"

        # nothing was written
        with pytest.raises(NotFound):
            host.blackboard.require("private/plan")

        # an allowed write succeeds and is audited as allow
        ok = await alice.put("/v1/blackboard/entries/shared/alice/plan", json={"value": 2})
        assert ok.status_code == 200, ok.text
        allow = [
            r
            for r in audit.query(host.store.conn, actor="alice")
            if r.decision == "allow" and r.target == "shared/alice/plan"
        ]
        assert len(allow) == 1


@pytest.mark.anyio
async def test_team_write_over_socket(running_host: HostFactory) -> None:
    async with running_host(CONFIG) as host, agent_client(host.paths, "bob") as bob:
        own = await bob.put("/v1/blackboard/entries/teams/blue/plan", json={"value": "go"})
        assert own.status_code == 200, own.text
        other = await bob.put("/v1/blackboard/entries/teams/red/plan", json={"value": "x"})
        assert other.status_code == 403
        assert other.json()["error"]["code"] == "permission_denied"
        read_other = await bob.get("/v1/blackboard/entries/teams/red/plan")
        assert read_other.status_code == 403
        decisions = [
            (r.target, r.decision)
            for r in audit.query(host.store.conn, actor="bob")
            if r.target.startswith("teams/")
        ]
        assert decisions == [
            ("teams/blue/plan", "allow"),
            ("teams/red/plan", "deny"),
            ("teams/red/plan", "deny"),
        ]
