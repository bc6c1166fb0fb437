"""Pure pieces of the agent's mind (issue 11): the bootstrap caps and cut order, safe reads
of the identity folder, loop thresholds, message groups that keep tool pairs, compaction
through its callables, learnings caps and rotation."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from agent_container.bootstrap import Bootstrap, load_files, read_capped, signature
from agent_container.context import ContextManager, Window, groups, is_overflow, parse_summary
from agent_container.learnings import FILE_CAP, Learnings, is_correction
from agent_container.loops import LoopGuard, LoopStopped, Thresholds
from legion.wire.agent import WORKSPACE_FILE_CAPS, BudgetLeft, SelfStatus


def me(**kw: Any) -> SelfStatus:
    fields: dict[str, Any] = {
        "agent": "alice",
        "role": "researcher",
        "team": None,
        "model": "m",
        "mode": "chat",
        "system_prompt": None,
        "max_tool_rounds": 8,
        "max_task_steps": 20,
        "permissions": {},
        "budget_left": BudgetLeft(daily_usd=None, monthly_usd=None, fleet_daily_usd=None),
        "fleet": [],
    }
    return SelfStatus(**(fields | kw))


def full_files(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, cap in WORKSPACE_FILE_CAPS.items():
        (folder / name).write_text(f"<{name}>" + name[0] * cap)  # one byte over each cap


def test_every_file_is_read_up_to_its_cap_and_the_prompt_within_the_total(tmp_path: Path) -> None:
    full_files(tmp_path)
    files = load_files(tmp_path)
    for name, cap in WORKSPACE_FILE_CAPS.items():
        assert files[name].endswith(f"[... cut at its cap of {cap} bytes]")
        assert len(files[name].encode()) <= cap + 40
    prompt = Bootstrap(me(), files, "- a learning", ["read_file"], "/w", "operator").render()
    assert len(prompt.encode()) <= 48 * 1024
    # cut in order: learnings, MEMORY.md, HEARTBEAT.md ... SOUL.md last
    assert "<SOUL.md>" in prompt and "<INSTRUCTIONS.md>" in prompt and "<USER.md>" in prompt
    small = Bootstrap(me(), files, "- a learning", ["read_file"], "/w", "operator", cap=20000)
    text = small.render()
    assert len(text.encode()) <= 20000
    assert "<SOUL.md>" in text and "- a learning" not in text and "<MEMORY.md>" not in text
    assert "Runtime context:" in text and "Tools: read_file." in text  # never cut


def test_the_identity_folder_is_read_without_following_links(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("a secret the agent planted a link to")
    ident = tmp_path / "identity"
    ident.mkdir()
    (ident / "SOUL.md").symlink_to(secret)
    os.mkfifo(ident / "USER.md")  # a reader would hang on it
    (ident / "MEMORY.md").mkdir()
    (ident / "INSTRUCTIONS.md").write_bytes(b"ok \x00 \xff done")
    assert read_capped(ident, "SOUL.md", 100) == ""
    assert read_capped(ident, "USER.md", 100) == ""
    assert read_capped(ident, "MEMORY.md", 100) == ""
    assert read_capped(ident, "INSTRUCTIONS.md", 100) == "ok   done"
    before = signature(ident)
    (ident / "HEARTBEAT.md").write_text("check mail")
    assert signature(ident) != before


def test_loop_thresholds() -> None:
    guard = LoopGuard(Thresholds(warn_at=2, block_at=4, stop_at=9))
    seen = []
    for _ in range(8):
        blocked = guard.before("list_files", '{"path": "."}')
        seen.append(blocked or guard.after("list_files", {"path": "."}, "a.txt"))
    assert "Warning" not in seen[0] and all("Warning" in s for s in seen[1:3])
    assert all(s.startswith("error: blocked") for s in seen[3:])
    with pytest.raises(LoopStopped, match="9 times"):
        guard.before("list_files", '{ "path" : "." }')  # the same arguments, spaced
    # a changing result is not a loop until the stop
    guard = LoopGuard()
    for n in range(8):
        assert guard.before("run_command", {"command": "date"}) is None
        assert "Warning" not in guard.after("run_command", {"command": "date"}, f"t{n}")
    with pytest.raises(LoopStopped):
        guard.before("run_command", {"command": "date"})
    # memory_search: never warned nor blocked, stopped all the same
    guard = LoopGuard()
    for _ in range(8):
        assert guard.before("memory_search", {"query": "x"}) is None
        assert guard.after("memory_search", {"query": "x"}, "none") == "none"
    with pytest.raises(LoopStopped):
        guard.before("memory_search", {"query": "x"})
    # the window slides: old calls are forgotten
    guard = LoopGuard(Thresholds(window=3))
    for n in range(10):
        guard.after("list_files", {}, "same")
        guard.after("other", {"n": n}, "x")
        guard.after("other2", {"n": n}, "x")
        assert guard.before("list_files", {}) is None


def tool_turn(call_id: str, result: str) -> list[dict[str, Any]]:
    return [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": "t", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": result},
    ]


def test_groups_keep_a_tool_call_with_its_results() -> None:
    messages = [
        {"role": "user", "content": "u1"},
        *tool_turn("a", "r1"),
        {"role": "assistant", "content": "a1"},
        {"role": "tool", "tool_call_id": "zz", "content": "stray"},
    ]
    assert [len(g) for g in groups(messages)] == [1, 2, 1, 1]


@pytest.mark.anyio
async def test_compaction_saves_first_keeps_pairs_and_the_pinned_request() -> None:
    order: list[str] = []

    async def complete(messages: list[dict[str, Any]]) -> tuple[str, int | None]:
        order.append("summarize")
        assert "user: first request" in messages[1]["content"]
        return json.dumps({"facts": ["f1"], "summary": "S"}), None

    async def save_facts(facts: list[str]) -> None:
        order.append(f"save {facts}")

    def save_text(name: str, text: str) -> str:
        raise AssertionError("not needed when the summary works")

    context = ContextManager(complete, save_facts, save_text, Window(4096, 256))
    pin = {"role": "user", "content": "the request in hand"}
    messages = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "first request " + "x" * 4000},
        {"role": "assistant", "content": "answer"},
        pin,
        *tool_turn("c1", "y" * 3000),
        *tool_turn("c2", "z" * 3000),
    ]
    done = await context.compact(messages, pin=pin)
    assert done is not None and order == ["summarize", "save ['f1']"]
    assert messages[0]["content"] == "sys" and messages[1]["content"].startswith(
        "[runtime] Summary"
    )
    assert messages[2] is pin
    roles = [m["role"] for m in messages[3:]]
    assert roles in (["assistant", "tool"], ["assistant", "tool", "assistant", "tool"])
    assert messages[3]["tool_calls"][0]["id"] == messages[4]["tool_call_id"]


def test_overflow_messages_and_summaries_are_recognized() -> None:
    assert is_overflow("This model's maximum context length is 8192 tokens")
    assert is_overflow("litellm.ContextWindowExceededError: prompt is too long")
    assert not is_overflow("rate limit reached")
    assert parse_summary('noise {"facts": ["a", 3, ""], "summary": "s"} noise') == (["a", "3"], "s")
    assert parse_summary("just text") == ([], "just text")


def test_learnings_rotate_at_their_cap_and_the_newest_come_first(tmp_path: Path) -> None:
    clock = [1_800_000_000.0]
    learnings = Learnings(tmp_path, clock=lambda: clock[0])
    for n in range(400):
        clock[0] += 60
        learnings.tool_failure("run_command", {"command": f"make {n}"}, f"error: exit {n}")
    folder = tmp_path / "learnings"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["tool-failures.1.md", "tool-failures.2.md", "tool-failures.md"]
    assert all(p.stat().st_size <= FILE_CAP for p in folder.iterdir())
    recent = learnings.recent(cap=1024)
    assert len(recent.encode()) <= 1024 and "make 399" in recent.splitlines()[0]
    learnings.tool_failure("run_command", {"command": "make 399"}, "error: exit 399")
    assert (folder / "tool-failures.md").read_text().count("make 399") == 1  # no repeat
    assert is_correction("No, I meant the other file") and is_correction("actually it's 4")
    assert not is_correction("Now do the next one")
