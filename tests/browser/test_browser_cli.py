"""issue 13: `legion browser` against a running daemon (no container runtime here: the
commands and their errors, not the browser itself, which the docker tests drive)."""

from __future__ import annotations

import json
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon
from tests.test_cli import clean_fail, drain_until_ready, legion, ok

pytestmark = pytest.mark.slow

CONFIG = """
[runtime]
backend = "none"

[agents.alice.permissions]
can_use_browser = true

[agents.carol]
"""


@pytest.fixture(scope="module")
def browser_home() -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="lg-", dir="/tmp"))
    (home / "legion.toml").write_text(CONFIG)
    daemon = Daemon(home)
    drain: threading.Thread | None = None
    try:
        drain = drain_until_ready(daemon.start())
        yield home
    finally:
        if daemon.proc is not None:
            if daemon.proc.poll() is None:
                daemon.proc.send_signal(signal.SIGTERM)
            daemon.proc.wait(10)
            if drain is not None:
                drain.join(5)
            daemon.stop()
        shutil.rmtree(home, ignore_errors=True)


def test_browser_ls_shows_each_agent(browser_home: Path) -> None:
    listing = json.loads(ok(legion(browser_home, "browser", "ls", "--json")).stdout)
    assert listing["running"] == 0 and listing["max_running"] == 4
    rows = {b["agent"]: b for b in listing["browsers"]}
    assert rows["alice"]["enabled"] is True and rows["carol"]["enabled"] is False
    human = ok(legion(browser_home, "browser", "ls")).stdout
    assert "0 of at most 4 browsers running" in human
    assert "carol" in human and "(can_use_browser = false)" in human


def test_browser_commands_fail_clearly(browser_home: Path) -> None:
    message = clean_fail(legion(browser_home, "browser", "handoff", "alice"), 1)
    assert "Docker" in message or "websockify" in message
    message = clean_fail(legion(browser_home, "browser", "stop", "nobody"), 1)
    assert "nobody" in message
    done = json.loads(ok(legion(browser_home, "browser", "done", "alice", "--json")).stdout)
    assert done["agent"] == "alice" and done["waiting_for_human"] is False
    stopped = ok(legion(browser_home, "browser", "stop", "alice")).stdout
    assert stopped.strip() == "alice: browser stopped"


def test_browser_without_a_host() -> None:
    home = Path(tempfile.mkdtemp(prefix="lg-", dir="/tmp"))
    try:
        message = clean_fail(legion(home, "browser", "ls"), 3)
        assert "no legion host is running" in message
    finally:
        shutil.rmtree(home, ignore_errors=True)
