"""Learnings: what went wrong before, so later sessions do better.

The runtime records two kinds, one line each, in the workspace's `learnings/` folder:

* `tool-failures.md`: a tool call that came back as `error: ...` (tool, arguments, error);
* `corrections.md`: a user message that corrects the agent's previous answer (it starts
  with one of CORRECTION's phrases: "no,", "that's wrong", "actually", "I meant", ...),
  with that answer.

Each file holds at most FILE_CAP bytes; the entry that would pass the cap rotates it
(`NAME.md` -> `NAME.1.md` -> `NAME.2.md`, the oldest dropped). A session's system prompt
gets the newest entries of both, newest first, within PROMPT_CAP bytes, quoted as data.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

FOLDER = "learnings"
FAILURES = "tool-failures.md"
CORRECTIONS = "corrections.md"
FILE_CAP = 16 * 1024
ROTATIONS = 2
PROMPT_CAP = 4 * 1024
FIELD_MAX = 300
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)

CORRECTION = re.compile(
    r"^\s*(no\b|nope\b|wrong\b|incorrect\b|not quite\b|actually\b|that'?s (not|wrong|incorrect)"
    r"|that is (not|wrong|incorrect)|you('re| are) wrong|i said\b|i meant\b|not what i"
    r"|you misunderstood|stop doing|don'?t do that)",
    re.IGNORECASE,
)


def is_correction(text: str) -> bool:
    return bool(CORRECTION.match(text))


def _one_line(value: Any, limit: int = FIELD_MAX) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _read_tail(path: Path, limit: int) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return ""
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return ""
        return os.pread(fd, limit, max(0, info.st_size - limit)).decode("utf-8", "replace")
    except OSError:
        return ""
    finally:
        os.close(fd)


class Learnings:
    def __init__(self, workspace: Path, clock: Callable[[], float] = time.time) -> None:
        self.root = workspace / FOLDER
        self.clock = clock

    def _stamp(self) -> str:
        return datetime.fromtimestamp(self.clock(), UTC).strftime("%Y-%m-%d %H:%M UTC")

    def _append(self, name: str, entry: str) -> None:
        data = (entry + "\n").encode()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            path = self.root / name
            with contextlib.suppress(FileNotFoundError):
                if path.lstat().st_size + len(data) > FILE_CAP:
                    self._rotate(name)
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | NOFOLLOW | os.O_NONBLOCK
            fd = os.open(path, flags, 0o644)
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    os.write(fd, data)
            finally:
                os.close(fd)
        except OSError:
            pass  # a learning is worth less than the turn it came from

    def _rotate(self, name: str) -> None:
        stem = name.removesuffix(".md")
        for n in range(ROTATIONS, 0, -1):
            older = self.root / (f"{stem}.{n - 1}.md" if n > 1 else name)
            with contextlib.suppress(FileNotFoundError):
                os.replace(older, self.root / f"{stem}.{n}.md")

    def tool_failure(self, tool: str, arguments: Any, error: str) -> None:
        entry = (
            f"- {self._stamp()} | tool {tool} | arguments {_one_line(arguments)} | "
            f"{_one_line(error)}"
        )
        last = _read_tail(self.root / FAILURES, 2048).rstrip("\n").rpartition("\n")[2]
        if last.partition(" | ")[2] != entry.partition(" | ")[2]:  # not the same again
            self._append(FAILURES, entry)

    def correction(self, user_text: str, previous_answer: str) -> None:
        self._append(
            CORRECTIONS,
            f"- {self._stamp()} | the user corrected me: {_one_line(user_text)} | my answer "
            f"was: {_one_line(previous_answer, 200)}",
        )

    def recent(self, cap: int = PROMPT_CAP) -> str:
        """The newest entries of both files, newest first, within `cap` bytes."""
        entries: list[str] = []
        for name in (FAILURES, CORRECTIONS):
            text = _read_tail(self.root / name, cap)
            lines = text.splitlines()
            if len(text.encode()) >= cap and lines:
                lines = lines[1:]  # the first line may be cut
            entries += [line for line in lines if line.startswith("- ")]
        entries.sort(reverse=True)  # entries start with their time
        out: list[str] = []
        used = 0
        for entry in entries:
            size = len(entry.encode()) + 1
            if used + size > cap:
                break
            out.append(entry)
            used += size
        return "\n".join(out)
