"""Durable inboxes, direct messages and topic pub/sub.

Every agent has an inbox in host.db. A direct message puts one item in one
inbox; publishing to a topic puts one item in the inbox of every subscriber
whose pattern matches (all of them or, if any inbox is full, none). Delivery is
at-least-once: a poll hides the items it hands out for the visibility timeout;
an item not acked by then, or by a host restart, is handed out again.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from legion.errors import BadRequest, InboxFull
from legion.events import EventBus
from legion.mesh.globs import compile_glob
from legion.store import Store
from legion.wire import rules
from legion.wire.api import InboxItem
from legion.wire.events import InboxQueued


def check_topic(topic: str, *, pattern: bool = False) -> None:
    """A topic to publish to, or (`pattern`) a topic glob to subscribe to; the rules are
    `legion.wire.rules.topic_problem` and `glob_problem`, which the request models state."""
    problem = rules.glob_problem(topic) if pattern else rules.topic_problem(topic)
    if problem is not None:
        raise BadRequest(problem, code="invalid_topic")


class Inboxes:
    def __init__(
        self,
        store: Store,
        bus: EventBus,
        *,
        max_items: int,
        visibility_timeout_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.bus = bus
        self.max_items = max_items
        self.visibility_timeout_s = visibility_timeout_s
        self.clock = clock
        # Long polls waiting for their agent's next item, oldest first. A waiter's result
        # is the items handed to it, [] (dropped: return empty) or None (look again).
        self._parked: dict[str, list[asyncio.Future[list[InboxItem] | None]]] = {}
        self._depth: dict[str, int] = {}
        for agent, count in store.execute("SELECT agent, COUNT(*) FROM inbox GROUP BY agent"):
            self._depth[agent] = int(count)
        self._subs: dict[str, set[str]] = {}
        for agent, topic in store.execute("SELECT agent, topic FROM subscriptions"):
            self._subs.setdefault(agent, set()).add(topic)

    def recover(self) -> int:
        """After a (re)start nobody holds anything: make every unacked item visible now."""
        now = self.clock()
        with self.store.tx() as conn:
            conn.execute("UPDATE inbox SET visible_at = ? WHERE visible_at > ?", (now, now))
            return int(conn.changes())

    def release(self, agent: str) -> int:
        """`agent` restarted: what it had taken but not acked is visible to it again now."""
        now = self.clock()
        with self.store.tx(durable=False) as conn:
            conn.execute(
                "UPDATE inbox SET visible_at = ? WHERE agent = ? AND visible_at > ?",
                (now, agent, now),
            )
            return int(conn.changes())

    def purge(self, agent: str) -> int:
        """Delete `agent`'s inbox and subscriptions (the agent was removed with --purge)."""
        with self.store.tx() as conn:
            conn.execute("DELETE FROM subscriptions WHERE agent = ?", (agent,))
            conn.execute("DELETE FROM inbox WHERE agent = ?", (agent,))
            removed = int(conn.changes())
        self._subs.pop(agent, None)
        self._depth.pop(agent, None)
        return removed

    def depth(self, agent: str) -> int:
        return self._depth.get(agent, 0)

    # --- subscriptions --------------------------------------------------------

    def subscribe(self, agent: str, topic: str) -> list[str]:
        check_topic(topic, pattern=True)
        with self.store.tx() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO subscriptions(agent, topic, created_at) VALUES (?,?,?)",
                (agent, topic, self.clock()),
            )
        self._subs.setdefault(agent, set()).add(topic)
        return self.subscriptions(agent)

    def unsubscribe(self, agent: str, topic: str) -> list[str]:
        with self.store.tx() as conn:
            conn.execute("DELETE FROM subscriptions WHERE agent = ? AND topic = ?", (agent, topic))
        self._subs.get(agent, set()).discard(topic)
        return self.subscriptions(agent)

    def subscriptions(self, agent: str) -> list[str]:
        return sorted(self._subs.get(agent, set()))

    def subscribers(self, topic: str) -> list[str]:
        return sorted(
            agent
            for agent, patterns in self._subs.items()
            if any(compile_glob(p).fullmatch(topic) for p in patterns)
        )

    # --- enqueue --------------------------------------------------------------

    def _enqueue(
        self,
        recipients: Iterable[str],
        kind: str,
        topic: str | None,
        sender: str,
        payload: Any,
    ) -> dict[str, int]:
        recipients = list(recipients)
        full = [a for a in recipients if self.depth(a) >= self.max_items]
        if full:
            raise InboxFull(
                f"inbox of {', '.join(full)} is full ({self.max_items} unacked items); nothing "
                "was delivered. The recipient must ack items, or the operator can raise "
                "[host] inbox_max_items",
                full=full,
                limit=self.max_items,
            )
        try:
            text = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"payload is not JSON: {exc}", code="invalid_payload") from None
        now = self.clock()
        ids: dict[str, int] = {}
        handoff: dict[str, asyncio.Future[list[InboxItem] | None]] = {}
        hidden_until = now + self.visibility_timeout_s
        with self.store.tx() as conn:
            for agent in recipients:
                waiter = self._parked_poll(agent)
                # A poll is parked (so nothing else is visible): hand the item straight to
                # it, committed as handed out, with no second transaction and no query.
                conn.execute(
                    "INSERT INTO inbox(agent, kind, topic, sender, payload, created_at,"
                    " visible_at, deliveries) VALUES (?,?,?,?,?,?,?,?)",
                    (
                        agent,
                        kind,
                        topic,
                        sender,
                        text,
                        now,
                        hidden_until if waiter else now,
                        1 if waiter else 0,
                    ),
                )
                ids[agent] = int(conn.last_insert_rowid())
                if waiter is not None:
                    handoff[agent] = waiter
        for agent, item_id in ids.items():
            self._depth[agent] = self.depth(agent) + 1
            waiter = handoff.get(agent)
            if waiter is not None:
                self._parked[agent].remove(waiter)
                waiter.set_result(
                    [
                        InboxItem(
                            id=item_id,
                            kind=kind,
                            topic=topic,
                            sender=sender,
                            payload=json.loads(text),
                            created_at=now,
                            deliveries=1,
                        )
                    ]
                )
            self.bus.publish(
                InboxQueued(
                    at=now,
                    agent=agent,
                    item_id=item_id,
                    kind=kind,
                    topic=topic,
                    sender=sender,
                )
            )
        return ids

    def _parked_poll(self, agent: str) -> asyncio.Future[list[InboxItem] | None] | None:
        for waiter in self._parked.get(agent, ()):
            if not waiter.done():
                return waiter
        return None

    def drop_parked(self, agent: str) -> int:
        """End every parked poll of `agent` empty-handed (its container was stopped or is
        being replaced): no item is ever handed to a poll of a container that is gone."""
        dropped = 0
        for waiter in self._parked.pop(agent, []):
            if not waiter.done():
                waiter.set_result([])
                dropped += 1
        return dropped

    def requeue(self, agent: str, items: list[InboxItem]) -> None:
        """Items handed to a poll whose client went away before they reached it: visible
        again at once, as if never handed out, and offered to the next parked poll."""
        if not items:
            return
        now = self.clock()
        with self.store.tx(durable=False) as conn:
            conn.executemany(
                "UPDATE inbox SET visible_at = ?, deliveries = MAX(deliveries - 1, 0)"
                " WHERE id = ? AND agent = ?",
                [(now, item.id, agent) for item in items],
            )
        waiter = self._parked_poll(agent)
        if waiter is not None:
            self._parked[agent].remove(waiter)
            waiter.set_result(None)  # it looks again and takes them

    def send(self, sender: str, to: str, payload: Any) -> int:
        return self._enqueue([to], "message", None, sender, payload)[to]

    def steer(self, sender: str, to: str, payload: Any) -> int:
        """Queue a steer item (legion.automation.lanes): handed out by a normal poll, or
        out of order between two tool rounds of a running turn."""
        return self._enqueue([to], "steer", None, sender, payload)[to]

    def publish(
        self, sender: str, topic: str, payload: Any, deliver: Callable[[str], bool] | None = None
    ) -> list[str]:
        """Queue `payload` for each subscriber of `topic` (not the sender) that `deliver` allows."""
        check_topic(topic)
        recipients = [
            a for a in self.subscribers(topic) if a != sender and (deliver is None or deliver(a))
        ]
        self._enqueue(recipients, "topic", topic, sender, payload)
        return recipients

    # --- receive --------------------------------------------------------------

    def _take(self, agent: str, max_items: int) -> list[InboxItem]:
        now = self.clock()
        rows = list(
            self.store.execute(
                "SELECT id, kind, topic, sender, payload, created_at, deliveries FROM inbox "
                "WHERE agent = ? AND visible_at <= ? ORDER BY id LIMIT ?",
                (agent, now, max_items),
            )
        )
        if not rows:
            return []
        hidden_until = now + self.visibility_timeout_s
        # Not fsynced: after a crash every hidden item is made visible again anyway.
        with self.store.tx(durable=False) as conn:
            conn.executemany(
                "UPDATE inbox SET visible_at = ?, deliveries = deliveries + 1 WHERE id = ?",
                [(hidden_until, r[0]) for r in rows],
            )
        return [
            InboxItem(
                id=r[0],
                kind=r[1],
                topic=r[2],
                sender=r[3],
                payload=json.loads(r[4]),
                created_at=r[5],
                deliveries=r[6] + 1,
            )
            for r in rows
        ]

    async def poll(self, agent: str, max_items: int, wait_s: float) -> list[InboxItem]:
        """Hand out up to `max_items` visible items, waiting up to `wait_s` for the first."""
        deadline = time.monotonic() + wait_s
        while True:
            items = self._take(agent, max_items)
            if items:
                return items
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            # Hidden items become visible again without a publish: look again by then.
            row = self.store.execute(
                "SELECT MIN(visible_at) FROM inbox WHERE agent = ?", (agent,)
            ).fetchone()
            if row and row[0] is not None:
                remaining = min(remaining, max(0.0, row[0] - self.clock()) + 0.001)
            loop = asyncio.get_running_loop()
            waiter: asyncio.Future[list[InboxItem] | None] = loop.create_future()
            parked = self._parked.setdefault(agent, [])
            parked.append(waiter)
            try:
                await asyncio.wait({waiter}, timeout=remaining)
            except asyncio.CancelledError:
                # The poll's client went away (or the host is stopping). Items handed to
                # it in the meantime never reach anyone: give them back now, not after
                # the visibility timeout.
                if waiter.done() and not waiter.cancelled():
                    self.requeue(agent, waiter.result() or [])
                raise
            finally:
                if not waiter.done():
                    waiter.cancel()
                if waiter in parked:
                    parked.remove(waiter)
            if waiter.cancelled():
                continue  # timed out: look once more, then return empty
            result = waiter.result()
            if result is not None:
                return result

    def sender_of(self, agent: str, item_id: int) -> tuple[str, str] | None:
        """(sender, kind) of item `item_id` of `agent`'s inbox (None once it is acked)."""
        row = self.store.execute(
            "SELECT sender, kind FROM inbox WHERE id = ? AND agent = ?", (item_id, agent)
        ).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def ack(self, agent: str, ids: list[int]) -> int:
        """Delete acked items of `agent`'s own inbox; ids of other inboxes are ignored."""
        # Not fsynced: an ack lost to a power cut only means a redelivery (at-least-once).
        with self.store.tx(durable=False) as conn:
            before = conn.total_changes()
            conn.executemany(
                "DELETE FROM inbox WHERE id = ? AND agent = ?", [(i, agent) for i in ids]
            )
            removed = int(conn.total_changes() - before)
        self._depth[agent] = max(0, self.depth(agent) - removed)
        return removed
