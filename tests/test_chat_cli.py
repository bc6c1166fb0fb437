"""`legion chat` against a running daemon, with a real agent runtime process (no Docker).

The daemon runs with `[runtime] backend = "none"`; the test starts `python -m
agent_container` itself, pointed at the agent's socket, as the container would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from legion.gateway.vault import Vault
from tests.conftest import Daemon
from tests.fakes.provider import FakeProvider

pytestmark = pytest.mark.slow


@pytest.fixture
def agent_fleet(home: Path, daemon) -> Iterator[tuple[Path, FakeProvider]]:  # type: ignore[no-untyped-def]
    with FakeProvider(chunk_chars=3) as fake:
        (home / "legion.toml").write_text(f"""
[runtime]
backend = "none"

[llm.models.m]
model = "openai/fake"
api_base = "{fake.base_url}"
credential = "provider"
input_cost_per_mtok = 1.0
output_cost_per_mtok = 1.0

[agents.alice]
model = "m"
""")
        vault = Vault(home / "vault.db", home / "vault.key")
        vault.set("provider", "sk-chat-cli-test", tier="system")
        vault.close()
        d: Daemon = daemon()
        d.start()
        workspace = home / "alice-ws"
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent_container"],
            env={
                **os.environ,
                "LEGION_SOCKET": str(d.paths.agent_socket("alice")),
                "LEGION_WORKSPACE": str(workspace),
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            yield home, fake
        finally:
            agent.terminate()
            try:
                agent.wait(10)
            finally:
                if agent.stderr is not None:
                    agent.stderr.close()
            d.stop()


def legion(home: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "legion", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=120,
        input=stdin,
    )


def test_chat_streams_the_reply_and_exits(agent_fleet: tuple[Path, FakeProvider]) -> None:
    home, fake = agent_fleet
    run = legion(home, "chat", "alice", "hello there")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "echo: hello there"
    as_json = legion(home, "chat", "alice", "again", "--json")
    reply = json.loads(as_json.stdout)
    assert reply["agent"] == "alice" and reply["text"] == "echo: again"
    assert fake.requests[-1].headers["authorization"] == "Bearer sk-chat-cli-test"


def test_chat_line_mode(agent_fleet: tuple[Path, FakeProvider]) -> None:
    home, _ = agent_fleet
    run = legion(home, "chat", "alice", stdin="first line\n\nsecond line\n")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["echo: first line", "echo: second line"]


def test_chat_with_an_unknown_agent_fails_clearly(agent_fleet: tuple[Path, FakeProvider]) -> None:
    home, _ = agent_fleet
    run = legion(home, "chat", "ghost", "hi")
    assert run.returncode == 1 and "no agent named 'ghost'" in run.stderr
    assert "Traceback" not in run.stderr
