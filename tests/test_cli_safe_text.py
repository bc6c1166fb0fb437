"""issue 7: agent text never reaches the operator's terminal raw.

A daemon runs (no runtime backend); the test plays the agent on its socket and writes a
string full of terminal controls everywhere an agent can: blackboard values, notifications,
audit targets, a streamed LLM reply and the reply itself. Each `legion` command that shows
them runs as the operator runs it (a subprocess); its bytes must hold none of the raw
controls, show visible escapes instead, print Rich markup literally, and its `--json` must
round-trip the exact string.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from legion.gateway.vault import Vault
from legion.paths import Paths
from tests.conftest import Daemon
from tests.fakes.provider import FakeProvider, Reply
from tests.test_cli import drain_until_ready

pytestmark = pytest.mark.slow

NASTY = (
    "start \x1b[2J\x1b[H csi"
    " \x1b]52;c;cHduZWQ=\x07 clipboard"
    " \x1b]8;;https://example.invalid/\x1b\\link\x1b]8;;\x1b\\ hyperlink"
    " \x1b]0;owned\x07 title"
    " \x9b31m c1"
    " fake\rover"
    " \u202eevil\u202c bidi \u200b zero-width \x00 nul \x7f del"
    " [bold red]markup[/] [link=https://example.invalid/]l[/link] :warning:"
    "\nsecond line end"
)
# What must never reach the terminal, and what the operator sees instead.
RAW = ["\x1b", "\x07", "\x9b", "\r", "\u202e", "\u202c", "\u200b", "\x00", "\x7f"]
VISIBLE = [
    "\\x1b[2J\\x1b[H csi",
    "\\x1b]52;c;cHduZWQ=\\x07",
    "\\x1b]8;;https://example.invalid/\\x1b\\link",
    "\\x1b]0;owned\\x07",
    "\\u009b31m",
    "fake\\x0dover",
    "\\u202eevil\\u202c",
    "\\u200b",
    "\\x00 nul \\x7f del",
    "[bold red]markup[/] [link=https://example.invalid/]l[/link] :warning:",
]
ALIAS = "m\x1b]0;owned\x07[bold]alias[/bold]"  # an operator-authored model alias


def raw_free(out: str) -> None:
    for raw in RAW:
        assert raw not in out, (raw, out)


def shows(out: str, *, newline: str = "\n") -> None:
    """No raw control; the visible escapes instead; `newline` is how the line break inside
    NASTY is shown (kept in multi-line text, `\\x0a` in a one-line field or table cell)."""
    raw_free(out)
    for visible in VISIBLE:
        assert visible in out, (visible, out)
    assert f":warning:{newline}second line end" in out, out


@dataclass
class Fleet:
    home: Path
    fake: FakeProvider
    agent: httpx.Client

    def legion(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "legion", "--home", str(self.home), *args],
            capture_output=True,
            timeout=timeout,
            env=cli_env(),
        )

    def popen(self, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "legion", "--home", str(self.home), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=cli_env(),
        )


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LEGION_HOME"}
    env["COLUMNS"] = "3000"  # rich tables: keep each row on one line
    return env


def text(result: subprocess.CompletedProcess[bytes]) -> str:
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout.decode()


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    home = Path(tempfile.mkdtemp(prefix="lg-", dir="/tmp"))
    with FakeProvider(chunk_chars=3) as fake:
        (home / "legion.toml").write_text(f"""
[runtime]
backend = "none"

[llm.models.{json.dumps(ALIAS)}]
model = "openai/fake"
api_base = "{fake.base_url}"
credential = "provider"
input_cost_per_mtok = 1.0
output_cost_per_mtok = 1.0

