"""`legion daemon` as a real subprocess: signals, the host lock, systemd, logs, status, stop."""

from __future__ import annotations

import configparser
import json
import os
import re
import select
import shlex
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Daemon

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent

CONFIG = """
[agents.alpha]
role = "researcher"
[agents.alpha.permissions]
blackboard_read = ["shared/**"]
blackboard_write = ["shared/**"]

[agents.beta]
role = "writer"
"""


# --- helpers -------------------------------------------------------------------------


class Stderr:
    """A daemon's stderr, read without blocking (select + os.read on the raw pipe)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        self.fd = proc.stderr.fileno()
        self.data = b""
        self.eof = False

    def _pump(self, timeout: float) -> None:
        if self.eof:
            return
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if ready:
            chunk = os.read(self.fd, 65536)
            if chunk:
                self.data += chunk
            else:
                self.eof = True

    @property
    def text(self) -> str:
        return self.data.decode(errors="replace")

    def records(self) -> list[dict[str, Any]]:
        out = []
        for line in self.text.splitlines():
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                out.append(value)
        return out

    def wait_for_msg(self, msg: str, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for record in self.records():
                if record.get("msg") == msg:
                    return record
            if self.eof or time.monotonic() > deadline:
                raise AssertionError(f"no {msg!r} log line on stderr; got:\n{self.text}")
            self._pump(deadline - time.monotonic())

    def drain(self, timeout: float = 10.0) -> str:
        """Everything up to EOF (call after the process has exited)."""
        deadline = time.monotonic() + timeout
        while not self.eof and time.monotonic() < deadline:
            self._pump(deadline - time.monotonic())
        return self.text


NO_CONTAINERS = """
[runtime]
backend = "none"
"""


def write_config(home: Path, text: str = CONFIG) -> None:
    """Write legion.toml; agents get sockets but no containers (Docker may be running)."""
    (home / "legion.toml").write_text(text + NO_CONTAINERS)


def start_ready(d: Daemon, *extra: str, env: dict[str, str] | None = None) -> Stderr:
    """Start the daemon and wait for its `host ready` log line (signal handlers are set by then)."""
    proc = d.start(*extra, env=env)
    err = Stderr(proc)
    err.wait_for_msg("host ready")
    return err


def signal_and_wait(d: Daemon, sig: int, limit: float = 10.0) -> tuple[int, float]:
    """Send `sig` and wait for the exit; returns (exit code, seconds it took)."""
    assert d.proc is not None
    started = time.monotonic()
    d.proc.send_signal(sig)
    try:
        rc = d.proc.wait(limit + 5)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"daemon still running {limit + 5:.0f} s after {sig!r}") from None
    return rc, time.monotonic() - started


def uds_client(path: Path, timeout: float = 10.0) -> httpx.Client:
    return httpx.Client(
        transport=httpx.HTTPTransport(uds=str(path)), base_url="http://legion", timeout=timeout
    )


def legion(home: Path, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LEGION_HOME"}
    return subprocess.run(
        [sys.executable, "-m", "legion", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


# --- signals -----------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly_within_10s(
    home: Path, daemon: Callable[[], Daemon], sig: int
) -> None:
    write_config(home)
    d = daemon()
    err = start_ready(d)
    rc, took = signal_and_wait(d, sig)
    log = err.drain()
    d.stop()
    assert rc == 0, log
    assert took < 10.0, f"took {took:.2f} s to stop"
    assert "Traceback" not in log
    msgs = [r.get("msg") for r in err.records()]
    assert "host stopping" in msgs and "host stopped" in msgs
    stopping = next(r for r in err.records() if r.get("msg") == "host stopping")
    assert sig.name in str(stopping.get("reason"))
    assert not d.paths.control_socket.exists()
    assert not d.paths.agent_socket("alpha").exists()
    assert not d.paths.pid_file.exists()


def test_sigterm_while_an_agent_holds_a_long_poll(home: Path, daemon: Callable[[], Daemon]) -> None:
    write_config(home)
    d = daemon()
    err = start_ready(d)
    # A raw HTTP request on alpha's socket: a 30 s long-poll on an empty inbox.
    body = json.dumps({"wait_s": 30, "max_items": 1}).encode()
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.settimeout(15)
    raw.connect(str(d.paths.agent_socket("alpha")))
    raw.sendall(
        b"POST /v1/inbox/poll HTTP/1.1\r\nhost: legion\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(body), body)
    )
    try:
        # The host has the poll when it marks alpha as seen (poll touches the agent).
        with uds_client(d.paths.control_socket) as control:

            def polling() -> bool:
                agents = control.get("/v1/status").json()["agents"]
                return any(a["name"] == "alpha" and a["last_heartbeat"] for a in agents)

            wait_until(polling, 10, "the host to receive alpha's long-poll")
        rc, took = signal_and_wait(d, signal.SIGTERM)
        # The held connection is closed by the host, not left hanging.
        try:
            leftover = raw.recv(65536)
        except ConnectionResetError:
            leftover = b""
    finally:
        raw.close()
    log = err.drain()
    d.stop()
    assert rc == 0, log
    assert took < 10.0, f"took {took:.2f} s to stop with a long-poll open"
    # Closed by the host (EOF), or at most answered with an empty poll: never left hanging.
    assert not leftover or b'"items":[]' in leftover, leftover
    assert "Traceback" not in log


# --- one host per home -----------------------------------------------------------------


def test_second_daemon_on_same_home_refuses(home: Path, daemon: Callable[[], Daemon]) -> None:
    write_config(home)
    first = daemon()
    err = start_ready(first)
    assert first.proc is not None
    pid = first.proc.pid

    started = time.monotonic()
    second = legion(home, "daemon", timeout=15)
    took = time.monotonic() - started
    assert second.returncode == 1, second.stderr
    assert took < 5.0, f"second daemon took {took:.2f} s to refuse"
    assert "already running" in second.stderr
    assert f"pid {pid}" in second.stderr
    assert "Traceback" not in second.stderr

    # The first one keeps serving, on the same sockets.
    assert first.proc.poll() is None
    assert first.paths.control_socket.is_socket()
    with uds_client(first.paths.control_socket) as control:
        st = control.get("/v1/status")
        assert st.status_code == 200 and st.json()["pid"] == pid
    with uds_client(first.paths.agent_socket("alpha")) as alpha:
        put = alpha.put("/v1/blackboard/entries/shared/after-second", json={"value": 1})
        assert put.status_code == 200, put.text
        assert alpha.get("/v1/whoami").json()["agent"] == "alpha"
    assert first.paths.lock_file.read_text().strip() == str(pid)

    rc, _ = signal_and_wait(first, signal.SIGTERM)
    err.drain()
    first.stop()
    assert rc == 0


# --- systemd -----------------------------------------------------------------------------


def _notify_fields(sock: socket.socket) -> dict[str, str]:
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines() if "=" in line)


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_systemd_notify_ready_and_stopping(
    home: Path, daemon: Callable[[], Daemon], abstract: bool
) -> None:
    write_config(home)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.settimeout(10)
    if abstract:
        name = f"legion-test-{uuid.uuid4().hex[:12]}"
        sock.bind("\0" + name)
        notify = "@" + name
    else:
        notify = str(home / "notify.sock")
        sock.bind(notify)
    try:
        d = daemon()
        err = start_ready(d, "--systemd", env={"NOTIFY_SOCKET": notify})
        assert d.proc is not None
        ready = _notify_fields(sock)
        assert ready.get("READY") == "1", ready
        assert ready.get("MAINPID") == str(d.proc.pid), ready
        rc, took = signal_and_wait(d, signal.SIGTERM)
        stopping = _notify_fields(sock)
        assert stopping.get("STOPPING") == "1", stopping
        log = err.drain()
        d.stop()
    finally:
        sock.close()
    assert rc == 0, log
    assert took < 10.0


def test_print_unit_is_a_notify_unit_for_this_home(home: Path) -> None:
    result = legion(home, "daemon", "--print-unit")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    assert {"Unit", "Service", "Install"} <= set(parser.sections())
    service = parser["Service"]
    assert service["Type"] == "notify"
    exec_start = service["ExecStart"]
    assert "daemon --systemd" in exec_start
    assert str(home) in exec_start
    argv = shlex.split(exec_start)
    assert Path(argv[0]).is_file() and os.access(argv[0], os.X_OK), exec_start
    assert argv[argv.index("--home") + 1] == str(home)
    assert "WantedBy" in parser["Install"]
    # Printing the unit needs no host and starts none.
    assert not Path(home, "run", "control.sock").exists()


def test_print_unit_without_a_legion_script_has_a_runnable_exec_start(
    home: Path, tmp_path: Path
) -> None:
    """Run from a Python with no `legion` console script beside it (e.g. `python -m legion`
    from a source checkout): ExecStart must still start with an executable, not with the
    whole `python -m legion` quoted as one word."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    python = bindir / "python"
    python.symlink_to(sys.executable)
    purelib = sysconfig.get_paths()["purelib"]
    env = {k: v for k, v in os.environ.items() if k not in ("LEGION_HOME", "PYTHONHOME")}
    env["PYTHONPATH"] = os.pathsep.join([purelib, str(ROOT)])
    result = subprocess.run(
        [str(python), "-m", "legion", "--home", str(home), "daemon", "--print-unit"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(result.stdout)
    exec_start = parser["Service"]["ExecStart"]
    argv = shlex.split(exec_start)
    assert Path(argv[0]).is_file() and os.access(argv[0], os.X_OK), (
        f"ExecStart's program {argv[0]!r} is not an executable file: {exec_start}"
    )
    assert "daemon" in argv and "--systemd" in argv


# --- logs and config errors --------------------------------------------------------------


def test_stderr_log_lines_are_json(home: Path, daemon: Callable[[], Daemon]) -> None:
    write_config(home)
    d = daemon()
    err = start_ready(d)
    assert d.proc is not None
    ready = err.wait_for_msg("host ready")
    assert ready["pid"] == d.proc.pid
    assert ready["home"] == str(d.paths.home)
    assert ready["agents"] == ["alpha", "beta"]
    rc, _ = signal_and_wait(d, signal.SIGTERM)
    log = err.drain()
    d.stop()
    assert rc == 0
    lines = [line for line in log.splitlines() if line.strip()]
    assert len(lines) >= 3
    for line in lines:
        record = json.loads(line)
        assert isinstance(record, dict), line
        # issue 8: ISO 8601 in UTC with milliseconds.
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["ts"]), line
        at = datetime.fromisoformat(record["ts"].replace("Z", "+00:00"))
        assert abs(at.timestamp() - time.time()) < 120, line
        assert record["level"] in {"debug", "info", "warning", "error", "critical"}, line
        assert isinstance(record["msg"], str) and record["msg"], line


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[host]\nlog_level = "loud"\n', "host.log_level"),
        ("[agents.alpha.permissions]\ncan_mesage = []\n", "agents.alpha.permissions.can_mesage"),
        ("[host]\ninbox_max_items = 0\n", "host.inbox_max_items"),
        ("[agents.alpha\nrole = 1\n", "not valid TOML"),
    ],
    ids=["bad-value", "typo", "out-of-range", "syntax"],
)
def test_bad_config_exits_2_naming_file_and_key(home: Path, toml: str, key: str) -> None:
    write_config(home, toml)
    started = time.monotonic()
    result = legion(home, "daemon", timeout=20)
    assert result.returncode == 2, result.stderr
    assert time.monotonic() - started < 10
    assert str(home / "legion.toml") in result.stderr
    assert key in result.stderr
    assert "Traceback" not in result.stderr
    # Nothing was started: no sockets left behind, the lock is free for the next run.
    assert not (home / "run" / "control.sock").exists()
    assert not (home / "run" / "agents" / "alpha" / "mesh.sock").exists()


