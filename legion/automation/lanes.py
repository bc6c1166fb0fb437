"""Lanes: each agent handles its inbox in order; a steer message jumps the queue.

A steer is an inbox item of kind `steer` (only the host makes them: `POST /v1/steer` by
the operator, or by an agent with `can_steer` on the target). It is durable and acked
like any item. An idle runtime gets it from its normal poll, as a turn of its own; a busy
one takes it between two tool rounds of the running turn (`POST /v1/steer/take`, which
hands out only steer items, out of order) and acks it with the turn's item. A steer that
finds no tool round left is handled next, before the rest of the lane.

Queue depth (items waiting, items in progress, steers waiting) is in `legion status`
and, when it changes, a `queue_depth` event (sampled once a second, never per item).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from legion.wire.api import InboxItem
from legion.wire.events import QueueDepth, SteerTaken

if TYPE_CHECKING:
    from legion.host import Host


class Lanes:
    def __init__(self, host: Host) -> None:
        self.host = host
        self._seen: dict[str, tuple[int, int, int]] = {}
        self._depth_seen: dict[str, int] = {}

    def steer(self, sender: str, to: str, text: str) -> int:
        from legion.api.agent import require_agent

        require_agent(self.host, to)
        item = self.host.inboxes.steer(sender, to, {"steer": text})
        self.sample_one(to)
        return item

    def take(self, agent: str, max_items: int = 10) -> list[InboxItem]:
        """Hand out `agent`'s waiting steer items (oldest first), hidden for the
        visibility timeout like any polled item."""
        inboxes = self.host.inboxes
        now = inboxes.clock()
        with self.host.store.tx(durable=False) as conn:
            rows = list(
                conn.execute(
                    "UPDATE inbox SET visible_at = ?, deliveries = deliveries + 1 WHERE id IN"
                    " (SELECT id FROM inbox WHERE agent = ? AND kind = 'steer' AND visible_at <= ?"
                    " ORDER BY id LIMIT ?) RETURNING id, kind, topic, sender, payload, created_at,"
                    " deliveries",
                    (now + inboxes.visibility_timeout_s, agent, now, max_items),
                )
            )
        rows.sort(key=lambda r: int(r[0]))
        items = [
            InboxItem(
                id=r[0],
                kind=r[1],
                topic=r[2],
                sender=r[3],
                payload=json.loads(r[4]),
                created_at=r[5],
                deliveries=r[6],
            )
            for r in rows
        ]
        for item in items:
            self.host.bus.publish(
                SteerTaken(at=now, agent=agent, item_id=item.id, sender=item.sender)
            )
        return items

    def depth(self, agent: str) -> tuple[int, int, int]:
        """(waiting, in progress, steers waiting) of `agent`'s lane."""
        if self.host.inboxes.depth(agent) == 0:
            return 0, 0, 0
        now = self.host.inboxes.clock()
        row = self.host.store.execute(
            "SELECT COALESCE(SUM(visible_at <= ?), 0), COALESCE(SUM(visible_at > ?), 0),"
            " COALESCE(SUM(kind = 'steer' AND visible_at <= ?), 0) FROM inbox WHERE agent = ?",
            (now, now, now, agent),
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])

    def sample_one(self, agent: str) -> None:
        depth = self.depth(agent)
        self._depth_seen[agent] = self.host.inboxes.depth(agent)
        if self._seen.get(agent) == depth:
            return
        self._seen[agent] = depth
        self.host.bus.publish(
            QueueDepth(
                at=self.host.clock(),
                agent=agent,
                waiting=depth[0],
                in_progress=depth[1],
                steers=depth[2],
            )
        )

    def sample(self) -> None:
        """Emit `queue_depth` for each agent whose inbox changed since the last sample (a
        cheap check of the in-memory depth first; the counts only when it moved)."""
        for agent in self.host.config.agents:
            depth = self.host.inboxes.depth(agent)
            if depth != self._depth_seen.get(agent) or depth:
                self.sample_one(agent)
