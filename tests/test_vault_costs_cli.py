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
    system = legion(home, "vault", "set", "openai", "--tier", "system", stdin="sk-x-9Fq2Lm7Tz4")
    assert system.returncode == 0, system.stderr
    listed = json.loads(legion(home, "vault", "ls", "--json").stdout)
    assert [(i["name"], i["tier"], i["bound_hosts"], i["allow_http"]) for i in listed] == [
        ("github", "agent", ["api.github.com"], False),
        ("openai", "system", [], False),
    ]
    assert SECRET not in json.dumps(listed)
    unbound = legion(home, "vault", "set", "loose", stdin="value-123")
    assert unbound.returncode == 2 and "--bind HOST" in unbound.stderr
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


def test_vault_set_refuses_values_too_weak_to_mask(home: Path) -> None:
    """issue 7: a stored value must be maskable: short or regular values are refused with
    the reason and the rule, and nothing is stored."""
    cases = {
        "abc": "3 characters",
        "hunter2": "7 characters",
        "password": "bits of estimated entropy",
        "12345678": "bits of estimated entropy",
        "aaaaaaaaaaaaaaaa": "bits of estimated entropy",
        "xk3xk3xk3xk3": "bits of estimated entropy",
    }
    for value, why in cases.items():
        run = legion(home, "vault", "set", "weak", "--tier", "system", stdin=value)
        assert run.returncode == 2, run.stderr
        assert "'weak' was not stored" in run.stderr and why in run.stderr
        assert "at least 8 characters with at least 40 bits" in run.stderr
        assert value not in run.stderr + run.stdout
    listed = json.loads(legion(home, "vault", "ls", "--json").stdout)
    assert listed == []
    # a CRLF from a Windows editor is not part of the value
    ok = legion(home, "vault", "set", "fine", "--tier", "system", stdin="Zq8-Lm2-Tw7-Xc4\r\n")
    assert ok.returncode == 0, ok.stderr


def test_vault_set_bind_and_allow_http(home: Path) -> None:
    """issue 7: `--bind HOST --allow-http` is stored and shown; --allow-http needs a binding."""
    run = legion(
        home,
        "vault",
        "set",
        "intranet",
        "--bind",
        "wiki.lan",
        "--allow-http",
        stdin="Zq8-Lm2-Tw7-Xc4",
    )
    assert run.returncode == 0, run.stderr
    assert "bound to wiki.lan, https or http" in run.stdout
    strict = legion(
        home, "vault", "set", "api", "--bind", "api.example.com", stdin="Pk3-Vn8-Rw2-Yh6"
    )
    assert "https only" in strict.stdout
    listed = {i["name"]: i for i in json.loads(legion(home, "vault", "ls", "--json").stdout)}
    assert listed["intranet"]["allow_http"] is True and listed["api"]["allow_http"] is False
    table = legion(home, "vault", "ls")
    assert "allowed" in table.stdout
    loose = legion(home, "vault", "set", "sys", "--tier", "system", "--allow-http", stdin="x")
    assert loose.returncode == 2 and "--allow-http applies to the --bind hosts" in loose.stderr
