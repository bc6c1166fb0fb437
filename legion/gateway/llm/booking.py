"""Booking a call: what it cost, and the anomaly of a call booked beyond its worst case.

The ledger holds what the provider reported, as reported; a local count stands in only for
what it did not report, and never above the worst case reserved (the provider was held to
max_tokens, and the prompt bound is a true bound of what it was sent). A settled cost above
its reservation, or reported tokens above the bound or max_tokens, is audited
(`llm.over_reservation`), evented (`OverReservation`) and logged, once per call. The agent's
next call is then refused by `Budgets.reserve` for as long as its spend is over any cap.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

from legion.events import EventBus
from legion.gateway.llm.budget import Budgets, Reservation, Usage
from legion.gateway.llm.chain import Hop
from legion.mesh.audit import AuditLog
from legion.wire.events import OverReservation

log = logging.getLogger("legion.gateway")


# The largest token count booked: a lying upstream's 2**64 must not overflow the ledger.
MAX_TOKENS = 2**53 - 1


def _reported(value: Any) -> int | None:
    """A token count as the provider reported it (an integral float too), or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        value = math.ceil(value)
    return min(value, MAX_TOKENS) if value >= 0 else None


class Produced:
    """The text a reply generated (content, reasoning, refusal, tool arguments), kept for a
    local count of its usage, up to `cap` bytes (`bound.reply_text_cap`): past the cap the
    reply is longer than its max_tokens by any tokenizer, so no more of it is kept (the
    host's memory and the count's CPU time stay bounded whatever a provider sends)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.size = 0
        self._parts: list[str] = []

    def add(self, text: str) -> None:
        self.size += len(text.encode("utf-8", errors="surrogatepass"))
        if self.size <= self.cap:
            self._parts.append(text)

    @property
    def over(self) -> bool:
        return self.size > self.cap

    def text(self) -> str:
        return "".join(self._parts)


def usage_of(
    litellm: Any,
    hop: Hop,
    messages: list[dict[str, Any]],
    reported: Any,
    produced: str,
    over: bool = False,
) -> Usage:
    """The usage to book: the provider's figures, or a local count for what it left out
    (`over`: the text passed its cap, so it holds more than max_tokens tokens)."""
    if isinstance(reported, dict):
        prompt = _reported(reported.get("prompt_tokens"))
        completion = _reported(reported.get("completion_tokens"))
    else:
        prompt = _reported(getattr(reported, "prompt_tokens", None))
        completion = _reported(getattr(reported, "completion_tokens", None))
    if prompt is None:
        try:
            counted = int(litellm.token_counter(model=hop.model.model, messages=messages))
        except Exception:
            counted = hop.prompt_bound
        prompt = min(counted, hop.prompt_bound)
    if completion is None and over:
        completion = hop.max_tokens
    if completion is None:
        try:
            counted = int(litellm.token_counter(model=hop.model.model, text=produced))
        except Exception:
            counted = len(produced.encode())
        completion = min(counted, hop.max_tokens)
    return Usage(prompt, completion, hop.price.cost(prompt, completion))


class Booker:
    def __init__(
        self, budgets: Budgets, audit: AuditLog, bus: EventBus, clock: Callable[[], float]
    ) -> None:
        self.budgets = budgets
        self.audit = audit
        self.bus = bus
        self.clock = clock

    def book(
        self,
        hop: Hop,
        reservation: Reservation,
        usage: Usage,
        *,
        status: str,
        kind: str = "chat",
        latency_ms: float | None = None,
        ttft_ms: float | None = None,
    ) -> None:
        """Settle `reservation` to `usage`; treat a call booked beyond its worst case as
        the anomaly it is."""
        self.budgets.settle(
            reservation, usage, status=status, kind=kind, latency_ms=latency_ms, ttft_ms=ttft_ms
        )
        beyond = [
            what
            for what, exceeded in (
                ("cost above the reservation", usage.cost_usd > reservation.amount + 1e-12),
                ("prompt tokens above the prompt bound", usage.prompt_tokens > hop.prompt_bound),
                ("completion tokens above max_tokens", usage.completion_tokens > hop.max_tokens),
            )
            if exceeded
        ]
        if beyond:
            self._anomaly(hop, reservation, usage, status, "; ".join(beyond))

    def _anomaly(self, hop: Hop, r: Reservation, usage: Usage, status: str, reason: str) -> None:
        fields: dict[str, Any] = {
            "request_id": r.request_id,
            "reserved_usd": r.amount,
            "cost_usd": usage.cost_usd,
            "over_usd": max(0.0, usage.cost_usd - r.amount),
            "prompt_tokens": usage.prompt_tokens,
            "prompt_bound": hop.prompt_bound,
            "completion_tokens": usage.completion_tokens,
            "max_tokens": hop.max_tokens,
            "status": status,
            "reason": reason,
        }
        self.audit.append(r.agent, "llm.over_reservation", hop.alias, "allow", **fields)
        self.bus.publish(OverReservation(at=self.clock(), agent=r.agent, model=hop.alias, **fields))
        log.warning(
            "a model call was booked beyond its reservation (%s): the provider reported more "
            "than the gateway's worst case (a bound too low, a price change, or a lying "
            "upstream); the agent's calls are refused while its spend is over a cap",
            reason,
            extra={"fields": {"agent": r.agent, "model": hop.alias, **fields}},
        )
