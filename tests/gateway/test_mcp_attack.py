"""issue 7 (adversarial pass): one agent must not cut the others off a remote MCP server
they share (invariant 10)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.conftest import agent_client
from tests.fakes.mcp_servers import http_mcp
from tests.gateway.test_mcp_remote import TOKEN, config, host_with, until_state

pytestmark = pytest.mark.anyio

SHARED = '[agents.bob.permissions]\nallowed_mcp = ["gh"]\n'


async def test_issue_7_arguments_a_tool_echoes_cannot_cut_the_others_off_a_shared_server(
    home: Path,
) -> None:
    """issue 7 (adversarial pass): alice called `echo` with 1 MiB of text; the answer, one
    SSE event over the client's 1 MiB limit, made the host's session with the server fail,
    and bob's next call was refused (503, restarting) until it reconnected, with backoff
    (so alice could keep bob off it). Arguments are capped at 256 KiB (422, typed); bob's
    call goes through."""
    with http_mcp(TOKEN) as server:
        async with host_with(home, config(server, extra=SHARED)) as host:
            await until_state(host, "ready")
            async with (
                agent_client(host.paths, "alice") as alice,
                agent_client(host.paths, "bob") as bob,
            ):
                text = "x" * (1024 * 1024 - 200)
                body = {"server": "gh", "tool": "echo", "arguments": {"text": text}}
                refused = await alice.post("/v1/mcp/call", json=body)
                assert refused.status_code == 422, refused.text[-300:]
                assert "at most 262144 are sent" in refused.text
                body = {"server": "gh", "tool": "add", "arguments": {"a": 1, "b": 2}}
                added = await bob.post("/v1/mcp/call", json=body)
                assert added.status_code == 200, added.text[-300:]
                assert added.json()["text"] == "3"


async def test_issue_7_an_oversized_answer_fails_only_its_own_call(home: Path) -> None:
    """issue 7 (adversarial pass, left open then): an answer over the MCP client's 1 MiB SSE
    event limit failed the host's whole session with that server: a tool that amplifies
    its input let one agent cut the others off until the session reconnected. A failed
    call's stream reconnects the session only when the session stops answering a ping."""
    with http_mcp(TOKEN) as server:
        async with host_with(home, config(server, extra=SHARED)) as host:
            await until_state(host, "ready")
            async with (
                agent_client(host.paths, "alice") as alice,
                agent_client(host.paths, "bob") as bob,
            ):
                big = {"server": "gh", "tool": "big", "arguments": {"size": 2 << 20}}
                add = {"server": "gh", "tool": "add", "arguments": {"a": 1, "b": 2}}
                for _ in range(3):  # alone, and beside bob's calls in flight
                    failed, *others = await asyncio.gather(
                        alice.post("/v1/mcp/call", json=big),
                        *(bob.post("/v1/mcp/call", json=add) for _ in range(3)),
                    )
                    assert failed.status_code == 502
                    assert "SSE" in failed.json()["error"]["message"]
                    assert [r.status_code for r in others] == [200, 200, 200]
                assert (await bob.post("/v1/mcp/call", json=add)).json()["text"] == "3"
            gh = host.mcp.servers["gh"]
            assert (gh.state, gh.restarts) == ("ready", 0)  # never reconnected
