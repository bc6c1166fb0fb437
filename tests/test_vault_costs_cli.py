"""`legion vault` and `legion costs` from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from legion.config import parse_config
from legion.gateway.llm.budget import Budgets, Usage
from legion.store import Store

SECRET = "ghp-cli-test-5Tq8Wv2Xz9"


def legion(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "legion", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
    )


def test_vault_set_ls_rm_never_shows_values(home: Path) -> None:
    stored = legion(
        home,
        "vault",
        "set",
        "github",
        "--bind-host",
        "api.github.com",
        "--json",
        stdin=SECRET + "\n",
    )
    assert stored.returncode == 0, stored.stderr
    assert SECRET not in stored.stdout + stored.stderr
    system = legion(home, "vault", "set", "openai", "--tier", "system", stdin="sk-x-123456")
    assert system.returncode == 0, system.stderr
    listed = json.loads(legion(home, "vault", "ls", "--json").stdout)
    assert [(i["name"], i["tier"], i["bound_hosts"]) for i in listed] == [
        ("github", "agent", ["api.github.com"]),
        ("openai", "system", []),
    ]
    assert SECRET not in json.dumps(listed)
    unbound = legion(home, "vault", "set", "loose", stdin="value-123")
    assert unbound.returncode == 2 and "--bind-host" in unbound.stderr
    empty = legion(home, "vault", "set", "empty", "--tier", "system", stdin="")
    assert empty.returncode == 2 and "empty" in empty.stderr
    assert legion(home, "vault", "rm", "github").returncode == 0
    assert legion(home, "vault", "rm", "github").returncode == 1
    for path in home.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_costs_reports_spend_against_caps(home: Path) -> None:
    text = """
[llm]
fleet_daily_usd = 10.0
[agents.alice.budget]
daily_usd = 1.0
monthly_usd = 5.0
[agents.bob]
"""
    (home / "legion.toml").write_text(text)
    store = Store(home / "host.db")
    budgets = Budgets(store, parse_config(text))
    for cost in (0.25, 0.125):
        r = budgets.reserve("alice", "fast", "openai/fast", "req", 0.5)
        budgets.settle(r, Usage(100, 50, cost), status="ok")
    open_one = budgets.reserve("alice", "fast", "openai/fast", "req", 0.0625)
    assert open_one.amount == 0.0625
    store.close()
    run = legion(home, "costs", "--json")
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    alice = next(a for a in data["agents"] if a["agent"] == "alice")
    assert alice["today_usd"] == 0.375 and alice["month_usd"] == 0.375
    assert alice["daily_cap_usd"] == 1.0 and alice["monthly_cap_usd"] == 5.0
    assert alice["reserved_usd"] == 0.0625
    assert alice["models"][0]["model"] == "fast" and alice["models"][0]["calls_today"] == 2
    assert data["fleet_today_usd"] == 0.375 and data["fleet_daily_cap_usd"] == 10.0
    only_bob = json.loads(legion(home, "costs", "--agent", "bob", "--json").stdout)
    assert [a["agent"] for a in only_bob["agents"]] == ["bob"]
    human = legion(home, "costs", "--since", "1h")
    assert human.returncode == 0 and "alice" in human.stdout and "$1.00" in human.stdout