# --- status, stop, file modes -----------------------------------------------------------


def test_status_json_reports_the_running_host(home: Path, daemon: Callable[[], Daemon]) -> None:
    write_config(home)
    d = daemon()
    err = start_ready(d)
    assert d.proc is not None
    result = legion(home, "status", "--json")
    assert result.returncode == 0, result.stderr
    st = json.loads(result.stdout)
    assert st["pid"] == d.proc.pid
    assert isinstance(st["uptime_s"], int | float) and 0 <= st["uptime_s"] < 60
    assert st["home"] == str(d.paths.home)
    agents = {a["name"]: a for a in st["agents"]}
    assert set(agents) == {"alpha", "beta"}
    assert agents["alpha"]["role"] == "researcher"
    assert agents["alpha"]["socket"] == str(d.paths.agent_socket("alpha"))
    assert agents["beta"]["inbox_depth"] == 0

    human = legion(home, "status")
    assert human.returncode == 0, human.stderr
    assert f"pid {d.proc.pid}" in human.stdout
    assert "alpha" in human.stdout and "beta" in human.stdout

    rc, _ = signal_and_wait(d, signal.SIGTERM)
    err.drain()
    d.stop()
    assert rc == 0


def test_legion_stop_stops_the_daemon(home: Path, daemon: Callable[[], Daemon]) -> None:
    write_config(home)
    d = daemon()
    err = start_ready(d)
    assert d.proc is not None
    started = time.monotonic()
    result = legion(home, "stop", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "stopped": True,
        "pid": d.proc.pid,
        "via": "control_socket",
    }
    rc = d.proc.wait(10)
    assert time.monotonic() - started < 10
    log = err.drain()
    d.stop()
    assert rc == 0, log
    assert not d.paths.control_socket.exists()
    assert not d.paths.agent_socket("alpha").exists()
    assert not d.paths.agent_socket("beta").exists()
    stopping = next(r for r in err.records() if r.get("msg") == "host stopping")
    assert "control socket" in str(stopping.get("reason"))
    # Now nothing runs: the CLI says so.
    again = legion(home, "stop")
    assert again.returncode == 3
    assert "legion daemon" in again.stderr


def test_socket_and_run_dir_modes(home: Path, daemon: Callable[[], Daemon]) -> None:
    write_config(home)
    d = daemon()
    err = start_ready(d)
    run_mode = stat.S_IMODE(d.paths.run.stat().st_mode)
    control = d.paths.control_socket.stat()
    agent = d.paths.agent_socket("alpha").stat()
    rc, _ = signal_and_wait(d, signal.SIGTERM)
    err.drain()
    d.stop()
    assert rc == 0
    assert run_mode == 0o700, oct(run_mode)
    assert stat.S_ISSOCK(control.st_mode)
    assert stat.S_IMODE(control.st_mode) == 0o600, oct(control.st_mode)
    assert stat.S_ISSOCK(agent.st_mode)
    assert stat.S_IMODE(agent.st_mode) == 0o600, oct(agent.st_mode)