[agents.alice]
model = {json.dumps(ALIAS)}
[agents.alice.permissions]
blackboard_read = ["**"]
blackboard_write = ["**"]
""")
        vault = Vault(home / "vault.db", home / "vault.key")
        vault.set("provider", "sk-safe-text-Qw7Lm2Xc9", tier="system")
        vault.close()
        d = Daemon(home)
        drain: threading.Thread | None = None
        socket_path = str(Paths.resolve(home).agent_socket("alice"))
        try:
            drain = drain_until_ready(d.start())
            with httpx.Client(
                transport=httpx.HTTPTransport(uds=socket_path),
                base_url="http://legion",
                timeout=30,
            ) as agent:
                yield Fleet(home, fake, agent)
        finally:
            if d.proc is not None and d.proc.poll() is None:
                d.proc.send_signal(signal.SIGTERM)
                d.proc.wait(10)
            if drain is not None:
                drain.join(5)
            d.stop()
            shutil.rmtree(home, ignore_errors=True)


def test_bb_get_and_ls(fleet: Fleet) -> None:
    written = {"text": NASTY, NASTY: ["nested", NASTY]}
    put = fleet.agent.put("/v1/blackboard/entries/nasty/k", json={"value": written})
    assert put.status_code == 200
    shown = text(fleet.legion("bb", "get", "nasty/k"))
    # printed as JSON: C0 controls are JSON escapes already; DEL, C1 and format characters
    # (which JSON leaves raw) are escaped on top
    raw_free(shown)
    for visible in ("\\u001b[2J", "\\u001b]52;c;", "\\u009b31m", "\\r", "\\u202e", "\\x7f"):
        assert visible in shown, (visible, shown)
    assert "[bold red]markup[/] [link=https://example.invalid/]l[/link]" in shown
    assert json.loads(text(fleet.legion("bb", "get", "nasty/k", "--json")))["value"] == written
    listing = text(fleet.legion("bb", "ls", "nasty"))
    raw_free(listing)
    assert "nasty/k" in listing and "alice" in listing


def test_audit_table_and_json(fleet: Fleet) -> None:
    # agent-chosen text in audit targets: a list prefix (the one input the strict models of
    # issue 15 still take free-form; a message to a made-up name is now refused as 422
    # before it is audited), twice
    for _ in range(2):
        assert (
            fleet.agent.get("/v1/blackboard/entries", params={"prefix": NASTY}).status_code == 200
        )
    table = text(fleet.legion("audit", "--agent", "alice"))
    shows(table, newline="\\x0a")
    records = json.loads(text(fleet.legion("audit", "--agent", "alice", "--json")))
    targets = [r["target"] for r in records]
    assert targets.count(NASTY) == 2


def read_lines(proc: subprocess.Popen[bytes], lines: queue.Queue[bytes]) -> threading.Thread:
    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    return thread


def wait_for_line(
    lines: queue.Queue[bytes], want: Callable[[bytes], bool], nudge: Callable[[], Any]
) -> bytes:
    """Nudge (send a marker event) until the follower shows a wanted line: the follower
    subscribes some time after it starts, and there is no other signal that it has."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        nudge()
        with contextlib.suppress(queue.Empty):
            while True:
                line = lines.get(timeout=0.2)
                if want(line):
                    return line
    raise AssertionError("the event follower never showed the line")


def test_events_human_and_json(fleet: Fleet) -> None:
    followers = [fleet.popen("events"), fleet.popen("events", "--json")]
    queues: list[queue.Queue[bytes]] = [queue.Queue(), queue.Queue()]
    try:
        for proc, lines in zip(followers, queues, strict=True):
            read_lines(proc, lines)
            wait_for_line(
                lines,
                lambda line: b"ready-marker" in line,
                lambda: fleet.agent.post("/v1/notify", json={"text": "ready-marker"}),
            )
        assert fleet.agent.post("/v1/notify", json={"text": NASTY}).status_code == 200
        human = wait_for_line(
            queues[0], lambda line: b"agent_notification" in line and b"csi" in line, lambda: None
        )
        shows(human.decode(), newline="\\x0a")
        as_json = wait_for_line(queues[1], lambda line: b"csi" in line, lambda: None)
        raw_free(as_json.decode())
        assert json.loads(as_json)["text"] == NASTY
    finally:
        for proc in followers:
            proc.terminate()
            proc.wait(10)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()


