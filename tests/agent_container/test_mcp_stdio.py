"""Local (stdio) MCP servers run by the agent runtime (issue 14), in-process against a real
host and the fake provider, with a real MCP server built with the SDK
(`tests/fakes/mcp_stdio.py`). The same in a real container, with `mcp-server-time`, is in
tests/fleet/test_docker_extend.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.agent_container.harness import ask, config_text, running_fleet, tool_results, until
from tests.conftest import control_client
from tests.fakes.provider import FakeProvider, Reply, ToolCall

pytestmark = pytest.mark.anyio

SERVER = Path(__file__).resolve().parent.parent / "fakes" / "mcp_stdio.py"


def with_server(base_url: str, marker: Path, *extra_args: str, env: str = "") -> str:
    args = json.dumps([str(SERVER), "--marker", str(marker), *extra_args])
    return (
        config_text(base_url)
        + f"""
[agents.alice.mcp.kit]
command = "{sys.executable}"
args = {args}
env = {{ KIT_MODE = "test"{env} }}
call_timeout_s = 10.0
"""
    )


def starts(marker: Path) -> int:
    return len(marker.read_text().splitlines()) if marker.exists() else 0


async def test_a_local_server_s_tools_are_namespaced_and_called(home: Path) -> None:
    """issue 14: stdio MCP tools are offered as <server>__<tool>, descriptions cleaned."""
    marker = home / "starts"
    async with (
        FakeProvider() as fake,
        running_fleet(home, with_server(fake.base_url, marker)) as fleet,
    ):
        hub = fleet.runtimes["alice"].mcp
        assert await until(lambda: "kit" in hub.local and hub.local["kit"].state == "ready", 30)
        fake.script(
            Reply(tool_calls=[ToolCall("kit__echo", {"text": "hi"})]),
            Reply(tool_calls=[ToolCall("kit__env", {"names": ["KIT_MODE", "LEGION_SOCKET"]})]),
            Reply(content="done"),
        )
        reply = await ask(fleet.host, {"text": "use the kit"})
        assert reply.text == "done"
        results = tool_results(fake.requests[2].body["messages"])
        assert "echo: hi" in results[0] and "third-party data" in results[0]
        # the operator's env, and nothing of the runtime's (no socket path, no secrets)
        assert "KIT_MODE=test" in results[1] and "LEGION_SOCKET=(unset)" in results[1]
        tools = {t["function"]["name"]: t["function"] for t in fake.requests[0].body["tools"]}
        assert {"kit__echo", "kit__crash", "kit__env", "kit__add"} <= set(tools)
        assert "kit__bad.name" not in tools  # not a usable function name: not offered
        evil = tools["kit__add"]["description"]
        assert evil.startswith("[third-party tool of MCP server 'kit'")
        assert not any(c in evil for c in "\x1b\x07\u202e\u200b\ufeff")
        assert len(evil) < 1300
        assert tools["kit__echo"]["parameters"]["properties"]["text"]["type"] == "string"
        assert "kit__echo" in fake.requests[0].body["messages"][0]["content"]  # prompt's list
        assert starts(marker) == 1


async def test_a_crashed_server_is_restarted_and_its_tools_are_unavailable_meanwhile(
    home: Path,
) -> None:
    """issue 14: a crashed stdio server restarts with backoff; meanwhile its tools answer
    that they are unavailable, and the host's `legion mcp ls` shows it."""
    marker = home / "starts"
    async with (
        FakeProvider() as fake,
        running_fleet(home, with_server(fake.base_url, marker)) as fleet,
    ):
        runtime = fleet.runtimes["alice"]
        hub = runtime.mcp
        assert await until(lambda: "kit" in hub.local and hub.local["kit"].state == "ready", 30)
        fake.script(
            Reply(tool_calls=[ToolCall("kit__crash", {})]),
            Reply(tool_calls=[ToolCall("kit__echo", {"text": "again"})]),
            Reply(content="noted"),
        )
        await ask(fleet.host, {"text": "crash it"})
        results = tool_results(fake.requests[2].body["messages"])
        assert results[0].startswith("error: kit__crash failed")
        assert results[1].startswith("error: the MCP server kit is restarting")
        assert await until(lambda: hub.local["kit"].state == "ready" and starts(marker) == 2, 30)
        assert hub.local["kit"].restarts == 1
        async with control_client(fleet.host.paths) as operator:
            assert await until(
                lambda: (
                    "alice" in fleet.host.mcp_reports
                    and fleet.host.mcp_reports["alice"].servers[0].state == "ready"
                ),
                15,
            )
            listing = (await operator.get("/v1/mcp", params={"agent": "alice"})).json()
        # no runtime backend here: the host does not know the agent runs, so it says so
        (kit,) = [s for s in listing["servers"] if s["name"] == "kit"]
        assert kit["kind"] == "stdio" and kit["agent"] == "alice"
        fake.script(
            Reply(tool_calls=[ToolCall("kit__echo", {"text": "back"})]), Reply(content="ok")
        )
        await ask(fleet.host, {"text": "again"})
        assert "echo: back" in tool_results(fake.requests[-1].body["messages"])[0]


