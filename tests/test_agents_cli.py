"""`legion agents add/rm` edit legion.toml safely; `legion agents` needs a host for the rest."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from legion.config import parse_config
from legion.config_edit import remove_sections

BASE = """# my fleet
[teams.red]

[agents.alice]
role = "keeps this comment" # trailing
[agents.alice.permissions]
blackboard_read = ["**"]

[agents.alicia]
role = "similar name, must survive"

[agents.bob.budget]
daily_usd = 1.0
"""


def legion(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "legion", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_remove_sections_drops_only_that_agents_tables() -> None:
    out = remove_sections(BASE, "alice")
    config = parse_config(out)
    assert set(config.agents) == {"alicia", "bob"}
    assert "# my fleet" in out and "similar name, must survive" in out
    assert "keeps this comment" not in out


def test_add_then_rm_round_trip(home: Path) -> None:
    (home / "legion.toml").write_text(BASE)
    added = legion(
        home,
        "agents",
        "add",
        "scout",
        "--role",
        'says "hi"',
        "--team",
        "red",
        "--budget-daily",
        "2.5",
    )
    assert added.returncode == 0, added.stderr
    assert "host is not running" in added.stdout
    config = parse_config((home / "legion.toml").read_text())
    scout = config.agents["scout"]
    assert (scout.role, scout.team, scout.budget.daily_usd) == ('says "hi"', "red", 2.5)
    assert "# my fleet" in (home / "legion.toml").read_text()
    again = legion(home, "agents", "add", "scout")
    assert again.returncode == 1 and "already exists" in again.stderr
    removed = legion(home, "agents", "rm", "scout", "--json")
    assert removed.returncode == 0, removed.stderr
    assert "scout" not in parse_config((home / "legion.toml").read_text()).agents


def test_add_refuses_a_change_that_breaks_the_config(home: Path) -> None:
    (home / "legion.toml").write_text(BASE)
    before = (home / "legion.toml").read_text()
    bad = legion(home, "agents", "add", "scout", "--team", "nope")
    assert bad.returncode == 2 and "nothing was written" in bad.stderr
    assert "[teams.nope]" in bad.stderr and "Traceback" not in bad.stderr
    assert (home / "legion.toml").read_text() == before
    bad_name = legion(home, "agents", "add", "Scout")
    assert bad_name.returncode == 2
    assert (home / "legion.toml").read_text() == before


def test_recreating_an_agent_says_it_reuses_old_data(home: Path) -> None:
    (home / "legion.toml").write_text(BASE)
    (home / "agents" / "scout" / "workspace").mkdir(parents=True)
    (home / "agents" / "scout" / "workspace" / "notes.md").write_text("old")
    added = legion(home, "agents", "add", "scout")
    assert added.returncode == 0 and "existed before" in added.stderr
    removed = legion(home, "agents", "rm", "scout", "--purge")
    assert removed.returncode == 0, removed.stderr
    assert not (home / "agents" / "scout").exists()


def test_fleet_commands_need_a_host(home: Path) -> None:
    for args in (["agents", "ls"], ["agents", "start", "alice"], ["chat", "alice", "hi"]):
        run = legion(home, *args)
        assert run.returncode == 3, (args, run.stderr)
        assert "legion daemon" in run.stderr
