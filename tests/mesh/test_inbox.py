"""Inboxes, messages and pub/sub: durable, at-least-once, never silently dropped."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from legion.config import parse_config
from legion.host import Host
from legion.mesh import audit
from legion.paths import Paths
from tests.conftest import agent_client, control_client

pytestmark = pytest.mark.anyio

CONFIG = """
[host]
inbox_max_items = 3
visibility_timeout_s = 0.3

[agents.pub]
[agents.pub.permissions]
can_publish = ["news/**"]
can_message = ["sub1", "sub2"]

[agents.sub1]
[agents.sub1.permissions]
can_subscribe = ["news/**"]

[agents.sub2]
[agents.sub2.permissions]
can_subscribe = ["news/tech"]

[agents.nosy]
[agents.nosy.permissions]
can_subscribe = ["news/*"]
"""


async def test_message_long_poll_ack_and_sender_stamped(home: Path) -> None:
    paths = Paths.resolve(home)
    async with (
        Host.running(parse_config(CONFIG), paths),
        agent_client(paths, "pub") as pub,
        agent_client(paths, "sub1") as sub1,
    ):
        waiting = asyncio.create_task(sub1.post("/v1/inbox/poll", json={"wait_s": 5}))
        await asyncio.sleep(0.05)
        sent = await pub.post(
            "/v1/messages",
            json={"to": "sub1", "payload": {"hello": 1}, "sender": "sub2", "from": "sub2"},
        )
        # unknown body fields are refused: nothing an agent sends can name a sender
        assert sent.status_code == 422
        sent = await pub.post("/v1/messages", json={"to": "sub1", "payload": {"hello": 1}})
        assert sent.status_code == 200
        started = time.monotonic()
        items = (await waiting).json()["items"]
        assert time.monotonic() - started < 1
        assert [(i["sender"], i["kind"], i["payload"]) for i in items] == [
            ("pub", "message", {"hello": 1})
        ]
        acked = await sub1.post("/v1/inbox/ack", json={"ids": [items[0]["id"]]})
        assert acked.json() == {"acked": 1}
        again = await sub1.post("/v1/inbox/poll", json={"wait_s": 0.5})
        assert again.json()["items"] == []


async def test_unacked_items_redelivered_after_visibility_timeout(home: Path) -> None:
    paths = Paths.resolve(home)
    async with (
        Host.running(parse_config(CONFIG), paths),
        agent_client(paths, "pub") as pub,
        agent_client(paths, "sub1") as sub1,
    ):
        await pub.post("/v1/messages", json={"to": "sub1", "payload": "x"})
        first = (await sub1.post("/v1/inbox/poll", json={})).json()["items"]
        assert first[0]["deliveries"] == 1
        hidden = (await sub1.post("/v1/inbox/poll", json={})).json()["items"]
        assert hidden == []
        # the long poll notices the item becoming visible again by itself
        second = (await sub1.post("/v1/inbox/poll", json={"wait_s": 3})).json()["items"]
        assert second[0]["id"] == first[0]["id"] and second[0]["deliveries"] == 2


async def test_unacked_items_redelivered_after_host_restart(home: Path) -> None:
    paths = Paths.resolve(home)
    config = parse_config(
        CONFIG.replace("visibility_timeout_s = 0.3", "visibility_timeout_s = 600")
    )
    async with (
        Host.running(config, paths),
        agent_client(paths, "pub") as pub,
        agent_client(paths, "sub1") as sub1,
    ):
        await pub.post("/v1/messages", json={"to": "sub1", "payload": 1})
        await pub.post("/v1/messages", json={"to": "sub1", "payload": 2})
        taken = (await sub1.post("/v1/inbox/poll", json={"max_items": 1})).json()["items"]
        assert [i["payload"] for i in taken] == [1]
    async with Host.running(config, paths), agent_client(paths, "sub1") as sub1:
        items = (await sub1.post("/v1/inbox/poll", json={})).json()["items"]
        assert [i["payload"] for i in items] == [1, 2]


async def test_publish_fans_out_to_permitted_subscribers_only(home: Path) -> None:
    paths = Paths.resolve(home)
    async with (
        Host.running(parse_config(CONFIG), paths),
        agent_client(paths, "pub") as pub,
        agent_client(paths, "sub1") as sub1,
        agent_client(paths, "sub2") as sub2,
        agent_client(paths, "nosy") as nosy,
    ):
        assert (await sub1.post("/v1/subscriptions", json={"topic": "news/**"})).is_success
        assert (await sub2.post("/v1/subscriptions", json={"topic": "news/tech"})).is_success
        denied = await sub2.post("/v1/subscriptions", json={"topic": "news/sport"})
        assert denied.status_code == 403
        # `news/*` as a pattern is allowed for nosy, but it cannot widen its own grant
        assert (await nosy.post("/v1/subscriptions", json={"topic": "news/*"})).is_success
        result = await pub.post("/v1/publish", json={"topic": "news/tech", "payload": "t"})
        assert result.json()["delivered_to"] == ["nosy", "sub1", "sub2"]
        deep = await pub.post("/v1/publish", json={"topic": "news/tech/ai", "payload": "d"})
        assert deep.json()["delivered_to"] == ["sub1"]
        items = (await sub1.post("/v1/inbox/poll", json={})).json()["items"]
        assert [(i["topic"], i["sender"], i["kind"]) for i in items] == [
            ("news/tech", "pub", "topic"),
            ("news/tech/ai", "pub", "topic"),
        ]
        subs = (await sub1.get("/v1/subscriptions")).json()
        assert subs == {"topics": ["news/**"]}


async def test_full_inbox_refuses_publish_whole_and_audits_it(home: Path) -> None:
    paths = Paths.resolve(home)
    async with (
        Host.running(parse_config(CONFIG), paths) as host,
        agent_client(paths, "pub") as pub,
        agent_client(paths, "sub1") as sub1,
        agent_client(paths, "sub2") as sub2,
    ):
        await sub1.post("/v1/subscriptions", json={"topic": "news/**"})
        await sub2.post("/v1/subscriptions", json={"topic": "news/tech"})
        for i in range(3):
            assert (await pub.post("/v1/messages", json={"to": "sub1", "payload": i})).is_success
        refused = await pub.post("/v1/publish", json={"topic": "news/tech", "payload": "x"})
        assert refused.status_code == 507
        error = refused.json()["error"]
        assert error["code"] == "inbox_full" and error["detail"]["full"] == ["sub1"]
        assert "sub1" in error["message"]
        # all or nothing: sub2 got nothing either
        assert (await sub2.post("/v1/inbox/poll", json={})).json()["items"] == []
        message = await pub.post("/v1/messages", json={"to": "sub1", "payload": "more"})
        assert message.status_code == 507
        records = audit.query(host.store.conn, actor="pub")
        refusals = [r for r in records if r.action == "publish.refused"]
        assert (
            refusals and refusals[0].decision == "deny" and refusals[0].detail["full"] == ["sub1"]
        )
        # acking makes room again
        ids = [i["id"] for i in (await sub1.post("/v1/inbox/poll", json={})).json()["items"]]
        await sub1.post("/v1/inbox/ack", json={"ids": ids})
        assert (
            await pub.post("/v1/publish", json={"topic": "news/tech", "payload": "y"})
        ).is_success


async def test_ack_cannot_touch_another_agents_inbox(home: Path) -> None:
    paths = Paths.resolve(home)
    async with (
        Host.running(parse_config(CONFIG), paths),
        agent_client(paths, "pub") as pub,
        agent_client(paths, "sub1") as sub1,
        agent_client(paths, "sub2") as sub2,
    ):
        queued = (await pub.post("/v1/messages", json={"to": "sub1", "payload": 1})).json()
        assert (await sub2.post("/v1/inbox/ack", json={"ids": [queued["item_id"]]})).json() == {
            "acked": 0
        }
        items = (await sub1.post("/v1/inbox/poll", json={})).json()["items"]
        assert [i["id"] for i in items] == [queued["item_id"]]


async def test_message_permission_and_unknown_agent(home: Path) -> None:
    paths = Paths.resolve(home)
    async with (
        Host.running(parse_config(CONFIG), paths),
        agent_client(paths, "sub1") as sub1,
        agent_client(paths, "pub") as pub,
        control_client(paths) as operator,
    ):
        denied = await sub1.post("/v1/messages", json={"to": "pub", "payload": 1})
        assert denied.status_code == 403
        missing = await operator.post("/v1/messages", json={"to": "ghost", "payload": 1})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_agent"
        bad_topic = await pub.post("/v1/publish", json={"topic": "news/../x", "payload": 1})
        assert bad_topic.status_code == 422  # issue 15: the model states the topic rule
        from_operator = await operator.post("/v1/messages", json={"to": "pub", "payload": "hi"})
        assert from_operator.is_success
        items = (await pub.post("/v1/inbox/poll", json={})).json()["items"]
        assert items[0]["sender"] == "operator"


async def test_a_poll_can_carry_the_acks_of_the_previous_batch(home: Path) -> None:
    paths = Paths.resolve(home)
    async with (
        Host.running(parse_config(CONFIG), paths) as host,
        agent_client(paths, "pub") as pub,
        agent_client(paths, "sub1") as sub1,
    ):
        for n in (1, 2):
            await pub.post("/v1/messages", json={"to": "sub1", "payload": n})
        first = (await sub1.post("/v1/inbox/poll", json={"max_items": 1})).json()["items"]
        second = await sub1.post("/v1/inbox/poll", json={"max_items": 1, "ack": [first[0]["id"]]})
        assert [i["payload"] for i in second.json()["items"]] == [2]
        assert host.inboxes.depth("sub1") == 1


async def test_a_subscriber_cannot_reply_into_the_publishers_inbox(home: Path) -> None:
    """Regression (security review of issue 4): a reply goes into an inbox only when the
    asker sent a direct message; a topic item's publisher never gets one."""
    paths = Paths.resolve(home)
    async with (
        Host.running(parse_config(CONFIG), paths) as host,
        agent_client(paths, "pub") as pub,
        agent_client(paths, "sub1") as sub1,
    ):
        await sub1.post("/v1/subscriptions", json={"topic": "news/**"})
        await pub.post("/v1/publish", json={"topic": "news/x", "payload": 1})
        item = (await sub1.post("/v1/inbox/poll", json={})).json()["items"][0]
        result = (
            await sub1.post("/v1/replies", json={"in_reply_to": item["id"], "text": "spam"})
        ).json()
        assert result["delivered_to"] is None and host.inboxes.depth("pub") == 0
        await pub.post("/v1/messages", json={"to": "sub1", "payload": "question"})
        asked = next(
            i
            for i in (await sub1.post("/v1/inbox/poll", json={})).json()["items"]
            if i["kind"] == "message"
        )
        answered = (
            await sub1.post("/v1/replies", json={"in_reply_to": asked["id"], "text": "answer"})
        ).json()
        assert answered["delivered_to"] == "pub" and host.inboxes.depth("pub") == 1


async def test_agent_patterns_are_bounded(home: Path) -> None:
    """Regression (security review): `**a**a...b` used to take seconds per match."""
    import time as _time

    paths = Paths.resolve(home)
    async with (
        Host.running(parse_config(CONFIG), paths) as host,
        agent_client(paths, "sub1") as sub1,
        agent_client(paths, "pub") as pub,
    ):
        three = await sub1.post("/v1/subscriptions", json={"topic": "news/*/*/*"})
        assert three.status_code == 422 and "at most 2" in three.json()["error"]["message"]
        attack = "news/" + "**a" * 10 + "**b"
        assert (await sub1.post("/v1/subscriptions", json={"topic": attack})).is_success
        started = _time.monotonic()
        await pub.post("/v1/publish", json={"topic": "news/" + "a" * 200, "payload": 1})
        watched = await sub1.post("/v1/blackboard/watch", json={"pattern": attack, "cursor": 0})
        assert watched.status_code == 200
        assert _time.monotonic() - started < 1.0
        assert host is not None
