"""Issue 7, item 1: `legion agents rm --purge` deletes the agent's volume without following
anything in or around it, from the CLI (host stopped) and through the host (running,
audited)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from legion.config import parse_config
from legion.errors import LegionError
from legion.fleet import volume
from legion.fleet.backend import FakeBackend
from legion.fsutil import UnsafeEntry
from legion.host import Host
from legion.mesh import audit
from legion.paths import Paths
from tests.conftest import control_client

CONFIG = "[agents.scout]\n[agents.keeper]\n"


def legion(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LEGION_HOME"}
    return subprocess.run(
        [sys.executable, "-m", "legion", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.fixture
def etc(home: Path) -> Iterator[Path]:
    """A host folder standing for /etc, outside LEGION_HOME, with a file and a folder."""
    path = home.parent / f"{home.name}-etc"
    (path / "scout").mkdir(parents=True)
    (path / "passwd").write_text("root:x:0:0\n")
    (path / "scout" / "keep.txt").write_text("keep")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_issue_7_purge_deletes_the_volume_but_not_what_links_in_it_point_to(
    home: Path, etc: Path
) -> None:
    """issue 7: links the agent left inside its volume are deleted as links."""
    (home / "legion.toml").write_text(CONFIG)
    workspace = home / "agents" / "scout" / "workspace"
    workspace.mkdir(parents=True)
    os.symlink(etc, workspace / "etc")
    os.symlink(etc / "passwd", home / "agents" / "scout" / "memory.db")
    os.mkfifo(workspace / "fifo")
    before = tree(etc)
    run = legion(home, "agents", "rm", "scout", "--purge")
    assert run.returncode == 0, run.stderr
    assert not (home / "agents" / "scout").exists()
    assert tree(etc) == before and (etc / "passwd").read_text() == "root:x:0:0\n"


@pytest.mark.parametrize("where", ["volume", "agents"])
def test_issue_7_purge_refuses_a_link_in_place_of_the_volume_or_its_parent(
    home: Path, etc: Path, where: str
) -> None:
    """issue 7: `agents/scout` or `agents/` being a link: the CLI refuses with a clear
    message (no traceback) and deletes nothing through it. (`shutil.rmtree` on the path
    would follow a linked `agents/` and delete `/etc/scout`.)"""
    (home / "legion.toml").write_text(CONFIG)
    if where == "volume":
        (home / "agents").mkdir()
        os.symlink(etc, home / "agents" / "scout")
    else:
        os.symlink(etc, home / "agents")
    before = tree(etc)
    run = legion(home, "agents", "rm", "scout", "--purge")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "Traceback" not in run.stderr
    assert "a symbolic link" in run.stderr and "did not follow" in run.stderr
    assert tree(etc) == before


def test_remove_refuses_names_that_are_not_agent_names(home: Path) -> None:
    """A name reaches `agents/NAME` as a path component: `..` would be LEGION_HOME."""
    paths = Paths.resolve(home)
    (home / "agents").mkdir()
    (home / "keep").write_text("x")
    for bad in ("..", ".", "a/b", "", "Alice"):
        with pytest.raises(LegionError) as caught:
            volume.remove(paths, bad)
        assert caught.value.code == "invalid_agent_name"
    assert (home / "keep").exists()


def test_remove_of_a_volume_that_is_a_fifo_or_file_is_refused(home: Path) -> None:
    paths = Paths.resolve(home)
    (home / "agents").mkdir()
    os.mkfifo(home / "agents" / "scout")
    with pytest.raises(UnsafeEntry, match="a FIFO"):
        volume.remove(paths, "scout")
    assert (home / "agents" / "scout").exists()
    assert volume.remove(paths, "nobody") is False


@pytest.mark.anyio
async def test_issue_7_the_host_purges_the_volume_and_audits_a_refusal(
    home: Path, etc: Path
) -> None:
    """issue 7: with the host running, `DELETE /v1/agents/NAME/state` deletes the volume
    (no-follow) with the inbox; a linked volume is a typed 409, audited as a denial."""
    paths = Paths.resolve(home)
    backend = FakeBackend()
    async with (
        Host.running(parse_config(CONFIG), paths, runtime=backend) as host,
        control_client(paths) as operator,
    ):
        assert paths.agent_data("scout").is_dir() and paths.agent_data("keeper").is_dir()
        os.symlink(etc, paths.agent_data("scout") / "workspace" / "etc")
        await host.apply_config(parse_config(""))
        # keeper's volume is swapped for a link (by someone with host access)
        shutil.rmtree(paths.agent_data("keeper"))
        os.symlink(etc, paths.agent_data("keeper"))
        before = tree(etc)
        done = await operator.delete("/v1/agents/scout/state")
        assert done.status_code == 200, done.text
        assert done.json()["volume_removed"] is True
        assert not paths.agent_data("scout").exists()
        refused = await operator.delete("/v1/agents/keeper/state")
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == "unsafe_path"
        assert tree(etc) == before and os.path.islink(paths.agent_data("keeper"))
        records = [
            r
            for r in audit.query(host.store.conn, actor="host")
            if r.action == "agent.volume_refused"
        ]
        assert [(r.target, r.decision) for r in records] == [("keeper", "deny")]
        dots = await operator.delete("/v1/agents/%2E%2E/state")
        assert dots.status_code in (400, 404) and paths.home.is_dir()
        assert (await operator.get("/v1/status")).status_code == 200
