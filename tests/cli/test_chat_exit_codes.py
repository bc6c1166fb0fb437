"""issue 8: `legion chat` tells a failed or refused turn from an answer.

A real daemon (`[runtime] backend = "none"`) with the agent runtime as a process on its
socket and the fake provider behind the gateway (the fixture of tests/test_chat_cli.py).
Exit 0 answered, 5 the turn failed, 6 the host refused it; `--json` carries `error`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.fakes.provider import FakeProvider, Reply
from tests.test_chat_cli import agent_fleet, legion

__all__ = ["agent_fleet"]  # the fixture, used by name below

pytestmark = pytest.mark.slow


def test_an_answer_exits_0_and_its_json_has_no_error(
    agent_fleet: tuple[Path, FakeProvider],
) -> None:
    home, _ = agent_fleet
    run = legion(home, "chat", "alice", "hello", "--json")
    assert run.returncode == 0, run.stderr
    reply = json.loads(run.stdout)
    assert reply["text"] == "echo: hello" and reply["error"] is None


def test_a_provider_failure_exits_5_naming_the_code(agent_fleet: tuple[Path, FakeProvider]) -> None:
    home, fake = agent_fleet
    fake.script(Reply(status=400, error="the model refuses"))
    run = legion(home, "chat", "alice", "hello")
    assert run.returncode == 5, (run.stdout, run.stderr)
    assert run.stdout.strip() == ""  # no answer on stdout: the reason is on stderr
    assert "alice's turn failed" in run.stderr and "[provider_rejected, HTTP 400]" in run.stderr
    assert "Traceback" not in run.stderr
    fake.script(Reply(status=400, error="again"))
    as_json = legion(home, "chat", "alice", "hello", "--json")
    assert as_json.returncode == 5, as_json.stderr
    error = json.loads(as_json.stdout)["error"]
    assert error["code"] == "provider_rejected" and error["status"] == 400
    assert "again" in error["message"]


def test_a_budget_refusal_exits_6(agent_fleet: tuple[Path, FakeProvider]) -> None:
    home, fake = agent_fleet
    config = home / "legion.toml"
    config.write_text(
        config.read_text() + "\n[agents.alice.budget]\ndaily_usd = 0.0\n", encoding="utf-8"
    )
    assert legion(home, "config", "reload").returncode == 0
    run = legion(home, "chat", "alice", "hello", "--json")
    assert run.returncode == 6, (run.stdout, run.stderr)
    error = json.loads(run.stdout)["error"]
    assert (error["code"], error["status"]) == ("budget_exceeded", 402)
    text = legion(home, "chat", "alice", "hello")
    assert text.returncode == 6 and "was refused" in text.stderr
    assert fake.requests == []


def test_line_mode_goes_on_after_a_failure_and_exits_with_it(
    agent_fleet: tuple[Path, FakeProvider],
) -> None:
    home, fake = agent_fleet
    fake.script(Reply(status=400, error="first fails"))
    run = legion(home, "chat", "alice", stdin="one\ntwo\n")
    assert run.returncode == 5, (run.stdout, run.stderr)
    assert "echo: two" in run.stdout  # the conversation went on
    assert "first fails" in run.stderr


def test_the_exit_codes_are_documented() -> None:
    """The help and docs/cli.md name each code the command uses."""
    from legion.cli import chat_cmd

    doc = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
    text = re.sub(r"\s+", " ", doc.read_text(encoding="utf-8"))
    for code in (chat_cmd.EXIT_NO_ANSWER, chat_cmd.EXIT_TURN_FAILED, chat_cmd.EXIT_TURN_REFUSED):
        assert f"{code} " in (chat_cmd.chat.__doc__ or "")
        assert f"`{code}`" in text, code
