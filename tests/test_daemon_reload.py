"""SIGHUP and `legion config reload` on a real daemon subprocess; surviving a hangup."""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Daemon
from tests.test_daemon import (
    CONFIG,
    Stderr,
    legion,
    signal_and_wait,
    start_ready,
    uds_client,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.slow

GAMMA = '\n[agents.gamma]\nrole = "reviewer"\n'


def wait_record(
    err: Stderr, predicate: Callable[[dict[str, Any]], bool], what: str, timeout: float = 20
) -> dict[str, Any]:
    """The first log record matching `predicate`, waiting for it to be written."""
    deadline = time.monotonic() + timeout
    while True:
        for record in err.records():
            if predicate(record):
                return record
        if err.eof or time.monotonic() > deadline:
            raise AssertionError(f"no log record for {what}; stderr:\n{err.text}")
        err._pump(min(0.2, max(0.0, deadline - time.monotonic())))


def agent_names(d: Daemon) -> list[str]:
    with uds_client(d.paths.control_socket) as control:
        return sorted(a["name"] for a in control.get("/v1/status").json()["agents"])


def wait_count(err: Stderr, msg: str, n: int, timeout: float = 20) -> None:
    """Wait until `msg` has been logged `n` times."""
    deadline = time.monotonic() + timeout
    while sum(1 for r in err.records() if r.get("msg") == msg) < n:
        if err.eof or time.monotonic() > deadline:
            raise AssertionError(f"{msg!r} not logged {n} times; stderr:\n{err.text}")
        err._pump(min(0.2, max(0.0, deadline - time.monotonic())))


def test_sighup_reloads_and_a_bad_edit_changes_nothing(
    home: Path, daemon: Callable[[], Daemon]
) -> None:
    """issue 8: SIGHUP reloads legion.toml (systemd's ExecReload=) instead of killing the
    daemon; an invalid edit is refused with the file, key and fix, and the host keeps
    serving with the config it had."""
    write_config(home)
    d = daemon()
    err = start_ready(d)
    assert d.proc is not None
    write_config(home, CONFIG + GAMMA)
    d.proc.send_signal(signal.SIGHUP)
    done = wait_record(err, lambda r: r.get("msg") == "config reloaded", "the reload")
    assert done["added"] == ["gamma"] and done["removed"] == []
    assert d.paths.agent_socket("gamma").is_socket()
    assert agent_names(d) == ["alpha", "beta", "gamma"]

    # A bad edit: a typo'd key and an out-of-range value.
    write_config(home, CONFIG + GAMMA + '[host]\nlog_level = "loud"\n')
    d.proc.send_signal(signal.SIGHUP)
    refused = wait_record(
        err, lambda r: str(r.get("msg", "")).startswith("config reload refused"), "the refusal"
    )
    assert refused["level"] == "error" and refused["file"] == str(home / "legion.toml")
    problems = [r for r in err.records() if "host.log_level" in str(r.get("msg"))]
    assert problems and problems[0]["level"] == "error", err.text
    assert "fix:" in problems[0]["msg"]
    assert d.proc.poll() is None
    assert agent_names(d) == ["alpha", "beta", "gamma"]

    # A removed file is refused too (it would otherwise read as "no agents").
    (home / "legion.toml").unlink()
    d.proc.send_signal(signal.SIGHUP)
    wait_count(err, refused["msg"], 2)
    assert any("no such file" in str(r.get("msg")) for r in err.records())
    assert agent_names(d) == ["alpha", "beta", "gamma"]

    # A burst of hangups: never an exit, at most one reload running at a time.
    write_config(home, CONFIG)
    for _ in range(5):
        d.proc.send_signal(signal.SIGHUP)
    wait_record(
        err,
        lambda r: r.get("msg") == "config reloaded" and r["removed"] == ["gamma"],
        "gamma's removal",
    )
    assert d.proc.poll() is None
    assert agent_names(d) == ["alpha", "beta"]
    assert not d.paths.agent_socket("gamma").exists()

    rc, _ = signal_and_wait(d, signal.SIGTERM)
    log = err.drain()
    d.stop()
    assert rc == 0, log
    assert "Traceback" not in log


def test_config_reload_prints_what_changed(home: Path, daemon: Callable[[], Daemon]) -> None:
    """issue 8: `legion config reload` applies legion.toml over the control socket and says
    what changed and what waits for a restart, as text and as JSON."""
    write_config(home)
    d = daemon()
    err = start_ready(d)
    edited = (
        CONFIG.replace('role = "writer"', 'role = "editor"')
        + GAMMA
        + "[host]\ninbox_max_items = 500\n"
    )
    write_config(home, edited)
    text = legion(home, "config", "reload")
    assert text.returncode == 0, text.stderr
    out = text.stdout
    assert f"reloaded {home / 'legion.toml'}" in out
    assert "added:" in out and "gamma" in out
    assert "agents.beta.role" in out
    assert "needs a host restart: host.inbox_max_items" in out
    assert agent_names(d) == ["alpha", "beta", "gamma"]

    again = legion(home, "config", "reload", "--json")
    assert again.returncode == 0, again.stderr
    body = json.loads(again.stdout)
    # Nothing changed since the last reload, except [host], which only a restart applies.
    assert body["ok"] is True and body["added"] == [] and body["removed"] == []
    assert body["restart_needed"] == ["host.inbox_max_items"]
    assert body["file"] == str(home / "legion.toml")

    write_config(home, CONFIG)
    removed = json.loads(legion(home, "config", "reload", "--json").stdout)
    assert removed["removed"] == ["gamma"]
    assert "agents.beta.role" in removed["changed"]

    write_config(home, CONFIG + "[agents.beta.permissions]\ncan_mesage = []\n")
    bad = legion(home, "config", "reload")
    assert bad.returncode == 2, bad.stdout + bad.stderr
    assert "can_mesage" in bad.stderr and str(home / "legion.toml") in bad.stderr
    assert "nothing was changed" in bad.stderr
    assert "Traceback" not in bad.stderr
    bad_json = legion(home, "config", "reload", "--json")
    assert bad_json.returncode == 2
    refusal = json.loads(bad_json.stdout)
    assert refusal["ok"] is False and refusal["error"]["code"] == "config_invalid"
    assert any("can_mesage" in p for p in refusal["problems"])
    assert agent_names(d) == ["alpha", "beta"]

    rc, _ = signal_and_wait(d, signal.SIGTERM)
    err.drain()
    d.stop()
    assert rc == 0


def test_config_reload_without_a_host_exits_3(home: Path) -> None:
    write_config(home)
    result = legion(home, "config", "reload")
    assert result.returncode == 3
    assert "legion daemon" in result.stderr


def _read_until(fd: int, needle: bytes, timeout: float) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while needle not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{needle!r} not seen on the terminal; got:\n{data.decode()}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
    return data


def test_daemon_survives_its_terminal_hanging_up(home: Path) -> None:
    """issue 8: a daemon started from an SSH session and left running keeps serving when the
    session's terminal goes away (the kernel sends SIGHUP; its stderr then fails with EIO),
    and still stops cleanly afterwards. On its terminal it logs text, not JSON."""
    write_config(home)
    master, slave = os.openpty()

    def controlling_terminal() -> None:  # in the child, after setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [sys.executable, "-m", "legion", "--home", str(home), "daemon"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        preexec_fn=controlling_terminal,
        env={k: v for k, v in os.environ.items() if k != "LEGION_HOME"},
    )
    os.close(slave)
    paths = Daemon(home).paths
    try:
        seen = _read_until(master, b"host ready", 30)
        first = seen.decode(errors="replace").splitlines()[0]
        assert not first.startswith("{"), first  # a terminal gets text
        assert first[:4].isdigit() and first[10] == "T" and "Z " in first, first
        os.close(master)  # the session ends: SIGHUP (and SIGCONT) to its controlling process
        master = -1

        def reloaded() -> bool:
            got = legion(home, "audit", "--json", "--limit", "20")
            return any(r["action"] == "config.reload" for r in json.loads(got.stdout or "[]"))

        wait_until(reloaded, 20, "the hangup's reload in the audit log")
        assert proc.poll() is None, "the daemon died on SIGHUP"
        with uds_client(paths.control_socket) as control:
            assert control.get("/v1/status").json()["pid"] == proc.pid
        # Writing its log to the dead terminal fails (EIO): it must not take the host down.
        for _ in range(3):
            assert legion(home, "status").returncode == 0
        stopped = legion(home, "stop", "--json")
        assert stopped.returncode == 0, stopped.stderr
        assert proc.wait(15) == 0
        assert not paths.control_socket.exists() and not paths.pid_file.exists()
    finally:
        if master >= 0:
            os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
