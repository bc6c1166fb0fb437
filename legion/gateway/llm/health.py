"""Per-model health and cooldowns, which steer failover.

Schedule (documented in docs/llm.md):

* rate limits (429), server errors (5xx, connection failures) and timeouts put the model
  in a cooldown of 1 s after the first consecutive failure, then 2, 4, 8 ... seconds,
  capped at 300 s (or the provider's Retry-After, when longer);
* authentication (401, 403) and billing (402) errors take it out for an hour;
* a success resets the count.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

BACKOFF_BASE_S = 1.0
BACKOFF_MAX_S = 300.0
HARD_FAILURE_S = 3600.0
TRANSIENT = frozenset({"rate_limit", "server", "timeout"})
HARD = frozenset({"auth", "billing"})


@dataclass
class ModelState:
    failures: int = 0
    cooldown_until: float = 0.0
    last_reason: str = ""


class ModelHealth:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.states: dict[str, ModelState] = {}

    def available(self, alias: str) -> bool:
        state = self.states.get(alias)
        return state is None or state.cooldown_until <= self.clock()

    def cooldown_left(self, alias: str) -> float:
        state = self.states.get(alias)
        return 0.0 if state is None else max(0.0, state.cooldown_until - self.clock())

    def failure(self, alias: str, kind: str, retry_after: float | None = None) -> float:
        """Record a failure; returns the cooldown it started, in seconds."""
        state = self.states.setdefault(alias, ModelState())
        state.failures += 1
        state.last_reason = kind
        if kind in HARD:
            cooldown = HARD_FAILURE_S
        elif kind in TRANSIENT:
            cooldown = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (state.failures - 1))
            if retry_after is not None:
                cooldown = min(BACKOFF_MAX_S, max(cooldown, retry_after))
        else:
            return 0.0
        state.cooldown_until = self.clock() + cooldown
        return cooldown

    def success(self, alias: str) -> None:
        self.states.pop(alias, None)