async def test_a_server_that_cannot_start_keeps_backing_off_and_the_turn_goes_on(
    home: Path,
) -> None:
    marker = home / "starts"
    async with (
        FakeProvider() as fake,
        running_fleet(home, with_server(fake.base_url, marker, "--fail-start")) as fleet,
    ):
        hub = fleet.runtimes["alice"].mcp
        assert await until(lambda: starts(marker) >= 3, 40)
        server = hub.local["kit"]
        assert server.state in ("starting", "restarting") and server.tools == []
        assert server.restarts >= 2
        # the backoff doubles: about 1 s before the second start, 2 s before the third
        times = [float(line.split()[1]) for line in marker.read_text().splitlines()]
        assert times[1] - times[0] >= 0.9
        assert times[2] - times[1] >= 1.9
        fake.script(Reply(content="fine without it"))
        reply = await ask(fleet.host, {"text": "hello"})
        assert reply.text == "fine without it"
        assert not any(
            t["function"]["name"].startswith("kit__") for t in fake.requests[0].body["tools"]
        )


async def test_a_server_with_egress_reaches_an_allowed_site_through_the_hosts_proxy(
    home: Path,
) -> None:
    """issue 14: `egress = true` gives the server HTTP(S)_PROXY toward the agent's own
    proxy socket on the host: [egress] allow and egress_hosts apply, each destination is
    audited, a site that is not allowed is refused."""
    from http.server import BaseHTTPRequestHandler

    from legion.mesh import audit
    from tests.conftest import loopback_server

    class Site(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            body = b"hello through the proxy"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    marker = home / "starts"
    with loopback_server(Site) as allowed, loopback_server(Site) as other:
        port, other_port = allowed.server_address[1], other.server_address[1]
        async with FakeProvider() as fake:
            text = with_server(fake.base_url, marker, env=', TZ = "UTC"').replace(
                "call_timeout_s = 10.0", "call_timeout_s = 10.0\negress = true"
            )
            # alice may reach 127.0.0.1 (egress_hosts), and [egress] allow opens one port
            text = text.replace(
                "[agents.alice]", f'[egress]\nallow = ["127.0.0.1:{port}"]\n\n[agents.alice]', 1
            )
            socket_path = home / "run" / "egress" / "alice" / "proxy.sock"  # the host's own
            async with running_fleet(home, text, egress_proxy=str(socket_path)) as fleet:
                assert fleet.host.mcp_proxies.dir_of("alice") == socket_path.parent
                assert socket_path.is_socket()
                hub = fleet.runtimes["alice"].mcp
                assert await until(
                    lambda: "kit" in hub.local and hub.local["kit"].state == "ready", 30
                )
                fake.script(
                    Reply(tool_calls=[ToolCall("kit__env", {"names": ["HTTP_PROXY"]})]),
                    Reply(
                        tool_calls=[ToolCall("kit__fetch", {"url": f"http://127.0.0.1:{port}/"})]
                    ),
                    Reply(
                        tool_calls=[
                            ToolCall("kit__fetch", {"url": f"http://127.0.0.1:{other_port}/"})
                        ]
                    ),
                    Reply(content="fetched"),
                )
                await ask(fleet.host, {"text": "fetch"}, timeout_s=60)
                results = tool_results(fake.requests[3].body["messages"])
                assert "HTTP_PROXY=http://127.0.0.1:" in results[0]
                assert "200 hello through the proxy" in results[1]
                assert "403" in results[2] and "[egress] allow" in results[2]
                records = [
                    (r.action, r.decision, r.detail.get("port"))
                    for r in audit.query(fleet.host.store.conn)
                    if r.actor == "alice" and r.action == "mcp.egress"
                ]
                assert ("mcp.egress", "allow", port) in records
                assert ("mcp.egress", "deny", other_port) in records
