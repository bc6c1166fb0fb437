"""issue 8: `legion agents rm --purge` (and `legion agents purge`) delete everything a
removed agent left in files: its volume, its socket folder `run/agents/NAME`, its
bootstrap files with their versions `identity/NAME`, its browser profile `browsers/NAME` and
the skills installed for it `skills/agents/NAME`, each without following a planted link;
a re-added agent starts fresh. Without a host the message says what stays (the inbox, in
host.db) and the command that deletes it, which works once the agent is gone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from legion.config import parse_config
from legion.fleet import volume
from legion.fleet.backend import FakeBackend
from legion.fleet.identity import AgentFiles
from legion.fsutil import UnsafeEntry
from legion.host import Host
from legion.paths import Paths
from tests.conftest import Daemon, control_client

CONFIG = '[runtime]\nbackend = "none"\n\n[agents.scout]\nrole = "r"\n\n[agents.keeper]\n'


def legion(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LEGION_HOME"}
    return subprocess.run(
        [sys.executable, "-m", "legion", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def leave_state(paths: Paths, agent: str) -> None:
    """What a run of the agent leaves: its volume, socket folder, identity files, browser
    profile and skills."""
    (paths.agent_data(agent) / "workspace").mkdir(parents=True, exist_ok=True)
    (paths.agent_data(agent) / "workspace" / "notes.md").write_text("old notes")
    paths.agent_socket_dir(agent).mkdir(parents=True, exist_ok=True)
    (paths.agent_socket_dir(agent) / "left-behind").write_text("x")
    files = AgentFiles.of(paths, agent)
    files.update("MEMORY.md", "old memory", "replace", agent)
    (paths.home / "browsers" / agent / "profile").mkdir(parents=True, exist_ok=True)
    (paths.home / "browsers" / agent / "profile" / "Cookies").write_text("session")
    (paths.home / "skills" / "agents" / agent / "notes").mkdir(parents=True, exist_ok=True)
    (paths.home / "skills" / "agents" / agent / "notes" / "SKILL.md").write_text("---\n")


def state_dirs(paths: Paths, agent: str) -> set[str]:
    return {str(paths.home.joinpath(*dirs, agent)) for dirs in volume.STATE_DIRS}


@pytest.fixture
def etc(home: Path) -> Iterator[Path]:
    path = home.parent / f"{home.name}-etc"
    path.mkdir()
    (path / "passwd").write_text("root:x:0:0\n")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_purge_without_a_host_deletes_every_folder_and_says_what_stays(home: Path) -> None:
    (home / "legion.toml").write_text(CONFIG)
    paths = Paths.resolve(home)
    leave_state(paths, "scout")
    run = legion(home, "agents", "rm", "scout", "--purge", "--json")
    assert run.returncode == 0, run.stderr
    purged = json.loads(run.stdout)["purged"]
    assert set(purged["removed"]) == state_dirs(paths, "scout")
    assert not any(Path(p).exists() for p in state_dirs(paths, "scout"))
    assert purged["kept"] == []  # no host.db: no inbox to keep
    # keeper's state is untouched
    leave_state(paths, "keeper")
    assert legion(home, "agents", "purge", "keeper").returncode == 1  # still configured
    assert paths.agent_data("keeper").exists()


def test_re_added_agent_starts_from_nothing(home: Path) -> None:
    (home / "legion.toml").write_text(CONFIG)
    paths = Paths.resolve(home)
    leave_state(paths, "scout")
    assert legion(home, "agents", "rm", "scout", "--purge").returncode == 0
    added = legion(home, "agents", "add", "scout")
    assert added.returncode == 0, added.stderr
    assert "existed before" not in added.stderr
    assert AgentFiles.of(paths, "scout").read("MEMORY.md") == ""


def test_rm_without_purge_names_the_command_that_deletes_the_rest(home: Path) -> None:
    (home / "legion.toml").write_text(CONFIG)
    paths = Paths.resolve(home)
    leave_state(paths, "scout")
    run = legion(home, "agents", "rm", "scout")
    assert run.returncode == 0, run.stderr
    assert "legion agents purge scout" in run.stdout
    again = legion(home, "agents", "rm", "scout")
    assert again.returncode == 1 and "legion agents purge scout" in again.stderr
    purge = legion(home, "agents", "purge", "scout")
    assert purge.returncode == 0, purge.stderr
    assert not paths.agent_identity("scout").exists()


@pytest.mark.slow
def test_without_a_host_the_inbox_stays_and_the_host_purges_it_later(home: Path, daemon) -> None:  # type: ignore[no-untyped-def]
    (home / "legion.toml").write_text(CONFIG)
    paths = Paths.resolve(home)
    d: Daemon = daemon()
    d.start()
    import httpx

    with httpx.Client(
        transport=httpx.HTTPTransport(uds=str(paths.control_socket)), base_url="http://l"
    ) as operator:
        for n in range(3):
            assert operator.post("/v1/messages", json={"to": "scout", "payload": n}).is_success
    d.stop()
    run = legion(home, "agents", "rm", "scout", "--purge")
    assert run.returncode == 0, run.stderr
    assert "3 inbox items" in run.stderr and "legion agents purge scout" in run.stderr
    d2: Daemon = daemon()
    d2.start()
    try:
        later = legion(home, "agents", "purge", "scout", "--json")
        assert later.returncode == 0, later.stderr
        assert json.loads(later.stdout)["inbox_items_deleted"] == 3
        nothing = legion(home, "agents", "purge", "scout")
        assert nothing.returncode == 1 and "no state" in nothing.stderr
    finally:
        d2.stop()


@pytest.mark.parametrize("where", [dirs for dirs in volume.STATE_DIRS if dirs != ("agents",)])
def test_a_planted_link_is_refused_and_not_followed(
    home: Path, etc: Path, where: tuple[str, ...]
) -> None:
    paths = Paths.resolve(home)
    target = paths.home.joinpath(*where, "scout")
    target.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(etc, target)
    with pytest.raises(UnsafeEntry, match="symbolic link"):
        volume.remove_state(paths, "scout")
    assert (etc / "passwd").read_text() == "root:x:0:0\n" and os.path.islink(target)
    # a link inside the folder is deleted as a link
    os.unlink(target)
    target.mkdir()
    os.symlink(etc, target / "etc")
    assert str(target) in volume.remove_state(paths, "scout")
    assert (etc / "passwd").exists()


@pytest.mark.anyio
async def test_the_host_purges_every_folder_and_audits_what_it_removed(home: Path) -> None:
    paths = Paths.resolve(home)
    async with (
        Host.running(parse_config(CONFIG), paths, runtime=FakeBackend()) as host,
        control_client(paths) as operator,
    ):
        leave_state(paths, "scout")
        await host.apply_config(parse_config('[agents.keeper]\n[runtime]\nbackend = "none"\n'))
        done = await operator.delete("/v1/agents/scout/state")
        assert done.status_code == 200, done.text
        body = done.json()
        assert body["volume_removed"] is True
        assert set(body["removed"]) == state_dirs(paths, "scout")
        assert not any(Path(p).exists() for p in state_dirs(paths, "scout"))
        nothing = await operator.delete("/v1/agents/scout/state")
        assert nothing.status_code == 404 and nothing.json()["error"]["code"] == "nothing_to_purge"
        rows = list(
            host.store.execute("SELECT decision, detail FROM audit WHERE action = 'agent.purge'")
        )
        assert len(rows) == 1 and rows[0][0] == "allow"
        assert set(json.loads(rows[0][1])["removed"]) == state_dirs(paths, "scout")
