"""Issue 7, item 1 (invariant 9): the root host never follows what an agent plants in its
volume. The real supervisor (with the fake backend) is driven through start and restart
with links, FIFOs, files and foreign folders planted in `agents/NAME`; a host folder
standing for `/etc` must keep its owner and mode, the refusal is audited, the agent fails
with a clear reason, the host and the other agents keep working.

These tests run as root on this machine (as the host does in production), so a chown
through a link would really happen; each asserts on `os.lstat` of the target.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from legion.config import parse_config
from legion.fleet.backend import FakeBackend
from legion.host import Host
from legion.mesh import audit
from legion.paths import Paths
from tests.conftest import control_client
from tests.fleet.test_supervisor import until

pytestmark = pytest.mark.anyio

AGENT_UID = 10001

CONFIG = """
[runtime]
restart_max_per_hour = 5

[agents.alice]
[agents.bob]
"""


needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="the host chowns only as root; these tests need root to mean it"
)


class Mono:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def victim(home: Path) -> Path:
    """A root-owned host folder standing for /etc, outside the volume."""
    etc = home.parent / f"{home.name}-etc"
    etc.mkdir(mode=0o755)
    os.chmod(etc, 0o755)
    (etc / "passwd").write_text("root:x:0:0\n")
    os.chmod(etc / "passwd", 0o644)
    return etc


def snapshot(path: Path) -> list[tuple[str, int, int, int]]:
    """Owner, group and mode of `path` and everything in it, never following a link."""
    out = []
    for entry in [path, *sorted(path.rglob("*"))]:
        st = os.lstat(entry)
        out.append((str(entry), st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)))
    return out


@pytest.fixture
def etc(home: Path) -> Iterator[Path]:
    path = victim(home)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_agent(path: Path) -> None:
    """What the agent leaves: its own uid on what it made."""
    if os.geteuid() == 0:
        os.lchown(path, AGENT_UID, AGENT_UID)


def plant_link(target: Path) -> Callable[[Path], None]:
    def plant(workspace: Path) -> None:
        os.symlink(target, workspace)

    return plant


def plant_fifo(workspace: Path) -> None:
    os.mkfifo(workspace)


def plant_file(workspace: Path) -> None:
    workspace.write_text("not a folder")


def plant_foreign_dir(workspace: Path) -> None:
    workspace.mkdir()
    os.chown(workspace, 12345, 12345)


def plants(etc: Path) -> dict[str, Callable[[Path], None]]:
    return {
        "link-to-host-dir": plant_link(etc),
        "link-to-host-file": plant_link(etc / "passwd"),
        "dangling-link": plant_link(etc / "nothing-here"),
        "fifo": plant_fifo,
        "file": plant_file,
        "foreign-dir": plant_foreign_dir,
    }


PLANTS = [
    "link-to-host-dir",
    "link-to-host-file",
    "dangling-link",
    "fifo",
    "file",
    "foreign-dir",
]
EXPECTED_FOUND = {
    "link-to-host-dir": "a symbolic link",
    "link-to-host-file": "a symbolic link",
    "dangling-link": "a symbolic link",
    "fifo": "a FIFO",
    "file": "a regular file",
    "foreign-dir": "owned by uid 12345",
}


def refusals(host: Host, agent: str) -> list[audit.AuditRecord]:
    return [
        r
        for r in audit.query(host.store.conn, actor="host")
        if r.action == "agent.volume_refused" and r.target == agent
    ]


@needs_root
@pytest.mark.parametrize("plant", PLANTS)
async def test_issue_7_a_planted_workspace_fails_that_agent_at_host_start_and_nothing_else(
    home: Path, etc: Path, plant: str
) -> None:
    """issue 7: whatever the agent left at `workspace`, the host starts, refuses that
    volume (audited, clear reason), starts the other agents, and never touches the
    host folder the entry points to."""
    paths = Paths.resolve(home)
    workspace = paths.agent_data("alice") / "workspace"
    workspace.parent.mkdir(parents=True)
    os.chown(workspace.parent, AGENT_UID, AGENT_UID)
    plants(etc)[plant](workspace)
    if plant != "foreign-dir":
        as_agent(workspace)
    before = snapshot(etc)
    backend = FakeBackend()
    async with (
        Host.running(parse_config(CONFIG), paths, runtime=backend) as host,
        control_client(paths) as operator,
    ):
        assert snapshot(etc) == before
        run = host.fleet.runs["alice"]
        assert run.state == "failed"
        assert str(workspace) in run.reason and EXPECTED_FOUND[plant] in run.reason
        assert "legion agents start alice" in run.reason  # says how to fix
        assert "alice" not in backend.starts  # never launched on a refused volume
        assert host.fleet.runs["bob"].state == "running" and backend.starts["bob"] == 1
        records = refusals(host, "alice")
        assert len(records) == 1 and records[0].decision == "deny"
        assert records[0].detail["path"] == str(workspace)
        # the host keeps answering, and reports the reason to the operator
        listing = (await operator.get("/v1/agents")).json()["agents"]
        alice = next(a for a in listing if a["name"] == "alice")
        assert alice["state"] == "failed" and EXPECTED_FOUND[plant] in alice["reason"]
        # what was planted is still there, untouched (evidence for the operator)
        assert os.lstat(workspace)
    assert snapshot(etc) == before


@needs_root
async def test_issue_7_a_link_planted_before_a_crash_is_refused_on_the_automatic_restart(
    home: Path, etc: Path
) -> None:
    """issue 7: the attack as reported: the agent replaces its workspace with a link to a
    host folder and exits; the automatic restart must not chown the link's target. Then
    the operator moves the link away and starts the agent again."""
    paths = Paths.resolve(home)
    backend = FakeBackend()
    before = snapshot(etc)
    async with Host.running(parse_config(CONFIG), paths, runtime=backend) as host:
        mono = Mono()
        host.fleet.monotonic = mono
        workspace = paths.agent_data("alice") / "workspace"
        assert os.lstat(workspace).st_uid == AGENT_UID
        # the agent, inside its container: rm -rf /data/workspace; ln -s /etc /data/workspace
        shutil.rmtree(workspace)
        os.symlink(etc, workspace)
        as_agent(workspace)
        async with host.bus.subscribe() as sub:
            backend.crash("alice")  # the status feed tells the fleet, which checks at once
            await until(lambda: host.fleet.runs["alice"].state == "restarting")
            mono.now += 1
            await host.fleet.check("alice")  # the backoff is over: the restart runs
            events = []
            while not sub.queue.empty():
                events.append(sub.queue.get_nowait())
        assert snapshot(etc) == before  # the link's target kept its owner and mode
        run = host.fleet.runs["alice"]
        assert run.state == "failed" and "a symbolic link" in run.reason
        assert backend.starts["alice"] == 1  # the refused volume never got a container
        changes = [(e.state, e.reason) for e in events if e.type == "agent_state"]
        assert changes[-1][0] == "failed" and str(workspace) in changes[-1][1]
        assert len(refusals(host, "alice")) == 1
        # failed stays failed: the supervisor does not retry a refused volume by itself
        mono.now += 100
        await host.fleet.check("alice")
        assert backend.starts["alice"] == 1 and len(refusals(host, "alice")) == 1
        # bob was never disturbed
        assert host.fleet.runs["bob"].state == "running" and backend.starts["bob"] == 1
        # the operator moves the link away and starts alice again
        workspace.rename(workspace.with_name("workspace.suspect"))
        async with control_client(paths) as operator:
            started = (await operator.post("/v1/agents/alice/start")).json()
        assert started["state"] == "running" and backend.starts["alice"] == 2
        assert os.lstat(workspace).st_uid == AGENT_UID and workspace.is_dir()
        assert os.path.islink(workspace.with_name("workspace.suspect"))
    assert snapshot(etc) == before


@needs_root
async def test_issue_7_links_deeper_in_the_volume_are_never_followed(home: Path, etc: Path) -> None:
    """issue 7: the host prepares only `agents/NAME` and `workspace`; a link deeper down
    (workspace/notes -> /etc) is the agent's own business: it starts, and the target is
    untouched across a restart."""
    paths = Paths.resolve(home)
    backend = FakeBackend()
    before = snapshot(etc)
    async with Host.running(parse_config(CONFIG), paths, runtime=backend) as host:
        mono = Mono()
        host.fleet.monotonic = mono
        workspace = paths.agent_data("alice") / "workspace"
        os.symlink(etc, workspace / "notes")
        os.symlink(etc / "passwd", paths.agent_data("alice") / "memory.db")
        backend.crash("alice")
        await until(lambda: host.fleet.runs["alice"].state == "restarting")
        mono.now += 1
        await host.fleet.check("alice")
        assert host.fleet.runs["alice"].state == "running" and backend.starts["alice"] == 2
        assert refusals(host, "alice") == []
    assert snapshot(etc) == before


@needs_root
async def test_issue_7_the_volume_mode_is_restored_and_nothing_else_is_touched(
    home: Path,
) -> None:
    """issue 7: the agent can open its volume to everyone (chmod 777 /data); the restart
    closes it again (0700, through the open descriptor)."""
    paths = Paths.resolve(home)
    backend = FakeBackend()
    async with Host.running(parse_config(CONFIG), paths, runtime=backend) as host:
        mono = Mono()
        host.fleet.monotonic = mono
        data = paths.agent_data("alice")
        assert stat.S_IMODE(os.lstat(data).st_mode) == 0o700
        os.chmod(data, 0o777)
        backend.crash("alice")
        await until(lambda: host.fleet.runs["alice"].state == "restarting")
        mono.now += 1
        await host.fleet.check("alice")
        assert host.fleet.runs["alice"].state == "running"
        st = os.lstat(data)
        assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == AGENT_UID


@needs_root
@pytest.mark.parametrize("where", ["volume", "agents"])
async def test_issue_7_a_link_in_place_of_the_host_owned_folders_is_refused(
    home: Path, etc: Path, where: str
) -> None:
    """issue 7: `agents/` and `agents/NAME` are the host's (the agent cannot replace its
    own mount point), but if something did, the host refuses rather than create and chown
    through the link."""
    paths = Paths.resolve(home)
    paths.home.mkdir(parents=True, exist_ok=True)
    if where == "volume":
        (paths.home / "agents").mkdir()
        os.symlink(etc, paths.agent_data("alice"))
    else:
        os.symlink(etc, paths.home / "agents")
    before = snapshot(etc)
    backend = FakeBackend()
    async with Host.running(parse_config(CONFIG), paths, runtime=backend) as host:
        assert host.fleet.runs["alice"].state == "failed"
        assert "a symbolic link" in host.fleet.runs["alice"].reason
        assert refusals(host, "alice")
        assert "alice" not in backend.starts
    assert snapshot(etc) == before
    assert not (etc / "workspace").exists() and not (etc / "alice").exists()


async def test_issue_7_junk_in_place_of_agents_fails_every_agent_but_the_host_serves(
    home: Path,
) -> None:
    """issue 7 / invariant 9: even when no volume can be prepared (`agents` is a FIFO),
    the host starts and serves; each agent is `failed` with the reason."""
    paths = Paths.resolve(home)
    paths.home.mkdir(parents=True, exist_ok=True)
    os.mkfifo(paths.home / "agents")
    backend = FakeBackend()
    async with Host.running(parse_config(CONFIG), paths, runtime=backend) as host:
        runs = host.fleet.runs
        assert {runs[a].state for a in ("alice", "bob")} == {"failed"}
        assert "a FIFO" in runs["alice"].reason and backend.starts == {}
        async with control_client(paths) as operator:
            assert (await operator.get("/v1/status")).status_code == 200


@needs_root
async def test_issue_7_a_silent_agent_whose_volume_is_refused_is_stopped_not_left_running(
    home: Path, etc: Path
) -> None:
    """issue 7: a restart for silence happens while the old container still runs; when
    its volume is refused, `failed` must mean no container, as after the hourly cap."""
    paths = Paths.resolve(home)
    backend = FakeBackend()
    config = parse_config(CONFIG)
    async with Host.running(config, paths, runtime=backend) as host:
        mono = Mono()
        host.fleet.monotonic = mono
        host.fleet.runs["alice"].started_at = mono.now
        workspace = paths.agent_data("alice") / "workspace"
        shutil.rmtree(workspace)
        os.symlink(etc, workspace)
        # silent past heartbeat_timeout_s; the fake container still runs
        mono.now += host.config.runtime.heartbeat_timeout_s + 1
        await host.fleet.check("alice")
        assert host.fleet.runs["alice"].state == "restarting"
        assert backend.states["alice"].state == "running"
        mono.now += 1
        await host.fleet.check("alice")
        assert host.fleet.runs["alice"].state == "failed"
        assert "alice" not in backend.states  # stopped
        assert host.fleet.runs["bob"].state == "running"
