"""Budgets carved out for sub-agents: a parent's money, lent to a child, never more.

When an agent spawns a sub-agent with a budget B (legion.fleet.spawn), B is *carved* out
of the parent: admitted only if every cap of the parent (its daily and monthly caps, and
the fleet's daily cap) still has B left, then held against them. From then on:

* the child may reserve only from its carve: a call is refused (402) once its lifetime
  spend plus what it holds in reservations would pass B;
* the child's reservations and spend also count as the parent's, in the parent's own
  windows (`scopes`), and stay there: a sub-agent's spend is its parent's spend;
* what the child has not used yet (B minus its spend and reservations, the remainder) is
  held against every cap of the parent, in whatever window is current, so the parent's
  own calls and further spawns see it as spent (`held`);
* when the child ends (result, TTL, stop, host restart), its carve closes: the unspent
  remainder goes back to the parent at once.

So at any moment, in any window, the parent's spend, its reservations, its children's
spend and reservations and their remainders add up to at most the parent's cap: parent
plus children can never overspend it, whatever calls and spawns run concurrently (all
bookkeeping runs on the event loop, each check and hold without an await between them).

Carves are rows of `carves` in host.db (created here, `IF NOT EXISTS`): which parent each
child belonged to must survive a restart, since the child's ledger rows keep counting
for the parent. Open carves left by a crash are closed at the next start
(legion.fleet.spawn recovers them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from legion.store import Store

if TYPE_CHECKING:
    from legion.gateway.llm.budget import Budgets

KEEP_ENDED_S = 70 * 86400
DDL = """
CREATE TABLE IF NOT EXISTS carves (
    child TEXT PRIMARY KEY,
    parent TEXT NOT NULL,
    budget_usd REAL NOT NULL,
    created_at REAL NOT NULL,
    ended_at REAL,
    reason TEXT
);
"""


@dataclass
class Carve:
    child: str
    parent: str
    budget: float
    created_at: float


def _days(start: float, end: float) -> list[str]:
    """The UTC day keys from `start` to `end` (a sub-agent lives a day at most)."""
    day = datetime.fromtimestamp(start, UTC).date()
    last = datetime.fromtimestamp(max(start, end), UTC).date()
    out: list[str] = []
    while day <= last and len(out) < 400:
        out.append(day.strftime("%Y-%m-%d"))
        day += timedelta(days=1)
    return out


class Carves:
    def __init__(self, store: Store, budgets: Budgets, clock: Callable[[], float]) -> None:
        self.store = store
        self.budgets = budgets
        self.clock = clock
        with store.tx() as conn:
            conn.execute(DDL)
            # Ended more than two months ago: no ledger window the budgets load holds it.
            conn.execute(
                "DELETE FROM carves WHERE ended_at IS NOT NULL AND ended_at < ?",
                (clock() - KEEP_ENDED_S,),
            )
        self.parent_of: dict[str, str] = {}
        self.open: dict[str, Carve] = {}
        for child, parent, budget, created, ended in store.execute(
            "SELECT child, parent, budget_usd, created_at, ended_at FROM carves"
        ):
            self.parent_of[child] = parent
            if ended is None:
                self.open[child] = Carve(child, parent, budget, created)

    # --- what Budgets asks -----------------------------------------------------------------

    def scopes(self, agent: str) -> tuple[str, ...]:
        """Whose windows `agent`'s spend and reservations count in: its own, and its
        parent's when it is (or was) a sub-agent."""
        parent = self.parent_of.get(agent)
        return (agent,) if parent is None else (agent, parent)

    def used(self, child: str) -> float:
        """A child's lifetime spend plus its open reservations."""
        carve = self.open.get(child)
        if carve is None:
            return 0.0
        b = self.budgets
        return sum(
            b.spent.get((child, day), 0.0) + b.reserved.get((child, day), 0.0)
            for day in _days(carve.created_at, self.clock())
        )

    def remainder(self, child: str) -> float:
        carve = self.open.get(child)
        return 0.0 if carve is None else max(0.0, carve.budget - self.used(child))

    def held(self, scope: str, exclude: str | None = None) -> float:
        """The unspent remainders held against `scope` ("*": the fleet), but `exclude`'s."""
        return sum(
            self.remainder(c.child)
            for c in self.open.values()
            if c.child != exclude and (scope == "*" or c.parent == scope)
        )

    def check(self, agent: str, amount: float) -> None:
        """Refuse a sub-agent's call its carve cannot hold (BudgetExceeded, 402)."""
        carve = self.open.get(agent)
        if carve is None:
            if agent in self.parent_of:
                from legion.gateway.llm.budget import BudgetExceeded

                raise BudgetExceeded(
                    f"{agent} has ended; its budget went back to {self.parent_of[agent]}",
                    window="lifetime",
                    scope=agent,
                    cap_usd=0.0,
                    remaining_usd=0.0,
                    needed_usd=amount,
                )
            return
        left = carve.budget - self.used(agent)
        if amount > left + 1e-12:
            from legion.gateway.llm.budget import BudgetExceeded

            raise BudgetExceeded(
                f"{agent}'s budget of ${carve.budget:.4f} (carved out of {carve.parent}'s) has "
                f"${max(0.0, left):.6f} left; this call needs up to ${amount:.6f}. Lower "
                "max_tokens, or finish the task with what you have",
                window="lifetime",
                scope=agent,
                cap_usd=carve.budget,
                remaining_usd=max(0.0, left),
                needed_usd=amount,
            )

    # --- what the spawner does -------------------------------------------------------------

    def open_for(self, child: str, parent: str, budget: float) -> Carve:
        """Carve `budget` out of `parent` for `child`, or raise BudgetExceeded (402)."""
        from legion.gateway.llm.budget import BudgetExceeded, day_key, month_key

        now = self.clock()
        keys = {"day": day_key(now), "month": month_key(now)}
        b = self.budgets
        for scope, window, cap in b.caps(parent):
            key = (scope, keys[window])
            left = cap - b.spent[key] - b.reserved[key] - self.held(scope, parent)
            if budget > left + 1e-12:
                what = "the fleet's" if scope == "*" else f"{parent}'s"
                name = "daily" if window == "day" else "monthly"
                raise BudgetExceeded(
                    f"{what} {name} budget of ${cap:.4f} has ${max(0.0, left):.6f} left; a "
                    f"sub-agent with ${budget:.4f} does not fit. Ask for less (budget_usd), or "
                    "wait for running sub-agents to finish",
                    window=("fleet_" if scope == "*" else "") + name,
                    scope="fleet" if scope == "*" else parent,
                    cap_usd=cap,
                    remaining_usd=max(0.0, left),
                    needed_usd=budget,
                )
        with self.store.tx() as conn:
            conn.execute(
                "INSERT INTO carves(child, parent, budget_usd, created_at) VALUES (?,?,?,?)",
                (child, parent, budget, now),
            )
        carve = Carve(child, parent, budget, now)
        self.parent_of[child] = parent
        self.open[child] = carve
        return carve

    def close(self, child: str, reason: str) -> float:
        """End a child's carve; returns what it spent (the rest went back to its parent)."""
        used = self.used(child)
        carve = self.open.pop(child, None)
        if carve is None:
            return used
        with self.store.tx() as conn:
            conn.execute(
                "UPDATE carves SET ended_at = ?, reason = ? WHERE child = ?",
                (self.clock(), reason[:500], child),
            )
        return used
