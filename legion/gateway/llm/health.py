"""Per-model health and cooldowns, which steer failover.

Schedule (documented in docs/llm.md, "Cooldowns"):

* rate limits (429), server errors (5xx, connection failures) and timeouts put the model
  in a cooldown of 1 s after the first failed attempt, then 2, 4, 8 ... seconds for each
  further failed attempt, capped at 300 s (or the provider's Retry-After, when longer);
* attempts that overlap in time fail once: a failure counts (climbs the ladder) only when
  its attempt began after the last counted failure. Ten calls in flight when the provider
  goes away are one failure, not ten; an attempt made after the cooldown that fails again
  is the next rung. An overlapping failure may still lengthen the current cooldown to its
  Retry-After;
* authentication (401, 403) and billing (402) errors take it out for an hour, overlapping
  or not;
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
    failures: int = 0  # counted (non-overlapping) failed attempts since the last success
    cooldown_until: float = 0.0
    last_reason: str = ""
    counted_at: float = float("-inf")  # when the last counted failure was recorded


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

    def failure(
        self,
        alias: str,
        kind: str,
        retry_after: float | None = None,
        *,
        attempt_started: float | None = None,
    ) -> float:
        """Record the failure of an attempt that began at `attempt_started` (this clock;
        None: now); returns the cooldown left on the model, in seconds."""
        state = self.states.setdefault(alias, ModelState())
        now = self.clock()
        began = now if attempt_started is None else attempt_started
        state.last_reason = kind
        if kind in HARD:
            state.failures += 1
            state.counted_at = now
            state.cooldown_until = max(state.cooldown_until, now + HARD_FAILURE_S)
            return state.cooldown_until - now
        if kind not in TRANSIENT:
            return 0.0
        if began > state.counted_at:  # a new attempt, not one in flight with the last
            state.failures += 1
            state.counted_at = now
            cooldown = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (state.failures - 1))
            state.cooldown_until = max(state.cooldown_until, now + cooldown)
        if retry_after is not None:
            wanted = now + min(BACKOFF_MAX_S, retry_after)
            state.cooldown_until = max(state.cooldown_until, wanted)
        return max(0.0, state.cooldown_until - now)

    def success(self, alias: str) -> None:
        self.states.pop(alias, None)
