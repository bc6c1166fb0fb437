"""issue 8: a name that is not an agent is an error, and never an `allow` in the audit log.

Every CLI command and control route that takes an agent name is run with `ghost` against a
real daemon. Each exits non-zero naming the problem; afterwards the audit log holds no
`allow` record for `ghost` (actions on it are denied, or not recorded at all). An agent's
own socket gets the same: a message to a name its pattern allows but that is no agent is a
404, audited as deny. `legion audit --agent` accepts a removed agent (the log keeps its
records) with a note, and refuses a name found nowhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from legion.store import Store
from tests.conftest import Daemon

pytestmark = pytest.mark.slow

CONFIG = """
[runtime]
backend = "none"

[llm.models.m]
model = "openai/fake"
api_base = "http://127.0.0.1:9/v1"
input_cost_per_mtok = 1.0
output_cost_per_mtok = 1.0

[agents.alice]
model = "m"
[agents.alice.permissions]
can_message = ["*"]
can_steer = ["*"]

[agents.bob]
model = "m"
"""


def legion(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "legion", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
        env={**os.environ, "COLUMNS": "200"},
    )


@pytest.fixture
def running(home: Path, daemon) -> Iterator[Path]:  # type: ignore[no-untyped-def]
    (home / "legion.toml").write_text(CONFIG)
    d: Daemon = daemon()
    d.start()
    try:
        yield home
    finally:
        d.stop()


def audit(home: Path) -> list[dict[str, object]]:
    run = legion(home, "audit", "--json", "--limit", "100000")
    assert run.returncode == 0, run.stderr
    return list(json.loads(run.stdout))


COMMANDS = [
    ("costs", "--agent", "ghost"),
    ("audit", "--agent", "ghost"),
    ("agents", "start", "ghost"),
    ("agents", "stop", "ghost"),
    ("agents", "restart", "ghost"),
    ("logs", "ghost"),
    ("chat", "ghost", "hello", "--timeout", "5"),
    ("chat", "ghost", "--steer", "turn left", "--timeout", "5"),
    ("cron", "ls", "--agent", "ghost"),
    ("cron", "add", "ghost", "nightly", "--schedule", "@daily", "--message", "hi"),
    ("events", "--agent", "ghost"),
    ("webhooks", "add", "hook", "--agent", "ghost"),
    ("agents", "rm", "ghost"),
    ("agents", "purge", "ghost"),
    ("agents", "show", "ghost"),
]


def test_every_command_refuses_an_unknown_agent(running: Path) -> None:
    home = running
    for args in COMMANDS:
        run = legion(home, *args)
        assert run.returncode == 1, (args, run.returncode, run.stdout, run.stderr)
        assert "ghost" in run.stderr and "Traceback" not in run.stderr, (args, run.stderr)
        assert "no agent named 'ghost'" in run.stderr or "no state" in run.stderr, (
            args,
            run.stderr,
        )
    records = [r for r in audit(home) if r["target"] == "ghost" or r["actor"] == "ghost"]
    assert records, "the refused actions on ghost are audited as denied"
    assert all(r["decision"] == "deny" for r in records), records
    denied = {r["action"] for r in records}
    assert {"agent.start", "agent.stop", "agent.restart", "message", "steer"} <= denied, denied
    assert all(r["detail"].get("reason") == "unknown_agent" for r in records)  # type: ignore[union-attr]


def test_an_agent_messaging_a_name_its_pattern_allows_but_that_is_no_agent(running: Path) -> None:
    from legion.paths import Paths

    paths = Paths.resolve(running)
    with httpx.Client(
        transport=httpx.HTTPTransport(uds=str(paths.agent_socket("alice"))),
        base_url="http://legion",
        timeout=20,
    ) as alice:
        to_ghost = alice.post("/v1/messages", json={"to": "ghost", "payload": "hi"})
        assert to_ghost.status_code == 404, to_ghost.text
        assert to_ghost.json()["error"]["code"] == "unknown_agent"
        # the agent is not told which agents exist beyond what it may message anyway
        assert "configured" not in to_ghost.json()["error"]["message"]
        to_bob = alice.post("/v1/messages", json={"to": "bob", "payload": "hi"})
        assert to_bob.status_code == 200, to_bob.text
        steer = alice.post("/v1/steer", json={"to": "ghost", "text": "x"})
        assert steer.status_code == 404, steer.text
    ghost = [r for r in audit(running) if r["target"] == "ghost"]
    assert {(r["actor"], r["action"], r["decision"]) for r in ghost} == {
        ("alice", "message", "deny"),
        ("alice", "steer", "deny"),
    }


def test_audit_of_a_removed_agent_with_records(running: Path) -> None:
    from legion.paths import Paths

    home = running
    paths = Paths.resolve(home)
    with httpx.Client(
        transport=httpx.HTTPTransport(uds=str(paths.agent_socket("alice"))),
        base_url="http://legion",
        timeout=20,
    ) as alice:
        assert alice.post("/v1/messages", json={"to": "bob", "payload": "x"}).status_code == 200
    assert legion(home, "agents", "rm", "alice").returncode == 0
    run = legion(home, "audit", "--agent", "alice", "--json")
    assert run.returncode == 0, run.stderr
    assert any(r["action"] == "message" for r in json.loads(run.stdout))
    # a window with none of its records: a note on stderr, exit 0
    later = legion(home, "audit", "--agent", "alice", "--since", "2999-01-01")
    assert later.returncode == 0, later.stderr
    assert "not a configured agent" in later.stderr
    for principal in ("operator", "host"):
        assert legion(home, "audit", "--agent", principal).returncode == 0


def test_costs_of_a_removed_agent_with_spend_and_of_nobody(home: Path) -> None:
    """Without a host: costs reads host.db; a name with no spend and no config is an error."""
    (home / "legion.toml").write_text(CONFIG)
    store = Store(home / "host.db")
    with store.tx() as conn:
        conn.execute(
            "INSERT INTO ledger (ts, agent, model, provider_model, request_id, kind,"
            " prompt_tokens, completion_tokens, cost_usd, reserved_usd, status)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (time.time(), "carol", "m", "openai/fake", "r1", "chat", 10, 10, 0.25, 0.3, "ok"),
        )
    store.close()
    carol = legion(home, "costs", "--agent", "carol", "--json")
    assert carol.returncode == 0, carol.stderr
    assert json.loads(carol.stdout)["agents"][0]["today_usd"] == 0.25
    ghost = legion(home, "costs", "--agent", "ghost")
    assert ghost.returncode == 1 and "no agent named 'ghost'" in ghost.stderr
    assert ghost.stdout == ""


ODD = ["../etc", "a/b", "élan", "\uff21\uff22\uff23", "a" * 300, "", "Alice", "a\nb", "\u202eevil"]


def test_odd_names_are_refused_by_every_command_without_a_trace(running: Path) -> None:
    """issue 8 (attack pass): names with path separators, unicode, a line break, a bidi
    control, 300 characters, or nothing at all, on every command that takes an agent name:
    exit 1 or 2 with a line on stderr, never a traceback, never an `allow` in the audit."""
    from concurrent.futures import ThreadPoolExecutor

    runs = [
        tuple(name if part == "ghost" else part for part in args)
        for args in COMMANDS
        for name in ODD
    ]
    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(lambda args: (args, legion(running, *args)), runs))
    for args, run in done:
        assert run.returncode in (1, 2), (args, run.returncode, run.stdout, run.stderr)
        assert run.stderr.strip() and "Traceback" not in run.stderr, (args, run.stderr)
    odd = set(ODD)
    records = [r for r in audit(running) if r["target"] in odd or r["actor"] in odd]
    assert all(r["decision"] == "deny" for r in records), records
