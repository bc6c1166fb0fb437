"""Loop detection: a model that keeps making the same tool call is warned, then blocked,
then its turn is ended.

A sliding window of the last `window` tool calls of one turn (or task) holds, per call,
(tool, hash of its canonical JSON arguments, hash of its result). For a new call:

* the `stop_at`-th call with the same tool and arguments in the window ends the turn with
  a clear failure (LoopStopped), whatever the results were;
* when the `block_at - 1` previous identical calls (same tool, arguments AND result) are in
  the window, the call is not run: the model gets an error saying why;
* when it is at least the `warn_at`-th identical call, the result carries a warning.

`memory_search` is exempt from warnings and blocks (searching again is how a model checks
its memory), not from the stop. Defaults 2 / 4 / 9 over 30 calls; per agent in
`[agents.NAME.loop_detection]`.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from dataclasses import dataclass
from typing import Any

EXEMPT = frozenset({"memory_search"})
BLOCKED = "blocked"


class LoopStopped(Exception):
    """The same call came back too often: the turn ends with this message."""


def _hash(text: str) -> str:
    return hashlib.blake2b(text.encode(errors="replace"), digest_size=12).hexdigest()


def arguments_key(arguments: str | dict[str, Any] | None) -> str:
    """A hash of the arguments as canonical JSON (key order and spacing do not matter)."""
    value: Any = arguments
    if isinstance(arguments, str):
        try:
            value = json.loads(arguments or "{}")
        except ValueError:
            return _hash(arguments)
    return _hash(json.dumps(value, sort_keys=True, separators=(",", ":"), default=str))


@dataclass(frozen=True)
class Thresholds:
    warn_at: int = 2
    block_at: int = 4
    stop_at: int = 9
    window: int = 30


class LoopGuard:
    def __init__(self, thresholds: Thresholds | None = None) -> None:
        self.t = thresholds or Thresholds()
        self.calls: deque[tuple[str, str, str]] = deque(maxlen=self.t.window)

    def before(self, tool: str, arguments: str | dict[str, Any] | None) -> str | None:
        """Check a call before it runs: None to run it, or the text to answer instead of
        running it. Raises LoopStopped when the turn must end."""
        args = arguments_key(arguments)
        same_args = [r for t, a, r in self.calls if t == tool and a == args]
        if len(same_args) + 1 >= self.t.stop_at:
            raise LoopStopped(
                f"I stopped this turn: I called {tool} {len(same_args) + 1} times with the "
                "same arguments without getting anywhere. Please rephrase the request or "
                "tell me what to do differently."
            )
        if tool in EXEMPT or not same_args:
            return None
        ran = [r for r in same_args if r != BLOCKED]
        identical = sum(1 for r in ran if r == ran[-1]) if ran else 0
        if BLOCKED in same_args or identical + 1 >= self.t.block_at:
            self.calls.append((tool, args, BLOCKED))
            return (
                f"error: blocked by the runtime: this is call {len(same_args) + 1} of {tool} "
                "with the same arguments, and they kept giving the same result. It will not "
                "change: use what you have, try something else, or answer."
            )
        return None

    def after(self, tool: str, arguments: str | dict[str, Any] | None, result: str) -> str:
        """Record a call that ran; returns its result, with a warning when it repeats."""
        args = arguments_key(arguments)
        outcome = _hash(result)
        identical = sum(1 for t, a, r in self.calls if (t, a, r) == (tool, args, outcome))
        self.calls.append((tool, args, outcome))
        if tool in EXEMPT or identical + 1 < self.t.warn_at:
            return result
        return (
            f"{result}\n[runtime] Warning: you made this exact {tool} call {identical + 1} "
            "times and got the same result each time. Do not repeat it; change approach."
        )
