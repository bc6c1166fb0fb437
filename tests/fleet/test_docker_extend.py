"""Issue 14 in real containers (marker `docker`): a local MCP server (`mcp-server-time`)
run by the agent runtime inside its container, skills mounted read-only, and a sub-agent
spawned into a container of its own (with the figure: spawn to first poll against a
configured agent's cold start).
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from legion.config import parse_config
from legion.fleet.docker_backend import DockerBackend
from legion.gateway.vault import Vault
from legion.host import Host
from legion.paths import Paths
from tests.conftest import control_client
from tests.fakes.provider import FakeProvider, Reply, ToolCall
from tests.fleet.test_docker import docker_exec, reply_to, until_polling

pytestmark = [pytest.mark.docker, pytest.mark.anyio, pytest.mark.slow]

PROVIDER_KEY = "sk-docker-extend-provider-5Rk8Vn3Qz"
MCP_PACKAGES = ["mcp-server-time", "mcp-server-fetch"]


@pytest.fixture(scope="session")
def mcp_image() -> str:
    """The agent image with the MCP servers of these tests (`[images] mcp_packages`),
    built once per source and package list."""
    import docker

    from legion.fleet.images import build_agent_image, image_exists, source_digest

    tag = f"legion-agent:mcp-{source_digest(MCP_PACKAGES)}"
    client = docker.from_env()
    try:
        if image_exists(client, tag):
            return tag
    finally:
        client.close()
    build_agent_image(
        tag=tag,
        base=None,
        mirror=None,
        uid=10001,
        cache=Path(tempfile.gettempdir()) / "legion-test-wheels",
        progress=lambda line: print(line, file=sys.stderr),
        mcp_packages=MCP_PACKAGES,
    )
    return tag


def config_text(image: str, base_url: str, extra: str = "") -> str:
    return f"""
[runtime]
image = "{image}"
heartbeat_timeout_s = 60
restart_max_per_hour = 10

[llm.models.m]
model = "openai/fake"
api_base = "{base_url}"
credential = "provider"
input_cost_per_mtok = 1.0
output_cost_per_mtok = 1.0

[agents.alice]
model = "m"
[agents.alice.budget]
daily_usd = 5.0
[agents.alice.permissions]
can_spawn = true
blackboard_read = ["**"]
blackboard_write = ["notes/**"]
{extra}
"""


@asynccontextmanager
async def docker_host(home: Path, text: str) -> AsyncIterator[Host]:
    paths = Paths.resolve(home)
    paths.home.mkdir(parents=True, exist_ok=True)
    vault = Vault(paths.vault_db, paths.vault_key)
    vault.set("provider", PROVIDER_KEY, tier="system")
    vault.close()
    async with Host.running(parse_config(text), paths, runtime=DockerBackend(str(home))) as host:
        yield host


async def wait_for(
    predicate: Any, timeout_s: float = 60, host: Host | None = None, agent: str = "alice"
) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            logs = await host.fleet.backend.logs(agent) if host and host.fleet.backend else ""
            raise AssertionError(f"condition not met in {timeout_s}s; {agent}'s logs:\n{logs}")
        await asyncio.sleep(0.05)


async def test_mcp_server_time_runs_in_the_agents_container(home: Path, mcp_image: str) -> None:
    """issue 14: a real stdio MCP server (`mcp-server-time`, installed in the image by
    [images] mcp_packages) inside the container, its tools offered and called."""
    extra = """