def answer_one_chat(fleet: Fleet, reply_text: str) -> None:
    """Play the agent for one turn: take the message, stream a completion (whose deltas
    the host publishes as token events), notify, reply."""
    deadline = time.monotonic() + 30
    items: list[dict[str, Any]] = []
    while not items and time.monotonic() < deadline:
        items = fleet.agent.post("/v1/inbox/poll", json={"wait_s": 5}).json()["items"]
    (item,) = items
    fleet.fake.script(Reply(content=reply_text))
    messages = [{"role": "user", "content": "hi"}]
    with fleet.agent.stream(
        "POST", "/v1/chat/completions", json={"messages": messages, "stream": True}
    ) as stream:
        assert stream.status_code == 200
        for _ in stream.iter_lines():
            pass
    fleet.agent.post("/v1/notify", json={"text": NASTY, "level": "warning"})
    sent = fleet.agent.post("/v1/replies", json={"in_reply_to": item["id"], "text": reply_text})
    assert sent.status_code == 200
    fleet.agent.post("/v1/inbox/ack", json={"ids": [item["id"]]})


def test_chat_streamed_deltas_reply_and_notifications(fleet: Fleet) -> None:
    chat = fleet.popen("chat", "alice", "hi")
    answer_one_chat(fleet, NASTY)
    out, err = chat.communicate(timeout=60)
    assert chat.returncode == 0, err.decode()
    shown = out.decode()
    shows(shown)  # the streamed deltas (3 characters each: ESC sequences split), kept lines
    assert shown.count("csi") == 1  # the reply equals the stream: printed once
    shows(err.decode())  # the notification
    chat = fleet.popen("chat", "alice", "again", "--json")
    answer_one_chat(fleet, NASTY)
    out, err = chat.communicate(timeout=60)
    assert chat.returncode == 0, err.decode()
    raw_free(out.decode())
    assert json.loads(out)["text"] == NASTY


def test_operator_authored_names_in_agents_costs_status(fleet: Fleet) -> None:
    """The model alias (operator-authored config, but printed by the same paths)."""
    fleet.fake.script(Reply(content="ok"))
    call = fleet.agent.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}
    )
    assert call.status_code == 200  # a ledger row for `legion costs` to show
    for args in (("agents", "ls"), ("costs",), ("status",)):
        out = text(fleet.legion(*args))
        raw_free(out)
        if args != ("status",):
            assert "m\\x1b]0;owned\\x07[bold]alias[/bold]" in out, out
    listing = json.loads(text(fleet.legion("agents", "ls", "--json")))
    assert listing["agents"][0]["model"] == ALIAS


def test_safe_text_rules() -> None:
    """The helper itself: what is escaped, what is kept."""
    from legion.textsafe import safe_text

    assert safe_text("plain text, tabs\tand ümlauts, 漢字, emoji 👨\u200d👩\u200d👧") == (
        "plain text, tabs\tand ümlauts, 漢字, emoji 👨\u200d👩\u200d👧"
    )
    assert safe_text("a\nb") == "a\\x0ab" and safe_text("a\nb", multiline=True) == "a\nb"
    assert safe_text("\x1b\x9b\u202e\u2066\u2028\ufeff\U000e0041") == (
        "\\x1b\\u009b\\u202e\\u2066\\u2028\\ufeff\\U000e0041"
    )
    assert safe_text("\ud800") == "\\ud800"  # a lone surrogate (from surrogateescape)


def test_safe_text_imports_without_the_cli_toolkits() -> None:
    """The TUI reuses `legion.textsafe`: importing it pulls in neither rich nor typer."""
    code = (
        "import json, sys; import legion.textsafe as t; "
        "print(json.dumps([m for m in ('rich', 'typer', 'click', 'textual') if m in sys.modules]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
