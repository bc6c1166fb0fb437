"""issue 8: `legion events` says it is connected, prints readable values and filters by
agent and type; tables never cut a value when piped (or with `--wide`), and fold instead of
cutting on a terminal."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from legion.cli.events_cmd import event_types, readable, value_text
from legion.paths import Paths
from legion.wire.events import CostUpdated, InboxQueued
from tests.conftest import Daemon

pytestmark = pytest.mark.slow

CONFIG = (
    '[runtime]\nbackend = "none"\n\n[mcp.docs]\nurl = "https://mcp.example.com/mcp"\n'
    'enabled = false\n\n[agents.alice.permissions]\nallowed_mcp = ["docs"]\n\n[agents.bob]\n'
)


def legion(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "legion", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def running(home: Path, daemon) -> Iterator[Path]:  # type: ignore[no-untyped-def]
    (home / "legion.toml").write_text(CONFIG)
    d: Daemon = daemon()
    d.start()
    try:
        yield home
    finally:
        d.stop()


def test_values_read_as_an_operator_reads_them() -> None:
    cost = CostUpdated(
        at=1.0,
        agent="a",
        request_id="r",
        model="m",
        cost_usd=0.1 + 0.2,
        spent_today_usd=1e-7,
        spent_month_usd=12.5,
    )
    line = readable(cost)
    assert "cost_usd=$0.3 " in line and "spent_month_usd=$12.5" in line
    assert "spent_today_usd=$0 " in line or "spent_today_usd=$0.0000001" in line
    assert "0000000000" not in line
    queued = InboxQueued(at=1.0, agent="a", item_id=1, kind="message", topic=None, sender="op")
    assert "topic" not in readable(queued) and "None" not in readable(queued)
    assert value_text("reason", "two words") == '"two words"'
    assert value_text("lateness_s", 0.123456789) == "0.123457"


class Follower:
    """`legion events ...` as a process; lines as they come."""

    def __init__(self, home: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "legion", "--home", str(home), "events", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stderr is not None
        self.connected = self.proc.stderr.readline()

    def lines_until(self, text: str, timeout_s: float = 20) -> list[str]:
        assert self.proc.stdout is not None
        seen: list[str] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                seen.append(line)
                if text in line:
                    return seen
        raise AssertionError(f"{text!r} never came: {seen}")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.communicate(timeout=20)


def test_events_say_connected_and_filter_by_agent_and_type(running: Path) -> None:
    home = running
    paths = Paths.resolve(home)
    follower = Follower(home, "--agent", "alice", "--type", "inbox_queued,audit_appended")
    try:
        assert "connected" in follower.connected and "about alice" in follower.connected
        operator = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(paths.control_socket)), base_url="http://l"
        )
        with operator:
            assert operator.post("/v1/messages", json={"to": "bob", "payload": 1}).is_success
            assert operator.post("/v1/messages", json={"to": "alice", "payload": 2}).is_success
        seen = follower.lines_until("agent=alice")
        assert not any("agent=bob" in line for line in seen), seen
        assert all("inbox_queued" in line or "audit_appended" in line for line in seen)
        assert not any("=None" in line for line in seen)
    finally:
        follower.close()


def test_events_refuse_an_unknown_type_listing_the_known(running: Path) -> None:
    run = legion(running, "events", "--type", "nope")
    assert run.returncode == 2
    for known in ("agent_reply", "cost_updated", "token_delta"):
        assert known in run.stderr
    assert set(event_types()) >= {"agent_reply", "cost_updated", "host_stopping"}


LONG = "shared/" + "/".join(f"segment-{n:02d}-of-a-very-long-key" for n in range(8))


def test_a_piped_table_prints_every_value_whole(running: Path) -> None:
    assert legion(running, "bb", "put", LONG, '"x"').returncode == 0
    from legion.gateway.mcp_remote import DISABLED

    for args, whole in (
        (("bb", "ls"), LONG),
        (("audit",), LONG),
        (("audit", "--wide"), LONG),
        (("mcp", "ls"), DISABLED),
    ):
        run = legion(running, *args)
        assert run.returncode == 0, run.stderr
        lines = [line for line in run.stdout.splitlines() if whole in line]
        assert lines, (args, run.stdout)
        assert "…" not in run.stdout and all(
            line == line.rstrip() for line in run.stdout.splitlines()
        )


def _in_a_terminal(home: Path, *args: str, columns: int = 80) -> str:
    """Run `legion ARGS` with stdout on a pseudo-terminal `columns` wide."""
    leader, follower = pty.openpty()
    env = {**os.environ, "COLUMNS": str(columns), "LINES": "40", "TERM": "xterm"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "legion", "--home", str(home), *args],
        stdout=follower, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    os.close(follower)
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(30)
    os.close(leader)
    return b"".join(chunks).decode(errors="replace")


def test_on_a_terminal_long_values_fold_and_wide_keeps_them_on_one_line(running: Path) -> None:
    assert legion(running, "bb", "put", LONG, '"x"').returncode == 0
    folded = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", _in_a_terminal(running, "bb", "ls"))
    lines = [line for line in folded.splitlines() if line.strip()]
    assert "…" not in folded and max(len(line) for line in lines) <= 80
    key_width = lines[0].index("version")
    cell = "".join(line[:key_width].strip() for line in lines[1:])
    assert cell == LONG  # folded over several lines of its cell, not a character lost
    wide = _in_a_terminal(running, "bb", "ls", "--wide")
    assert any(LONG in line for line in wide.splitlines()), wide


def test_json_everywhere_results_are_printed(home: Path) -> None:
    target = home / "fresh"
    path = json.loads(legion(target, "config", "path", "--json").stdout)
    assert path == {"file": str(target / "legion.toml"), "exists": False, "home": str(target)}
    init = json.loads(legion(target, "config", "init", "--json").stdout)
    assert init == {"file": str(target / "legion.toml"), "written": True}
    again = legion(target, "config", "init", "--json")
    assert again.returncode == 1 and json.loads(again.stdout)["written"] is False
