"""The host's in-process event bus.

Producers call `publish(event)` synchronously; each subscriber owns a bounded
queue. A subscriber that falls behind is not allowed to grow memory without
bound: its overflow is counted and delivered as one `EventsLagged` event, so a
consumer always knows when it missed something.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from legion.wire.events import EventsLagged


class Subscription:
    def __init__(self, maxsize: int) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize)
        self.missed = 0

    def offer(self, event: Any) -> None:
        if self.missed:
            if self.queue.full():
                self.missed += 1
                return
            self.queue.put_nowait(EventsLagged(at=time.time(), missed=self.missed))
            self.missed = 0
        if self.queue.full():
            self.missed += 1
            return
        self.queue.put_nowait(event)

    async def get(self) -> Any:
        return await self.queue.get()


class EventBus:
    def __init__(self, queue_size: int = 10000) -> None:
        self.queue_size = queue_size
        self._subs: set[Subscription] = set()

    def publish(self, event: Any) -> None:
        for sub in self._subs:
            sub.offer(event)

    def emit(self, build: Callable[[], Any]) -> None:
        """Publish the event `build()` makes, building it only if someone listens (for
        events on hot paths: one per request, one per streamed token)."""
        if self._subs:
            self.publish(build())

    def open(self) -> Subscription:
        """Subscribe now (events from this moment on are kept); pair with `close`."""
        sub = Subscription(self.queue_size)
        self._subs.add(sub)
        return sub

    def close(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscription]:
        sub = self.open()
        try:
            yield sub
        finally:
            self.close(sub)

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)
