"""A running host whose run/control.sock or run/host.lock was deleted: the host serves them
again, and the CLI finds it by its lock; a stale pid file never makes `legion stop` signal
anything but the host."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from legion.hostlock import lock_holder
from tests.conftest import Daemon
from tests.test_daemon import (
    legion,
    signal_and_wait,
    start_ready,
    uds_client,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated process of this user, which nothing may signal."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait(10)


def test_deleted_control_socket_is_served_again(home: Path, daemon: Callable[[], Daemon]) -> None:
    """issue 8: deleting run/control.sock no longer cuts the operator off: the host notices
    (a cheap periodic check of the socket's inode) and serves it again, 0600."""
    write_config(home)
    d = daemon()
    err = start_ready(d, "--control-socket-check", "0.2")
    assert d.proc is not None
    with uds_client(d.paths.control_socket) as old:  # a connection open on the old socket
        assert old.get("/v1/status").status_code == 200
        d.paths.control_socket.unlink()
        wait_until(d.paths.control_socket.is_socket, 10, "the control socket to come back")
        assert old.get("/v1/status").status_code == 200  # keeps working
    assert d.paths.control_socket.stat().st_mode & 0o777 == 0o600
    st = legion(home, "status", "--json")
    assert st.returncode == 0, st.stderr
    assert json.loads(st.stdout)["pid"] == d.proc.pid
    err.wait_for_msg("the control socket was deleted or replaced; serving it again")

    # Replaced by something else (a plain file): served again as well.
    d.paths.control_socket.unlink()
    d.paths.control_socket.write_text("not a socket")
    wait_until(d.paths.control_socket.is_socket, 10, "the control socket to replace the file")
    assert legion(home, "status").returncode == 0

    rc, _ = signal_and_wait(d, signal.SIGTERM)
    log = err.drain()
    d.stop()
    assert rc == 0, log
    assert "Traceback" not in log
    assert not d.paths.control_socket.exists()


def test_sighup_serves_a_deleted_control_socket_again(
    home: Path, daemon: Callable[[], Daemon]
) -> None:
    """issue 8: with the periodic check off, SIGHUP restores the socket at once."""
    write_config(home)
    d = daemon()
    err = start_ready(d, "--control-socket-check", "0")
    assert d.proc is not None
    d.paths.control_socket.unlink()
    d.proc.send_signal(signal.SIGHUP)
    wait_until(d.paths.control_socket.is_socket, 10, "SIGHUP to restore the control socket")
    assert legion(home, "status").returncode == 0
    rc, _ = signal_and_wait(d, signal.SIGTERM)
    err.drain()
    d.stop()
    assert rc == 0


def test_status_and_stop_find_a_host_whose_socket_is_gone(
    home: Path, daemon: Callable[[], Daemon], bystander: subprocess.Popen[bytes]
) -> None:
    """issue 8: `legion status` says the host is running (by its lock) though its socket is
    gone, and `legion stop` still stops it (SIGTERM to the verified lock holder, not to
    whatever run/host.pid says)."""
    write_config(home)
    d = daemon()
    err = start_ready(d, "--control-socket-check", "0")
    assert d.proc is not None
    pid = d.proc.pid
    d.paths.control_socket.unlink()
    d.paths.pid_file.write_text(str(bystander.pid))  # a lie: must not be believed

    st = legion(home, "status")
    assert st.returncode == 4, st.stdout + st.stderr
    assert f"pid {pid}" in st.stderr and "control socket" in st.stderr and "gone" in st.stderr
    assert "legion stop" in st.stderr and f"kill -HUP {pid}" in st.stderr
    other = legion(home, "bb", "ls")  # any command: the same finding
    assert other.returncode != 0 and f"pid {pid}" in other.stderr

    started = time.monotonic()
    stopped = legion(home, "stop", "--json")
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout) == {"stopped": True, "pid": pid, "via": "signal"}
    assert "SIGTERM" in stopped.stderr
    rc = d.proc.wait(10)
    assert time.monotonic() - started < 10
    log = err.drain()
    d.stop()
    assert rc == 0, log  # a clean stop (SIGTERM), not a kill
    stopping = next(r for r in err.records() if r.get("msg") == "host stopping")
    assert "SIGTERM" in stopping["reason"]
    assert bystander.poll() is None, "legion stop signalled the process run/host.pid named"
    assert legion(home, "status").returncode == 3


