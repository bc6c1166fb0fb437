"""`legion` in a real terminal (issue 9): tmux runs it attached to a running daemon with an
agent on the fake provider; keys go in with send-keys, the screen comes out of capture-pane.

tmux is a test requirement (.ci/run installs it); each test runs its own tmux server.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon
from tests.fakes.provider import FakeProvider
from tests.fleetproc import agent_process, fleet_config, prepare_home

pytestmark = pytest.mark.slow

TMUX = shutil.which("tmux")


class Terminal:
    """One tmux server and session running a command, 120x40 unless told otherwise."""

    def __init__(self, socket: Path | None = None) -> None:
        """`socket`: the first server's (tests/cli/test_readme.py names its own); later ones
        (`restart`) are fresh."""
        self.sockets: list[Path] = []
        self.socket = socket or self._new_socket()

    @staticmethod
    def _new_socket() -> Path:
        return Path("/tmp") / f"lg-tmux-{os.getpid()}-{time.monotonic_ns()}"

    def restart(self) -> None:
        """Kill this server and use a fresh socket for the next one: kill-server returns
        before the server has gone, and a new-session on the same socket can reach the
        dying server ("server exited unexpectedly")."""
        self.tmux("kill-server")
        self.socket = self._new_socket()

    def tmux(self, *args: str) -> str:
        assert TMUX, "tmux is needed for the terminal tests (apt-get install tmux)"
        run = subprocess.run(
            [TMUX, "-S", str(self.socket), *args], capture_output=True, text=True, timeout=30
        )
        assert run.returncode == 0, run.stderr
        return run.stdout

    def start(self, command: str, *, width: int = 120, height: int = 40) -> None:
        self.sockets.append(self.socket)
        self.tmux("new-session", "-d", "-s", "t", "-x", str(width), "-y", str(height), command)

    def screen(self, escapes: bool = False) -> str:
        return self.tmux("capture-pane", "-p", *(["-e"] if escapes else []), "-t", "t")

    def wait_for(self, text: str, timeout_s: float = 30.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.1)
        raise AssertionError(f"{text!r} never showed; the screen:\n{self.screen()}")

    def keys(self, *keys: str, literal: bool = False) -> None:
        self.tmux("send-keys", "-t", "t", *(["-l"] if literal else []), *keys)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    term = Terminal()
    try:
        yield term
    finally:
        for socket in term.sockets:
            subprocess.run([TMUX or "tmux", "-S", str(socket), "kill-server"], capture_output=True)
            socket.unlink(missing_ok=True)


@pytest.fixture
def attached_fleet(home: Path, daemon: Callable[[], Daemon]) -> Iterator[tuple[Daemon, Path]]:
    with FakeProvider(chunk_chars=2, chunk_delay_s=0.02) as fake:
        paths = prepare_home(home, fleet_config(fake.base_url))
        d = daemon()
        d.start()
        with agent_process(paths, "alice"):
            yield d, home


def legion_command(home: Path, env: str = "") -> str:
    exe = shlex.join([sys.executable, "-m", "legion", "--home", str(home)])
    # the tmux server inherits pytest's environment: COLUMNS/LINES there would fix the size
    return (
        f"env -u COLUMNS -u LINES TERM=screen-256color {env} {exe}; echo LEGION-EXIT=$?; sleep 600"
    )


def test_chat_in_tmux_attached_and_quit_leaves_the_daemon(
    terminal: Terminal, attached_fleet: tuple[Daemon, Path]
) -> None:
    d, home = attached_fleet
    assert d.proc is not None
    terminal.start(legion_command(home))
    terminal.wait_for("attached to daemon pid")
    assert f"pid {d.proc.pid}" in terminal.screen()
    terminal.wait_for("alice")
    terminal.keys("Enter")  # open alice's pane from the sidebar
    terminal.wait_for("message alice")
    terminal.keys("hello from tmux", literal=True)
    terminal.keys("Enter")
    screen = terminal.wait_for("echo: hello from tmux")
    assert "> hello from tmux" in screen
    terminal.keys("C-q")
    terminal.wait_for("LEGION-EXIT=0")
    # the daemon and its fleet keep running
    assert d.proc.poll() is None
    status = subprocess.run(
        [sys.executable, "-m", "legion", "--home", str(home), "status", "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert status.returncode == 0 and f'"pid": {d.proc.pid}' in status.stdout


GREYS = {0, 7, 8, 15, 16, 231, *range(232, 256)}


def hues(screen: str) -> list[str]:
    """Colour escapes that are not a shade of grey (256-colour index or truecolor r=g=b)."""
    out = []
    for params in re.findall(r"\x1b\[([0-9;]*)m", screen):
        parts = [int(p) for p in params.split(";") if p]
        i = 0
        while i < len(parts):
            if parts[i] in (38, 48) and i + 2 < len(parts) and parts[i + 1] == 5:
                if parts[i + 2] not in GREYS:
                    out.append(params)
                i += 3
            elif parts[i] in (38, 48) and i + 4 < len(parts) and parts[i + 1] == 2:
                if len(set(parts[i + 2 : i + 5])) != 1:
                    out.append(params)
                i += 5
            elif 30 <= parts[i] <= 37 or 40 <= parts[i] <= 47 or 90 <= parts[i] <= 107:
                if parts[i] not in (30, 37, 40, 47, 90, 97, 100, 107):
                    out.append(params)
                i += 1
            else:
                i += 1
    return out


def test_no_color_is_honoured(terminal: Terminal, attached_fleet: tuple[Daemon, Path]) -> None:
    """With NO_COLOR the screen is shades of grey only; states are words, gauges percentages."""
    _, home = attached_fleet
    terminal.start(legion_command(home))
    terminal.wait_for("attached to daemon pid")
    terminal.wait_for("idle")
    # the check can fail: without NO_COLOR the same screen has colours
    deadline = time.monotonic() + 10
    while not hues(terminal.screen(escapes=True)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert hues(terminal.screen(escapes=True))
    terminal.keys("C-q")
    terminal.wait_for("LEGION-EXIT=0")
    terminal.restart()
    terminal.start(legion_command(home, "NO_COLOR=1"))
    terminal.wait_for("attached to daemon pid")
    screen = terminal.wait_for("idle")
    assert "alice" in screen
    assert hues(terminal.screen(escapes=True)) == []
    terminal.keys("C-q")
    terminal.wait_for("LEGION-EXIT=0")


def test_it_is_readable_at_80x24(terminal: Terminal, attached_fleet: tuple[Daemon, Path]) -> None:
    """At 80 columns the sidebar collapses; Escape brings it back over the panes."""
    _, home = attached_fleet
    terminal.start(legion_command(home), width=80, height=24)
    terminal.wait_for("attached to daemon pid")
    terminal.wait_for("alice")
    terminal.keys("Enter")
    terminal.wait_for("message alice")
    screen = terminal.screen()
    assert "● alice" not in screen  # the sidebar gave the pane its width
    terminal.keys("Escape")
    terminal.wait_for("● alice")
    terminal.keys("C-q")
    terminal.wait_for("LEGION-EXIT=0")
