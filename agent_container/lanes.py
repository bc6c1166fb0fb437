"""Steering: messages that reach a running turn between two tool rounds.

The host queues a steer as an inbox item of kind `steer`. Between two tool rounds the
turn takes every steer waiting, from the items this runtime already polled and from the
host (`POST /v1/steer/take`), and reads them as user messages before its next model call.
They are acked with the item of the turn they went into, so a turn cut short by a lost
host brings them back with it. A steer that came while no tool round was left is
handled next, ahead of the rest of the lane.
"""

from __future__ import annotations

import contextlib
from collections import deque
from typing import TYPE_CHECKING, Any

from agent_container.client import MeshClient, MeshError

if TYPE_CHECKING:
    from legion.wire.api import InboxItem


def steer_text(item: InboxItem) -> str:
    payload = item.payload
    said = payload.get("steer") if isinstance(payload, dict) else payload
    who = "the operator" if item.sender == "operator" else f"agent {item.sender}"
    return f"[runtime] {who} steers you while you work (read it before going on): {said}"


class SteerLane:
    def __init__(self, mesh: MeshClient, backlog: deque[InboxItem]) -> None:
        self.mesh = mesh
        self.backlog = backlog
        self._taken: list[int] = []

    async def take(self) -> list[dict[str, Any]]:
        """The steers waiting now, as user messages for the running turn."""
        mine = [i for i in list(self.backlog)[1:] if i.kind == "steer"]
        for item in mine:
            self.backlog.remove(item)
        with contextlib.suppress(MeshError):
            mine += await self._fetch()
        self._taken += [i.id for i in mine]
        return [{"role": "user", "content": steer_text(i)} for i in mine]

    async def _fetch(self) -> list[InboxItem]:
        from legion.wire.api import PollResponse

        return PollResponse.model_validate(await self.mesh.call("POST", "/v1/steer/take")).items

    def taken(self) -> list[int]:
        """The steer items that went into the turn just ended (to ack with it)."""
        ids, self._taken = self._taken, []
        return ids

    async def promote(self) -> None:
        """Between two items: steers (polled or still on the host) go first."""
        steers = [i for i in self.backlog if i.kind == "steer"]
        with contextlib.suppress(MeshError):
            steers += await self._fetch()
        if not steers:
            return
        rest = [i for i in self.backlog if i.kind != "steer"]
        self.backlog.clear()
        self.backlog.extend([*steers, *rest])