def test_a_stale_pid_file_never_signals_an_unrelated_process(
    home: Path, bystander: subprocess.Popen[bytes]
) -> None:
    """issue 8: with no host running, pid and lock files naming some other live process (a
    crash left them; the pid was reused) make `legion stop` say no host runs, and signal
    nothing."""
    run = home / "run"
    run.mkdir(mode=0o700)
    (run / "host.pid").write_text(str(bystander.pid))
    (run / "host.lock").write_text(str(bystander.pid))
    result = legion(home, "stop")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "no legion host is running" in result.stderr
    assert bystander.poll() is None
    status = legion(home, "status")
    assert status.returncode == 3


def test_a_lock_held_by_something_else_is_not_signalled(
    home: Path, bystander: subprocess.Popen[bytes]
) -> None:
    """issue 8: a process that holds run/host.lock but is not the host the lock file names
    (someone ran `flock` on it) is never signalled; stop says why and exits 4."""
    run = home / "run"
    run.mkdir(mode=0o700)
    lock = run / "host.lock"
    lock.write_text(str(bystander.pid))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time\n"
            f"f = open({str(lock)!r}, 'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n"
            "print('held', flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        found = lock_holder(Daemon(home).paths)
        assert found is not None and found.pid == holder.pid
        result = legion(home, "stop")
        assert result.returncode == 4, result.stdout + result.stderr
        assert f"pid {holder.pid} holds" in result.stderr and "not signalling" in result.stderr
        assert holder.poll() is None and bystander.poll() is None
    finally:
        holder.kill()
        holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()


def test_deleted_lock_file_is_taken_again(home: Path, daemon: Callable[[], Daemon]) -> None:
    """issue 8: deleting run/host.lock would let a second daemon start on the same home (and
    take the first one's sockets); the host takes the lock again, so a second one refuses."""
    write_config(home)
    d = daemon()
    err = start_ready(d, "--control-socket-check", "0.2")
    assert d.proc is not None
    d.paths.lock_file.unlink()

    pid = d.proc.pid

    def relocked() -> bool:
        found = lock_holder(d.paths)
        return found is not None and found.pid == pid and found.lock_file_pid == pid

    wait_until(relocked, 10, "the host to take run/host.lock again")
    second = legion(home, "daemon", timeout=15)
    assert second.returncode == 1, second.stderr
    assert "already running" in second.stderr and f"pid {d.proc.pid}" in second.stderr
    assert d.proc.poll() is None
    rc, _ = signal_and_wait(d, signal.SIGTERM)
    err.drain()
    d.stop()
    assert rc == 0


def _cli_as_nobody(home: Path, *args: str) -> tuple[int, str]:
    """Run the CLI in a forked child that has dropped to uid 65534 (a local user without
    rights to this home); returns (exit code, stderr)."""
    import contextlib
    import io
    import traceback

    import click

    # Imported while still root: the child cannot read this interpreter's files afterwards.
    import legion.api.client
    import legion.cli.config_cmd
    import legion.cli.host_cmd
    import legion.cli.logs_cmd
    import legion.hostlock
    from legion.cli.main import app

    del legion
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 70
        err = io.StringIO()
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            with contextlib.redirect_stderr(err):
                try:
                    returned = app(["--home", str(home), *args], standalone_mode=False)
                    code = returned if isinstance(returned, int) else 0
                except click.exceptions.Exit as exc:
                    code = exc.exit_code
                except SystemExit as exc:
                    code = int(exc.code or 0)
        except BaseException:  # a traceback is what this test looks for
            err.write("UNCAUGHT " + traceback.format_exc())
            code = 99
        finally:
            os.write(write_fd, err.getvalue().encode())
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        stderr = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another uid")
def test_a_user_without_rights_gets_a_clear_error(home: Path, daemon: Callable[[], Daemon]) -> None:
    """issue 8 (attack pass): another local user running the CLI against this home is told
    that it belongs to someone else, never shown a traceback, and changes nothing."""
    write_config(home)
    d = daemon()
    err = start_ready(d)
    assert d.proc is not None
    assert os.stat(home).st_mode & 0o077 == 0  # the host keeps its home to itself
    for args in (["status"], ["stop"], ["config", "reload"], ["logs", "alpha"]):
        code, stderr = _cli_as_nobody(home, *args)
        assert "UNCAUGHT" not in stderr and "Traceback" not in stderr, stderr
        assert code == 3, (args, code, stderr)
        assert "permission denied" in stderr and "another user" in stderr, stderr
    assert d.proc.poll() is None
    rc, _ = signal_and_wait(d, signal.SIGTERM)
    err.drain()
    d.stop()
    assert rc == 0
