"""The event bus: lazy events, bounded subscribers that learn what they missed."""

from __future__ import annotations

from pathlib import Path

import pytest

from legion.events import EventBus
from legion.store import Store, committed, connect

pytestmark = pytest.mark.anyio


async def test_emit_builds_events_only_for_listeners() -> None:
    bus = EventBus()
    built: list[int] = []

    def build() -> int:
        built.append(1)
        return len(built)

    bus.emit(build)
    assert built == []
    async with bus.subscribe() as sub:
        bus.emit(build)
        assert built == [1] and await sub.get() == 1


async def test_a_slow_subscriber_is_told_how_much_it_missed() -> None:
    bus = EventBus(queue_size=2)
    async with bus.subscribe() as sub:
        for n in range(5):
            bus.publish(n)
        assert [await sub.get(), await sub.get()] == [0, 1]
        bus.publish(5)
        lagged = await sub.get()
        assert lagged.type == "events_lagged" and lagged.missed == 3
        assert await sub.get() == 5


def test_a_commit_without_fsync_restores_full_sync(home: Path) -> None:
    """On a bare connection (a Store commits by group commit instead, issue 10)."""
    Store(home / "host.db").close()
    db = connect(home / "host.db", durability="full")
    conn = db.connection()
    with committed(conn, fsync=False):
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        conn.execute("INSERT INTO claims(key, owner, expires_at) VALUES ('k', 'a', 1)")
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again
    with committed(conn, fsync=True):
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert conn.execute("SELECT owner FROM claims").fetchone()[0] == "a"
    db.close()
