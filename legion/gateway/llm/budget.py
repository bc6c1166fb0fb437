"""Budgets: money is reserved before it is spent (invariant 5).

Before a call is dispatched, its worst-case cost is reserved against the agent's daily
and monthly caps and the fleet's daily cap. Reservations are persisted, so a host crash
cannot forget money that may have been spent: at the next start, an unsettled
reservation is settled at its full amount. After the call, the reservation is settled to
the actual cost in the ledger (aborted and failed calls too). Windows are UTC days and
UTC calendar months.

All bookkeeping runs on the event-loop thread, so a check and its reservation are atomic
with respect to every other call: concurrent calls can never take spend past a cap.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from legion.config import Config
from legion.errors import LegionError
from legion.gateway.llm.carve import Carves
from legion.store import Store


class BudgetExceeded(LegionError):
    status = 402
    code = "budget_exceeded"


@dataclass
class Reservation:
    id: str
    agent: str
    model: str
    provider_model: str
    request_id: str
    amount: float
    day: str
    month: str
    created_at: float


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


def day_key(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def month_key(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m")


def window_start(ts: float, window: str) -> float:
    moment = datetime.fromtimestamp(ts, UTC)
    if window == "day":
        moment = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        moment = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return moment.timestamp()


class Budgets:
    def __init__(
        self, store: Store, config: Config, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        # spent[(agent, window_key)] and reserved[(agent, window_key)]; agent "*" = fleet.
        self.spent: dict[tuple[str, str], float] = defaultdict(float)
        self.reserved: dict[tuple[str, str], float] = defaultdict(float)
        self.open: dict[str, Reservation] = {}
        # Sub-agents' budgets, carved out of their parents' (legion.gateway.llm.carve).
        self.carve = Carves(store, self, clock)
        self._recover()
        self._load()

    def _recover(self) -> None:
        """Settle reservations left by a crash at their full (worst-case) amount."""
        rows = list(
            self.store.execute(
                "SELECT id, agent, model, provider_model, request_id, amount_usd, created_at "
                "FROM reservations"
            )
        )
        if not rows:
            return
        with self.store.tx() as conn:
            for rid, agent, model, provider_model, request_id, amount, created in rows:
                conn.execute(
                    "INSERT INTO ledger(ts, agent, model, provider_model, request_id, kind,"
                    " prompt_tokens, completion_tokens, cost_usd, reserved_usd, status)"
                    " VALUES (?,?,?,?,?,'chat',0,0,?,?,'unsettled_at_crash')",
                    (created, agent, model, provider_model, request_id, amount, amount),
                )
                conn.execute("DELETE FROM reservations WHERE id = ?", (rid,))

    def _load(self) -> None:
        now = self.clock()
        since = window_start(now, "month")
        for agent, ts, cost in self.store.execute(
            "SELECT agent, ts, cost_usd FROM ledger WHERE ts >= ?", (since,)
        ):
            self._add(self.spent, agent, ts, cost)

    def _add(
        self, table: dict[tuple[str, str], float], agent: str, ts: float, amount: float
    ) -> None:
        d, m = day_key(ts), month_key(ts)
        for scope in self.carve.scopes(agent):  # a sub-agent's counts for its parent too
            table[(scope, d)] += amount
            table[(scope, m)] += amount
        table[("*", d)] += amount

    # --- the check --------------------------------------------------------------

    def caps(self, agent: str) -> list[tuple[str, str, float]]:
        """(scope, window, cap) triples that apply to `agent`."""
        out: list[tuple[str, str, float]] = []
        budget = self.config.agents[agent].budget if agent in self.config.agents else None
        if budget is not None and budget.daily_usd is not None:
            out.append((agent, "day", budget.daily_usd))
        if budget is not None and budget.monthly_usd is not None:
            out.append((agent, "month", budget.monthly_usd))
        if self.config.llm.fleet_daily_usd is not None:
            out.append(("*", "day", self.config.llm.fleet_daily_usd))
        return out

    def remaining(self, agent: str) -> dict[str, float | None]:
        now = self.clock()
        keys = {"day": day_key(now), "month": month_key(now)}
        result: dict[str, float | None] = {"daily": None, "monthly": None, "fleet_daily": None}
        for scope, window, cap in self.caps(agent):
            key = (scope, keys[window])
            left = cap - self.spent[key] - self.reserved[key] - self.carve.held(scope, agent)
            name = "fleet_daily" if scope == "*" else ("daily" if window == "day" else "monthly")
            result[name] = max(0.0, left)
        if agent in self.carve.open:  # a sub-agent: what is left of its carve
            result["daily"] = result["monthly"] = self.carve.remainder(agent)
        return result

    def reserve(
        self, agent: str, model: str, provider_model: str, request_id: str, amount: float
    ) -> Reservation:
        """Hold `amount` USD against every cap of `agent`, or raise BudgetExceeded (402)."""
        now = self.clock()
        d, m = day_key(now), month_key(now)
        keys = {"day": d, "month": m}
        self.carve.check(agent, amount)  # a sub-agent: within what was carved for it
        for scope, window, cap in self.caps(agent):
            key = (scope, keys[window])
            left = cap - self.spent[key] - self.reserved[key] - self.carve.held(scope, agent)
            # A spend already over the cap (a call booked beyond its reservation) leaves
            # `left` negative: then every call is refused, a free one (amount 0) too.
            if amount > left + 1e-12:
                what = "fleet" if scope == "*" else agent
                name = (
                    f"{'fleet ' if scope == '*' else ''}{'daily' if window == 'day' else 'monthly'}"
                )
                state = (
                    f"is overspent by ${-left:.6f} (a call was booked beyond its reservation; "
                    "see `legion audit`, action llm.over_reservation)"
                    if left < 0
                    else f"has ${left:.6f} left"
                )
                raise BudgetExceeded(
                    f"{what}'s {name} budget of ${cap:.4f} {state}; this call needs up to "
                    f"${amount:.6f} (prompt plus max_tokens at {model}'s prices). Lower "
                    "max_tokens, wait for the window to reset, or raise the cap",
                    window=name.replace(" ", "_"),
                    scope=what,
                    cap_usd=cap,
                    remaining_usd=max(0.0, left),
                    needed_usd=amount,
                )
        reservation = Reservation(
            uuid.uuid4().hex, agent, model, provider_model, request_id, amount, d, m, now
        )
        with self.store.tx() as conn:
            conn.execute(
                "INSERT INTO reservations(id, agent, model, provider_model, request_id,"
                " amount_usd, created_at) VALUES (?,?,?,?,?,?,?)",
                (reservation.id, agent, model, provider_model, request_id, amount, now),
            )
        self._hold(reservation, amount)
        self.open[reservation.id] = reservation
        return reservation

    def _hold(self, r: Reservation, amount: float) -> None:
        for scope in self.carve.scopes(r.agent):
            self.reserved[(scope, r.day)] += amount
            self.reserved[(scope, r.month)] += amount
        self.reserved[("*", r.day)] += amount

    def settle(
        self,
        reservation: Reservation,
        usage: Usage,
        *,
        status: str,
        kind: str = "chat",
        latency_ms: float | None = None,
        ttft_ms: float | None = None,
    ) -> None:
        """Replace the reservation by the actual cost in the ledger (one transaction).
        Should the write fail, the reservation stays open (and held) for a later settle."""
        if reservation.id not in self.open:
            return  # already settled
        now = self.clock()
        # Not fsynced: the reservation it replaces was. If a power cut drops this commit, the
        # next start books the reservation in full: spend is over-counted, never under.
        with self.store.tx(durable=False) as conn:
            conn.execute("DELETE FROM reservations WHERE id = ?", (reservation.id,))
            conn.execute(
                "INSERT INTO ledger(ts, agent, model, provider_model, request_id, kind,"
                " prompt_tokens, completion_tokens, cost_usd, reserved_usd, status, latency_ms,"
                " ttft_ms) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    now,
                    reservation.agent,
                    reservation.model,
                    reservation.provider_model,
                    reservation.request_id,
                    kind,
                    usage.prompt_tokens,
                    usage.completion_tokens,
                    usage.cost_usd,
                    reservation.amount,
                    status,
                    latency_ms,
                    ttft_ms,
                ),
            )
        del self.open[reservation.id]
        self._hold(reservation, -reservation.amount)
        # Spend is booked in the window the money was reserved in.
        self._add(self.spent, reservation.agent, reservation.created_at, usage.cost_usd)

    def spent_today(self, agent: str) -> float:
        return self.spent[(agent, day_key(self.clock()))]

    def spent_month(self, agent: str) -> float:
        return self.spent[(agent, month_key(self.clock()))]