[agents.alice.mcp.time]
command = "python3"
args = ["-m", "mcp_server_time", "--local-timezone", "UTC"]
"""
    async with (
        FakeProvider() as fake,
        docker_host(home, config_text(mcp_image, fake.base_url, extra)) as host,
    ):
        await until_polling(host, "alice")
        await wait_for(
            lambda: (
                "alice" in host.mcp_reports
                and any(s.state == "ready" for s in host.mcp_reports["alice"].servers)
            ),
            90,
            host,
        )
        async with control_client(host.paths) as operator:
            listing = (await operator.get("/v1/mcp", params={"agent": "alice"})).json()
        (time_server,) = listing["servers"]
        assert time_server["kind"] == "stdio" and time_server["state"] == "ready"
        names = {t["name"] for t in time_server["tools"]}
        assert {"time__get_current_time", "time__convert_time"} <= names
        fake.script(
            Reply(tool_calls=[ToolCall("time__get_current_time", {"timezone": "UTC"})]),
            Reply(content="It is now in UTC."),
            model="fake",
        )
        reply = await reply_to(host, "alice", "what time is it?")
        assert reply.text == "It is now in UTC."
        result = next(
            m["content"] for m in fake.requests[-1].body["messages"] if m["role"] == "tool"
        )
        assert "third-party data" in result and "UTC" in result
        assert str(time.gmtime().tm_year) in result
        # the server runs inside the container, as the agent's uid
        code, out = await docker_exec(
            host,
            "alice",
            "import os\nfor p in os.listdir('/proc'):\n"
            "    if p.isdigit():\n"
            "        cmd = open(f'/proc/{p}/cmdline','rb').read().replace(b'\\0', b' ')\n"
            "        if cmd.startswith(b'python3 -m mcp_server_time'):\n"
            "            print(os.stat(f'/proc/{p}').st_uid)",
        )
        assert code == 0 and out.split() == ["10001"]


async def test_skills_are_mounted_read_only_and_appear_without_a_restart(
    home: Path, agent_image: str
) -> None:
    async with (
        FakeProvider() as fake,
        docker_host(home, config_text(agent_image, fake.base_url)) as host,
    ):
        await until_polling(host, "alice")
        md = "---\nname: greet\ndescription: Greets people. Use to say hello.\n---\nSay hi.\n"
        body = {"name": "greet", "files": {"SKILL.md": base64.b64encode(md.encode()).decode()}}
        async with control_client(host.paths) as operator:
            assert (await operator.post("/v1/skills", json=body)).status_code == 200
        code, out = await docker_exec(
            host,
            "alice",
            "import json\nout = {'read': open('/etc/legion/skills/fleet/greet/SKILL.md').read()}\n"
            "try:\n    open('/etc/legion/skills/fleet/greet/SKILL.md', 'a').write('x')\n"
            "    out['write'] = 'written'\nexcept OSError as exc:\n"
            "    out['write'] = type(exc).__name__\nprint(json.dumps(out))",
        )
        found = json.loads(out.strip().splitlines()[-1])
        assert code == 0 and "Greets people" in found["read"]
        assert found["write"] in ("OSError", "PermissionError")
        fake.script(Reply(content="hello"), model="fake")
        await reply_to(host, "alice", "hi")
        assert "- greet: Greets people." in fake.requests[-1].body["messages"][0]["content"]


async def test_a_sub_agent_runs_in_a_container_of_its_own(home: Path, agent_image: str) -> None:
    """issue 14: spawn_agent from a real container; the sub-agent gets its own hardened
    container, works its task and reports back; the figure: spawn to first poll against a
    configured agent's cold start."""
    import docker

    async with FakeProvider() as fake:
        text = config_text(
            agent_image, fake.base_url, '[agents.bob]\nmodel = "m"\nautostart = false\n'
        )
        async with docker_host(home, text) as host:
            await until_polling(host, "alice")
            # a configured agent's cold start, the same way: start to first poll
            started = time.monotonic()
            await host.fleet.start("bob")
            await wait_for(lambda: "bob" in host.last_poll, 90)
            cold = time.monotonic() - started
            fake.script(
                Reply(
                    tool_calls=[
                        ToolCall("spawn_agent", {"role": "writer", "task": "write a haiku"})
                    ]
                ),
                Reply(content="A helper is on it."),
                Reply(tool_calls=[ToolCall("finish_task", {"status": "done", "output": "haiku"})]),
                Reply(content="The helper wrote: haiku"),
                model="fake",
            )
            first = await reply_to(host, "alice", "get me a haiku")
            assert first.text == "A helper is on it."
            (name,) = host.spawner.children
            child = host.spawner.children[name]
            await wait_for(lambda: name in host.last_poll, 90)
            spawn_to_poll = host.last_poll[name] - child.created_at
            client = docker.from_env()
            try:
                attrs = client.containers.get(host.fleet.runs[name].container_id).attrs
            finally:
                client.close()
            assert attrs["HostConfig"]["NetworkMode"] == "none"
            assert attrs["HostConfig"]["ReadonlyRootfs"] is True
            assert attrs["Config"]["Labels"]["legion.agent"] == name
            async with host.bus.subscribe() as events:
                async with asyncio.timeout(120):
                    while True:
                        event = await events.get()
                        if event.type == "agent_reply" and event.agent == "alice":
                            break
            assert event.text == "The helper wrote: haiku"
            await wait_for(lambda: name not in host.config.agents, 60)
            print(
                f"\nspawn to first poll: {spawn_to_poll:.2f}s; a configured agent's cold start "
                f"(start to first poll): {cold:.2f}s"
            )


async def test_mcp_server_fetch_goes_through_the_hosts_proxy_and_its_policy(
    home: Path, mcp_image: str
) -> None:
    """issue 14: `mcp-server-fetch` (stdio, in the container, `egress = true`) reaches a
    loopback test site allowed in [egress] allow through the host's proxy, and is refused
    one that is not; the container itself still has no network."""
    from http.server import BaseHTTPRequestHandler

    from legion.mesh import audit
    from tests.conftest import loopback_server

    class Site(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            body = b"<html><body><h1>Allowed page</h1><p>fetched through legion</p></body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with loopback_server(Site) as allowed, loopback_server(Site) as other:
        port, other_port = allowed.server_address[1], other.server_address[1]
        extra = f"""egress_hosts = ["127.0.0.1"]

[egress]
allow = ["127.0.0.1:{port}"]

[agents.alice.mcp.fetch]
command = "python3"
args = ["-m", "mcp_server_fetch", "--ignore-robots-txt", "--allow-private-ips"]
egress = true
"""
        async with (
            FakeProvider() as fake,
            docker_host(home, config_text(mcp_image, fake.base_url, extra)) as host,
        ):
            await until_polling(host, "alice")
            await wait_for(
                lambda: (
                    "alice" in host.mcp_reports
                    and any(s.state == "ready" for s in host.mcp_reports["alice"].servers)
                ),
                90,
                host,
            )
            fake.script(
                Reply(tool_calls=[ToolCall("fetch__fetch", {"url": f"http://127.0.0.1:{port}/"})]),
                Reply(
                    tool_calls=[
                        ToolCall("fetch__fetch", {"url": f"http://127.0.0.1:{other_port}/"})
                    ]
                ),
                Reply(content="fetched"),
                model="fake",
            )
            reply = await reply_to(host, "alice", "fetch both")
            assert reply.text == "fetched"
            results = [
                m["content"] for m in fake.requests[-1].body["messages"] if m["role"] == "tool"
            ]
            assert "Allowed page" in results[0] and "fetched through legion" in results[0]
            assert "Allowed page" not in results[1] and "403" in results[1]
            records = [
                (r.decision, r.detail.get("port"))
                for r in audit.query(host.store.conn)
                if r.actor == "alice" and r.action == "mcp.egress"
            ]
            assert ("allow", port) in records and ("deny", other_port) in records
