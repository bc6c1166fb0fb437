"""Invariant 2: identity is the socket. Forged names in headers, body or path change nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from legion.config import parse_config
from legion.host import Host
from legion.mesh import audit
from legion.paths import Paths
from tests.conftest import agent_client

pytestmark = pytest.mark.anyio

CONFIG = """
[agents.alice]
[agents.alice.permissions]
blackboard_read = ["shared/**"]
blackboard_write = ["shared/alice/**"]
can_message = ["bob"]

[agents.bob]
[agents.bob.permissions]
blackboard_read = ["**"]
blackboard_write = ["**"]
can_message = ["alice"]
"""

FORGED_HEADERS = {
    "X-Agent": "bob",
    "X-Legion-Agent": "bob",
    "X-Forwarded-User": "bob",
    "Authorization": "Bearer bob",
    "From": "bob",
    "Cookie": "agent=bob",
}


async def test_forged_headers_body_and_path_act_as_the_socket_owner(home: Path) -> None:
    paths = Paths.resolve(home)
    async with (
        Host.running(parse_config(CONFIG), paths) as host,
        agent_client(paths, "alice") as alice,
        agent_client(paths, "bob") as bob,
    ):
        who = await alice.get("/v1/whoami", headers=FORGED_HEADERS, params={"agent": "bob"})
        assert who.json()["agent"] == "alice"

        # bob may write anywhere; alice only under shared/alice/. Forging bob does not help.
        forged = await alice.put(
            "/v1/blackboard/entries/shared/bob/x",
            json={"value": 1},
            headers=FORGED_HEADERS,
            params={"agent": "bob", "as": "bob"},
        )
        assert forged.status_code == 403
        assert "alice may not" in forged.json()["error"]["message"]

        # body fields naming another agent are refused outright (strict bodies) ...
        smuggled = await alice.put(
            "/v1/blackboard/entries/shared/alice/x",
            json={"value": 1, "writer": "bob", "agent": "bob"},
            headers=FORGED_HEADERS,
        )
        assert smuggled.status_code == 422
        # ... and a legitimate write is stamped with the socket's owner
        written = await alice.put(
            "/v1/blackboard/entries/shared/alice/x", json={"value": 1}, headers=FORGED_HEADERS
        )
        assert written.json()["writer"] == "alice"

        # a path that names bob is just a key; the writer is still alice
        sent = await alice.post(
            "/v1/messages?sender=bob", json={"to": "bob", "payload": "hi"}, headers=FORGED_HEADERS
        )
        assert sent.is_success
        got = (await bob.post("/v1/inbox/poll", json={})).json()["items"]
        assert [i["sender"] for i in got] == ["alice"]

        # polling "bob's" inbox from alice's socket polls alice's own (empty) inbox
        await bob.post("/v1/messages", json={"to": "alice", "payload": "for alice"})
        await alice.post("/v1/messages", json={"to": "bob", "payload": "for bob"})
        polled = await alice.post(
            "/v1/inbox/poll?agent=bob", json={"max_items": 10}, headers=FORGED_HEADERS
        )
        assert [i["payload"] for i in polled.json()["items"]] == ["for alice"]

        # every audit record of alice's requests names alice, never bob
        records = audit.query(host.store.conn)
        alice_targets = {r.target for r in records if r.actor == "alice"}
        assert "shared/bob/x" in alice_targets
        assert not any(r.actor == "bob" and r.target == "shared/bob/x" for r in records)


async def test_each_agent_has_its_own_socket_and_nothing_else_is_served(home: Path) -> None:
    paths = Paths.resolve(home)
    async with Host.running(parse_config(CONFIG), paths):
        for name in ("alice", "bob"):
            sock = paths.agent_socket(name)
            assert sock.is_socket()
            assert sock.parent == paths.run / "agents" / name
            assert sock.stat().st_mode & 0o777 == 0o600
            async with agent_client(paths, name) as client:
                assert (await client.get("/v1/whoami")).json()["agent"] == name
        # the operator routes are not on agent sockets
        async with agent_client(paths, "alice") as alice:
            assert (await alice.post("/v1/stop")).status_code == 404
            assert (await alice.get("/v1/status")).status_code == 404
