"""Remote MCP servers (issue 14): a streamable-HTTP server built with the `mcp` SDK on
loopback, reached through the host with a vault credential that never reaches the agent.

Everything runs for real: the host, its sockets, the vault, the SDK's client in the host
and its server in a thread.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from legion.config import parse_config
from legion.gateway.vault import Vault
from legion.host import Host
from legion.mesh import audit
from legion.paths import Paths
from tests.conftest import agent_client, control_client
from tests.fakes.mcp_servers import HttpMcp, http_mcp

pytestmark = pytest.mark.anyio

TOKEN = "tok-remote-mcp-credential-4Kq9Zw2Lx"


def config(server: HttpMcp, *, allow: bool = True, credential: str = "gh", extra: str = "") -> str:
    allow_line = f'allow = ["127.0.0.1:{server.port}"]' if allow else "allow = []"
    return f"""
[egress]
{allow_line}

[mcp.gh]
url = "{server.url}"
credential = "{credential}"
timeout_s = 3.0

[agents.alice.permissions]
allowed_mcp = ["gh"]

[agents.bob]
{extra}
"""


@asynccontextmanager
async def host_with(home: Path, text: str, *, bind: str = "127.0.0.1") -> AsyncIterator[Host]:
    paths = Paths.resolve(home)
    paths.home.mkdir(parents=True, exist_ok=True)
    vault = Vault(paths.vault_db, paths.vault_key)
    vault.set("gh", TOKEN, tier="agent", bound_hosts=[bind], allow_http=True)
    vault.close()
    async with Host.running(parse_config(text), paths) as host:
        yield host


async def until_state(host: Host, state: str, server: str = "gh", timeout_s: float = 20) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        found = host.mcp.servers.get(server)
        if found is not None and found.state == state:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{server} never became {state}: {found and found.info()}")
        await asyncio.sleep(0.02)


async def test_an_allowed_agent_sees_and_calls_remote_tools_with_the_hosts_credential(
    home: Path,
) -> None:
    """issue 14: remote MCP through the host; the credential never reaches the agent."""
    with http_mcp(TOKEN) as server:
        async with host_with(home, config(server)) as host:
            await until_state(host, "ready")
            async with agent_client(host.paths, "alice") as alice:
                listed = (await alice.get("/v1/mcp/servers")).json()["servers"]
                assert [s["name"] for s in listed] == ["gh"]
                tools = {t["name"]: t for t in listed[0]["tools"]}
                assert {"gh__echo", "gh__add", "gh__whoami", "gh__slow"} <= set(tools)
                # a third-party description: marked, stripped of controls and invisibles, capped
                evil = tools["gh__add"]["description"]
                assert evil.startswith("[third-party tool of MCP server 'gh'")
                assert not any(c in evil for c in "\x1b\x07\u202e\u202c\u200b\ufeff")
                assert len(evil) <= 1024 + 200
                assert tools["gh__add"]["input_schema"]["type"] == "object"

                echoed = await alice.post(
                    "/v1/mcp/call",
                    json={"server": "gh", "tool": "echo", "arguments": {"text": "hello"}},
                )
                assert echoed.status_code == 200, echoed.text
                assert echoed.json() == {
                    "text": "echo: hello",
                    "is_error": False,
                    "truncated": False,
                }
                # the server echoes the Authorization header: the agent gets it masked
                who = await alice.post(
                    "/v1/mcp/call", json={"server": "gh", "tool": "whoami", "arguments": {}}
                )
                assert who.status_code == 200
                assert TOKEN not in who.text and "[REDACTED]" in who.text
                self_view = (await alice.get("/v1/self")).json()
                assert self_view["mcp_remote"] == ["gh"]
                assert TOKEN not in json.dumps(self_view)
            # the server did receive the credential, as the configured header
            assert f"Bearer {TOKEN}" in server.seen_auth
            assert server.calls == ["echo:hello"]
            actions = [
                (r.actor, r.action, r.decision) for r in audit.query(host.store.conn, limit=100000)
            ]
            assert ("alice", "mcp.call", "allow") in actions
            assert ("alice", "mcp.result", "allow") in actions


async def test_an_agent_without_allowed_mcp_sees_nothing_and_is_refused_and_audited(
    home: Path,
) -> None:
    with http_mcp(TOKEN) as server:
        async with host_with(home, config(server)) as host:
            await until_state(host, "ready")
            async with agent_client(host.paths, "bob") as bob:
                assert (await bob.get("/v1/mcp/servers")).json() == {"servers": []}
                refused = await bob.post(
                    "/v1/mcp/call",
                    json={"server": "gh", "tool": "echo", "arguments": {"text": "x"}},
                )
                assert refused.status_code == 403
                assert refused.json()["error"]["code"] == "permission_denied"
                assert "allowed_mcp" in refused.json()["error"]["message"]
                assert (await bob.get("/v1/self")).json()["mcp_remote"] == []
            assert server.calls == []
            denied = [
                r for r in audit.query(host.store.conn, limit=100000) if r.action == "mcp.call"
            ]
            assert [(r.actor, r.decision) for r in denied] == [("bob", "deny")]


async def test_the_address_policy_applies_to_remote_servers(home: Path) -> None:
    """A loopback server without its HOST:PORT in [egress] allow is never connected."""
    with http_mcp(TOKEN) as server:
        async with host_with(home, config(server, allow=False)) as host:
            found = await until_state(host, "restarting")
            assert "egress address policy" in found.reason and "[egress] allow" in found.reason
            async with agent_client(host.paths, "alice") as alice:
                unavailable = await alice.post(
                    "/v1/mcp/call", json={"server": "gh", "tool": "echo", "arguments": {}}
                )
                assert unavailable.status_code == 503
                assert unavailable.json()["error"]["code"] == "mcp_unavailable"
            assert server.seen_auth == []  # nothing was sent


async def test_a_credential_not_bound_to_the_servers_host_is_never_sent(home: Path) -> None:
    with http_mcp(TOKEN) as server:
        async with host_with(home, config(server), bind="elsewhere.example") as host:
            found = await until_state(host, "restarting")
            assert "cannot be sent to 127.0.0.1" in found.reason
            assert "--bind 127.0.0.1" in found.reason
            assert server.seen_auth == []


async def test_a_wrong_credential_is_refused_by_the_server_and_reported(home: Path) -> None:
    with http_mcp("a-different-token-value-8Hx2") as server:
        async with host_with(home, config(server)) as host:
            found = await until_state(host, "restarting")
            assert TOKEN not in found.reason
            assert f"Bearer {TOKEN}" in server.seen_auth


async def test_slow_and_failing_tools_come_back_as_typed_errors(home: Path) -> None:
    with http_mcp(TOKEN) as server:
        async with host_with(home, config(server)) as host:
            await until_state(host, "ready")
            async with agent_client(host.paths, "alice") as alice:
                slow = await alice.post(
                    "/v1/mcp/call",
                    json={"server": "gh", "tool": "slow", "arguments": {"seconds": 30}},
                )
                assert slow.status_code == 504 and slow.json()["error"]["code"] == "mcp_timeout"
                failed = await alice.post(
                    "/v1/mcp/call", json={"server": "gh", "tool": "fail", "arguments": {}}
                )
                assert failed.status_code == 200 and failed.json()["is_error"] is True
                unknown = await alice.post(
                    "/v1/mcp/call", json={"server": "gh", "tool": "nope", "arguments": {}}
                )
                assert unknown.status_code == 404
                bad = await alice.post(
                    "/v1/mcp/call", json={"server": "GH!", "tool": "x", "arguments": {}}
                )
                assert bad.status_code == 422


async def test_a_server_that_goes_away_is_reconnected_and_its_tools_come_back(home: Path) -> None:
    """issue 14: a lost remote server is `restarting`, its tools unavailable, until it is
    back; then the host reconnects by itself."""
    with http_mcp(TOKEN) as first:
        port, text = first.port, config(first)
    async with host_with(home, text) as host:
        with http_mcp(TOKEN, port=port):
            await until_state(host, "ready")
        # the server is gone: the next call fails and the session is marked for reconnection
        async with agent_client(host.paths, "alice") as alice:
            call = {"server": "gh", "tool": "echo", "arguments": {"text": "x"}}
            failed = await alice.post("/v1/mcp/call", json=call)
            assert failed.status_code in (502, 504), failed.text
            found = await until_state(host, "restarting")
            assert "retrying in" in found.reason
            meanwhile = await alice.post("/v1/mcp/call", json=call)
            assert meanwhile.status_code == 503
            assert (await alice.get("/v1/mcp/servers")).json()["servers"][0]["tools"] == []
            with http_mcp(TOKEN, port=port) as second:
                await until_state(host, "ready", timeout_s=30)
                back = await alice.post("/v1/mcp/call", json=call)
                assert back.status_code == 200 and back.json()["text"] == "echo: x"
                assert second.calls == ["echo:x"]
            assert host.mcp.servers["gh"].restarts >= 1


async def test_an_idle_session_whose_server_went_away_is_noticed_by_its_ping(home: Path) -> None:
    with http_mcp(TOKEN) as first:
        port, text = first.port, config(first)
    async with host_with(home, text) as host:
        host.mcp.ping_every_s = 0.2
        with http_mcp(TOKEN, port=port):
            await until_state(host, "ready")
        found = await until_state(host, "restarting")  # no call was made
        assert found.reason


async def test_legion_mcp_ls_shows_remote_servers_with_their_agents(home: Path) -> None:
    with http_mcp(TOKEN) as server:
        async with host_with(home, config(server)) as host:
            await until_state(host, "ready")
            async with control_client(host.paths) as operator:
                listing = (await operator.get("/v1/mcp")).json()["servers"]
                assert [(s["name"], s["kind"], s["state"], s["agents"]) for s in listing] == [
                    ("gh", "remote", "ready", ["alice"])
                ]
                assert (await operator.get("/v1/mcp", params={"agent": "bob"})).json() == {
                    "servers": []
                }
                missing = await operator.get("/v1/mcp", params={"agent": "carol"})
                assert missing.status_code == 404
            assert TOKEN not in json.dumps(listing)


def test_tool_listings_are_cleaned_and_bounded() -> None:
    """issue 14: what a server lists is third-party input: names that cannot be
    namespaced, duplicates, unusable schemas and floods are dropped, with why."""
    from legion.wire.mcp import TOOLS_PER_SERVER, tools_of

    listed: list[object] = [
        {"name": "ok", "description": "fine", "inputSchema": {"type": "object"}},
        {"name": "ok", "description": "again", "inputSchema": {"type": "object"}},
        {"name": "has space", "inputSchema": {"type": "object"}},
        {"name": "x" * 70, "inputSchema": {"type": "object"}},
        {
            "name": "sneaky",
            "inputSchema": {"type": "object", "properties": {"a\u202eb": {"type": "string"}}},
        },
        {"name": "deep", "inputSchema": {"type": "object", "properties": _deep(40)}},
        {"name": "huge", "inputSchema": {"type": "object", "enum": ["x" * 100] * 300}},
        {"name": "notobject", "inputSchema": {"type": "string"}},
        "not a dict",
    ]
    listed += [{"name": f"t{i}", "inputSchema": {"type": "object"}} for i in range(100)]
    tools, dropped = tools_of("srv", listed)
    names = [t.name for t in tools]
    assert names[0] == "srv__ok" and names.count("srv__ok") == 1
    assert "srv__notobject" in names  # its schema replaced by an empty object schema
    assert len(tools) == TOOLS_PER_SERVER
    text = " | ".join(dropped)
    for why in (
        "listed twice",
        "not a usable tool name",
        "not plain text",
        "deeper than 32",
        "over 16384 bytes",
        f"over {TOOLS_PER_SERVER} tools",
    ):
        assert why in text, why


def _deep(levels: int) -> dict[str, object]:
    node: dict[str, object] = {"type": "string"}
    for _ in range(levels):
        node = {"p": {"type": "object", "properties": node}}
    return node
