"""`legion --host ssh://user@server` (issue 9): the CLI and the TUI against a daemon through a
real sshd on 127.0.0.1 (`tests/sshd.py`), each connection an `ssh ... legion dial-stdio`;
clear errors when ssh fails; commands that work on a home's files refuse `--host`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from legion.api.hostclient import open_remote
from legion.api.remote import Remote, RemoteError
from legion.paths import Paths
from tests.conftest import Daemon
from tests.fakes.provider import FakeProvider
from tests.fleetproc import agent_processes, fleet_config, prepare_home
from tests.sshd import Sshd

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    server = Sshd(tmp_path_factory.mktemp("sshd")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fleet(home: Path, daemon: Callable[[], Daemon]) -> Iterator[tuple[Paths, Daemon]]:
    """A daemon with alice (a runtime process on the fake provider)."""
    with FakeProvider(chunk_chars=3, chunk_delay_s=0.01) as fake:
        paths = prepare_home(home, fleet_config(fake.base_url, ("alice",)))
        d = daemon()
        d.start()
        with agent_processes(paths, ("alice",)):
            yield paths, d


def legion(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "legion", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def test_status_chat_and_pause_through_ssh(sshd: Sshd, fleet: tuple[Paths, Daemon]) -> None:
    """issue 9: `legion --host ssh://...` status and chat reach the remote daemon (its pid,
    alice's streamed reply); LEGION_HOST works as the flag does."""
    paths, daemon = fleet
    assert daemon.proc is not None
    url = sshd.url(paths.home)
    status = legion("--host", url, "status", "--json", env=sshd.env())
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["pid"] == daemon.proc.pid
    chat = legion("--host", url, "chat", "alice", "over ssh", env=sshd.env())
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.strip() == "echo: over ssh"
    paused = legion("pause", "alice", "--json", env=sshd.env(LEGION_HOST=url))
    assert paused.returncode == 0, paused.stderr
    assert json.loads(paused.stdout)["paused"] == ["alice"]
    resumed = legion("resume", "alice", env=sshd.env(LEGION_HOST=url))
    assert resumed.returncode == 0, resumed.stderr
    bb = legion("bb", "put", "notes/x", '"from the laptop"', env=sshd.env(LEGION_HOST=url))
    assert bb.returncode == 0, bb.stderr
    got = legion("bb", "get", "notes/x", "--json", env=sshd.env(LEGION_HOST=url))
    assert json.loads(got.stdout)["value"] == "from the laptop"


def test_ssh_failures_say_what_to_fix(sshd: Sshd, fleet: tuple[Paths, Daemon], home: Path) -> None:
    """issue 9: no ssh binary, a refused login, an unknown host key, no legion on the server,
    no daemon on that home: each one clear line (exit 3), never a traceback."""
    paths, _ = fleet
    url = sshd.url(paths.home)
    cases = [
        (url, {"LEGION_SSH_COMMAND": "/nonexistent/ssh"}, "no ssh client"),
        (sshd.url(paths.home, user="nobody"), {}, "refused the login"),
        (url, {"LEGION_REMOTE_LEGION": "/nonexistent/legion"}, "was not found on"),
        (sshd.url(home / "elsewhere"), {}, "no legion host is running for"),
    ]
    other = home / "other_known_hosts"
    other.write_text(f"[127.0.0.1]:{sshd.port} ssh-ed25519 {_some_other_key(home)}\n")
    strict = f"ssh -F {sshd.ssh_config} -o UserKnownHostsFile={other}"
    cases.append((url, {"LEGION_SSH_COMMAND": strict}, "has CHANGED since it was accepted"))
    unknown = f"ssh -F {sshd.ssh_config} -o UserKnownHostsFile=/dev/null"
    cases.append((url, {"LEGION_SSH_COMMAND": unknown}, "could not verify the host key"))
    for target, env, expected in cases:
        run = legion("--host", target, "status", env=sshd.env(**env), timeout=60)
        assert run.returncode == 3, (expected, run.stdout, run.stderr)
        assert expected in run.stderr, (expected, run.stderr)
        assert "Traceback" not in run.stderr
        assert len(run.stderr.strip().splitlines()) <= 5, run.stderr


def _some_other_key(folder: Path) -> str:
    key = folder / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    return key.with_suffix(".pub").read_text().split()[1]


def test_commands_on_local_files_refuse_host(sshd: Sshd, fleet: tuple[Paths, Daemon]) -> None:
    """issue 9: a command that reads or writes a home's files (costs from host.db, the vault,
    legion.toml edits) does not silently use this machine's under --host: it says where to
    run it. A bad --host value is a usage error."""
    paths, _ = fleet
    for args in (["costs"], ["vault", "ls"], ["agents", "add", "bob"], ["daemon"]):
        run = legion("--host", sshd.url(paths.home), *args, env=sshd.env())
        assert run.returncode == 2, (args, run.stderr)
        assert "run it on the server" in run.stderr, run.stderr
    bad = legion("--host", "http://server", "status", env=sshd.env())
    assert bad.returncode == 2 and "only ssh:// is supported" in bad.stderr


def test_url_forms() -> None:
    """issue 9: what --host takes, and the ssh command line it makes (quoted for the remote
    shell; a host or user that ssh would read as an option is refused)."""
    env = {"LEGION_REMOTE_LEGION": "/opt/legion/bin/legion"}
    remote = Remote.parse("ssh://ops@server:2222/srv/legion home", env)
    assert (remote.user, remote.host, remote.port, remote.home) == (
        "ops",
        "server",
        2222,
        "/srv/legion home",
    )
    argv = remote.argv()
    assert argv[:1] == ["ssh"] and "BatchMode=yes" in argv and argv[-3:-1] == ["--", "server"]
    assert argv[-1] == "/opt/legion/bin/legion --home '/srv/legion home' dial-stdio"
    assert Remote.parse("ssh://server", {}).argv()[-1] == "legion dial-stdio"
    for bad in ("ssh://-oProxyCommand=x", "ssh://-l@host", "ssh://u:pw@host", "ssh://", "tcp://h"):
        with pytest.raises(ValueError):
            Remote.parse(bad, {})


@pytest.mark.anyio
async def test_the_tui_attaches_through_ssh(sshd: Sshd, fleet: tuple[Paths, Daemon]) -> None:
    """issue 9: the TUI on `--host ssh://...`: the header names the server and the daemon's
    pid, a chat streams into alice's pane token by token, and quitting leaves the daemon up."""
    from textual.message import Message

    from tui.app import LegionApp
    from tui.messages import HostEvents
    from tui.widgets.agent_pane import AgentPane

    paths, daemon = fleet
    assert daemon.proc is not None
    remote = Remote.parse(sshd.url(paths.home), sshd.env())
    app = LegionApp(lambda: open_remote(remote), home=remote.url, refresh_s=0.5)
    seen: list[Message] = []

    def deltas() -> list[str]:
        return [
            e.text
            for m in seen
            if isinstance(m, HostEvents)
            for e in m.events
            if e.type == "token_delta"
        ]

    async with app.run_test(size=(120, 40), message_hook=seen.append) as pilot:
        async with asyncio.timeout(60):
            while not (app.loaded.is_set() and app.subscribed.is_set()):
                await pilot.pause(0.02)
            assert app.client is not None and app.client.remote is not None
            assert f"attached to {sshd.user}@127.0.0.1 (daemon pid {daemon.proc.pid})" in (
                app.client.label
            )
            await pilot.press("enter", *"streamed through ssh", "enter")
            pane = app.fleet.query_one("#pane-alice", AgentPane)
            while not any(
                i.kind == "reply" and i.done for i in app.state.agents["alice"].transcript
            ):
                await pilot.pause(0.02)
        assert len(deltas()) > 3  # token by token, not one block
        assert "".join(deltas()) == "echo: streamed through ssh"
        assert pane.is_mounted
        await app.shutdown_host()
    assert daemon.proc.poll() is None  # the daemon keeps running
    with pytest.raises(RemoteError):  # and a broken target fails the connect, not later
        async with open_remote(Remote.parse(sshd.url(paths.home, user="nobody"), sshd.env())):
            pass
    assert not [p for p in _children() if "dial-stdio" in p]


def _children() -> list[str]:
    """Command lines of this process's children (an ssh left behind would show here)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().split()
            if int(stat[3]) == os.getpid():
                out.append(Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " "))
        except (OSError, IndexError, ValueError):
            continue
    return out
