"""Whatever an agent leaves at its socket path never crashes the host and is never followed.

issue 7 item 5 (and item 1 for the socket folder): a directory, a file, a symlink, a FIFO
at `run/agents/NAME/mesh.sock`, or the folder itself replaced by a link: the host moves
it aside (into run/quarantine), logs and audits it, and serves. With a runtime backend
and the host running as root (as in production) the folder is handed to the agent's uid
through its descriptor; a planted link's target is never touched.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from legion.config import parse_config
from legion.fleet.backend import FakeBackend
from legion.host import Host
from legion.mesh import audit
from legion.paths import Paths
from tests.api.raw import exchange, request

pytestmark = pytest.mark.anyio

AGENTS = ("adir", "afile", "alink", "afifo", "afolder", "adangle", "fine")
CONFIG = "".join(f"[agents.{name}]\n" for name in AGENTS)
AGENT_UID = 10001


def plant(paths: Paths, outside: Path) -> dict[str, Path]:
    """Put junk where each agent's socket goes; returns the files a link points at."""
    targets = {}
    for name in AGENTS:
        paths.agent_socket_dir(name).mkdir(parents=True, exist_ok=True)
    sock = paths.agent_socket
    (sock("adir")).mkdir()
    (sock("adir") / "inner").write_text("junk")
    (sock("afile")).write_text("not a socket")
    victim = outside / "victim.txt"
    victim.write_text("the host must never touch this")
    os.chmod(victim, 0o640)
    targets["victim"] = victim
    sock("alink").symlink_to(victim)
    os.mkfifo(sock("afifo"))
    sock("adangle").symlink_to(outside / "nowhere")
    # The folder itself swapped for a link to a folder outside.
    elsewhere = outside / "elsewhere"
    elsewhere.mkdir()
    os.chmod(elsewhere, 0o755)
    targets["elsewhere"] = elsewhere
    folder = paths.agent_socket_dir("afolder")
    folder.rmdir()
    folder.symlink_to(elsewhere)
    return targets


async def test_the_host_starts_whatever_the_agent_folders_hold(home: Path, tmp_path: Path) -> None:
    """issue 7 item 5: every kind of junk is moved aside, audited, and the socket served."""
    paths = Paths.resolve(home)
    paths.run.mkdir(parents=True)
    targets = plant(paths, tmp_path)
    victim_before = os.stat(targets["victim"])
    backend = FakeBackend()
    async with Host.running(parse_config(CONFIG), paths, runtime=backend) as host:
        for name in AGENTS:
            answer = await exchange(paths.agent_socket(name), request("GET", "/v1/whoami"))
            assert answer.status == 200 and f'"agent":"{name}"'.encode() in answer.body, name
            sock_stat = os.lstat(paths.agent_socket(name))
            assert stat.S_ISSOCK(sock_stat.st_mode)
            folder = os.lstat(paths.agent_socket_dir(name))
            assert stat.S_ISDIR(folder.st_mode), name
            if os.geteuid() == 0:
                # Production: the folder is the agent's (set through its descriptor), the
                # socket is born with its mode and never chowned by path.
                assert (folder.st_uid, stat.S_IMODE(folder.st_mode)) == (AGENT_UID, 0o700)
                assert stat.S_IMODE(sock_stat.st_mode) == 0o666
        moved = [
            r
            for r in audit.query(host.store.conn, actor="host")
            if r.action == "socket.moved_aside"
        ]
        kinds = {r.target: r.detail["kind"] for r in moved}
        assert kinds == {
            "adir": "directory",
            "afile": "file",
            "alink": "symlink",
            "afifo": "fifo",
            "afolder": "symlink",
            "adangle": "symlink",
        }
        assert all(r.decision == "deny" for r in moved)
        for record in moved:
            assert Path(record.detail["moved_to"]).parent == paths.run / "quarantine"
            assert os.path.lexists(record.detail["moved_to"])
    # Nothing was followed: the link's target and the folder outside are as they were.
    victim_after = os.stat(targets["victim"])
    assert targets["victim"].read_text() == "the host must never touch this"
    assert (victim_after.st_uid, victim_after.st_mode) == (
        victim_before.st_uid,
        victim_before.st_mode,
    )
    assert list(targets["elsewhere"].iterdir()) == []
    assert stat.S_IMODE(os.stat(targets["elsewhere"]).st_mode) == 0o755
    assert os.stat(targets["elsewhere"]).st_uid == os.geteuid()
    assert not (tmp_path / "nowhere").exists()


async def test_junk_instead_of_the_agents_folder_and_the_control_socket(home: Path) -> None:
    paths = Paths.resolve(home)
    paths.run.mkdir(parents=True)
    (paths.run / "agents").write_text("a file where the agents' folder goes")
    paths.control_socket.mkdir()
    async with Host.running(parse_config("[agents.alice]\n"), paths) as host:
        assert (await exchange(paths.control_socket, request("GET", "/v1/status"))).status == 200
        answer = await exchange(paths.agent_socket("alice"), request("GET", "/v1/whoami"))
        assert answer.status == 200
        actions = {
            (r.target, r.detail["kind"])
            for r in audit.query(host.store.conn, actor="host")
            if r.action == "socket.moved_aside"
        }
        assert actions == {("alice", "file"), ("operator", "directory")}


async def test_a_socket_the_agent_replaced_is_bound_again_on_restart(
    home: Path, tmp_path: Path
) -> None:
    """The agent removes its socket and plants a link before it exits: the restart binds a
    fresh socket (the link moved aside, its target untouched), and the host closes cleanly
    without removing what is not its own."""
    paths = Paths.resolve(home)
    victim = tmp_path / "victim"
    victim.write_text("keep")
    backend = FakeBackend()
    async with Host.running(parse_config("[agents.alice]\n"), paths, runtime=backend) as host:
        sock = paths.agent_socket("alice")
        os.unlink(sock)
        sock.symlink_to(victim)
        await host.fleet.restart("alice")
        assert stat.S_ISSOCK(os.lstat(sock).st_mode)
        answer = await exchange(sock, request("GET", "/v1/whoami"))
        assert answer.status == 200
        # Now the agent leaves a directory there while the host runs; shutdown must cope.
        os.unlink(sock)
        sock.mkdir()
    assert sock.is_dir() and victim.read_text() == "keep"
