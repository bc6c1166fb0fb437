"""End to end in real containers (marker `docker`; CI runs them with an engine).

A full chat turn through a real agent container against the fake provider; the container's
hardening flags; a probe from inside the container; restart after a kill.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from legion.config import parse_config
from legion.fleet.docker_backend import DockerBackend
from legion.gateway.vault import Vault
from legion.host import Host
from legion.mesh import audit
from legion.paths import Paths
from tests.conftest import control_client, loopback_server
from tests.fakes.provider import FakeProvider, Reply, ToolCall

pytestmark = [pytest.mark.docker, pytest.mark.anyio, pytest.mark.slow]

PROVIDER_KEY = "sk-docker-test-provider-8Jx2Qm4Vz7"
AGENT_TOKEN = "tok-docker-test-agent-3Lp9Wn5Rb1"


class Hello(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        body = b'{"greeting": "hello from the loopback test server"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def web() -> Iterator[ThreadingHTTPServer]:
    with loopback_server(Hello) as server:
        yield server


def config_text(image: str, base_url: str, web_port: int, extra: str = "") -> str:
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

[egress]
allow = ["127.0.0.1:{web_port}"]

[agents.alice]
model = "m"
[agents.alice.permissions]
blackboard_read = ["**"]
blackboard_write = ["notes/**"]
allowed_credentials = ["token"]
egress_hosts = ["127.0.0.1"]

[agents.bob]
model = "m"
{extra}
"""


@asynccontextmanager
async def fleet(home: Path, image: str, fake: FakeProvider, web_port: int) -> AsyncIterator[Host]:
    paths = Paths.resolve(home)
    paths.home.mkdir(parents=True, exist_ok=True)
    vault = Vault(paths.vault_db, paths.vault_key)
    vault.set("provider", PROVIDER_KEY, tier="system")
    # the loopback web server speaks plain http: the binding must allow it (issue 7)
    vault.set("token", AGENT_TOKEN, tier="agent", bound_hosts=["127.0.0.1"], allow_http=True)
    vault.close()
    config = parse_config(config_text(image, fake.base_url, web_port))
    async with Host.running(config, paths, runtime=DockerBackend(str(home))) as host:
        await until_polling(host, "alice")
        await until_polling(host, "bob")
        yield host


async def until_polling(host: Host, agent: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while agent not in host.last_seen:
        if time.monotonic() > deadline:
            logs = await host.fleet.backend.logs(agent)  # type: ignore[union-attr]
            raise AssertionError(f"{agent} never polled its inbox; its logs:\n{logs}")
        await asyncio.sleep(0.05)


async def reply_to(host: Host, agent: str, text: str, timeout_s: float = 120) -> Any:
    async with host.bus.subscribe() as sub, control_client(host.paths) as operator:
        queued = (
            await operator.post("/v1/messages", json={"to": agent, "payload": {"text": text}})
        ).json()
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no reply from {agent} in {timeout_s}s")
            event = await asyncio.wait_for(sub.get(), left)
            if event.type == "agent_reply" and event.in_reply_to == queued["item_id"]:
                return event


async def docker_exec(
    host: Host, agent: str, script: str, timeout_s: float = 30
) -> tuple[int, str]:
    result = await host.fleet.backend.exec(  # type: ignore[union-attr]
        agent, ["python3", "-c", script], timeout_s=timeout_s
    )
    return result.exit_code, result.output


async def test_full_chat_turn_in_a_real_container(
    home: Path, agent_image: str, web: ThreadingHTTPServer
) -> None:
    port = int(web.server_address[1])
    async with FakeProvider() as fake, fleet(home, agent_image, fake, port) as host:
        fake.script(
            Reply(
                tool_calls=[
                    ToolCall(
                        "write_file", {"path": "notes/plan.md", "content": "# plan\nstep one\n"}
                    )
                ]
            ),
            Reply(
                tool_calls=[
                    ToolCall(
                        "http_request",
                        {
                            "method": "GET",
                            "url": f"http://127.0.0.1:{port}/hello",
                            "headers": {"Authorization": "Bearer $CRED{token}"},
                        },
                    )
                ]
            ),
            Reply(
                tool_calls=[
                    ToolCall(
                        "blackboard_write", {"key": "notes/greeting", "value": {"said": "hello"}}
                    )
                ]
            ),
            Reply(content="Done: wrote the plan, fetched the greeting, noted it."),
            model="fake",
        )
        reply = await reply_to(host, "alice", "make a plan")
        assert reply.text.startswith("Done: wrote the plan"), reply
        written = host.paths.agent_data("alice") / "workspace" / "notes" / "plan.md"
        assert written.read_text() == "# plan\nstep one\n"
        entry = host.blackboard.get("notes/greeting")
        assert entry is not None and entry.value == {"said": "hello"}
        assert entry.writer == "alice"
        # the tool results went back to the model: the egress body reached it
        last = fake.requests[-1].body["messages"]
        assert any("hello from the loopback test server" in json.dumps(m) for m in last)
        records = audit.query(host.store.conn, actor="alice")
        actions = {(r.action, r.decision) for r in records}
        assert ("egress.http", "allow") in actions and ("bb.put", "allow") in actions
        assert ("llm.call", "allow") in actions
        assert all(
            r.headers.get("authorization") == f"Bearer {PROVIDER_KEY}" for r in fake.requests
        )


async def test_containers_are_hardened(
    home: Path, agent_image: str, web: ThreadingHTTPServer
) -> None:
    import docker

    port = int(web.server_address[1])
    async with FakeProvider() as fake, fleet(home, agent_image, fake, port) as host:
        client = docker.from_env()
        try:
            run = host.fleet.runs["alice"]
            attrs = client.containers.get(run.container_id).attrs
        finally:
            client.close()
        hc = attrs["HostConfig"]
        assert attrs["Config"]["User"] == "10001:10001"
        assert hc["CapDrop"] == ["ALL"]
        assert "no-new-privileges" in hc["SecurityOpt"]
        assert hc["ReadonlyRootfs"] is True
        assert "noexec" in hc["Tmpfs"]["/tmp"]
        assert hc["NetworkMode"] == "none"
        assert hc["Memory"] == 384 * 2**20
        assert hc["NanoCpus"] == 500_000_000
        assert hc["PidsLimit"] == 256
        binds = sorted(hc["Binds"])
        assert binds == sorted(
            [
                f"{host.paths.agent_data('alice')}:/data:rw",
                f"{host.paths.agent_socket_dir('alice')}:/run/legion:rw",
                f"{host.paths.agent_identity('alice') / 'files'}:/etc/legion/identity:ro",
                # the operator's skills (issue 14): the fleet's and the agent's, read-only
                f"{host.paths.home / 'skills' / 'fleet'}:/etc/legion/skills/fleet:ro",
                f"{host.paths.home / 'skills' / 'agents' / 'alice'}:/etc/legion/skills/agent:ro",
            ]
        )
        env = "\n".join(attrs["Config"]["Env"])
        assert PROVIDER_KEY not in env and AGENT_TOKEN not in env


PROBE = r"""
import json, os, socket, subprocess
out = {}
out["interfaces"] = sorted(os.listdir("/sys/class/net"))
s = socket.socket()
s.settimeout(2)
try:
    s.connect(("127.0.0.1", PORT))
    out["host_loopback"] = "connected"
except OSError as exc:
    out["host_loopback"] = type(exc).__name__
out["run_legion"] = sorted(os.listdir("/run/legion"))
out["uid"] = os.getuid()
found = []
for root in ("/proc/self/environ", "/proc/1/environ"):
    try:
        data = open(root, "rb").read()
        found += [root for k in KEYS if k.encode() in data]
    except OSError:
        pass
for top in ("/data", "/tmp", "/opt", "/etc", "/run", "/root", "/home"):
    for dirpath, _, files in os.walk(top):
        for name in files:
            path = os.path.join(dirpath, name)
            try:
                data = open(path, "rb").read(1 << 20)
            except OSError:
                continue
            found += [path for k in KEYS if k.encode() in data]
out["secrets_found"] = found
try:
    open("/opt/legion/app/legion/__init__.py", "a").write("#")
    out["rootfs"] = "writable"
except OSError as exc:
    out["rootfs"] = type(exc).__name__
print(json.dumps(out))
"""


async def test_probe_inside_a_real_container(
    home: Path, agent_image: str, web: ThreadingHTTPServer
) -> None:
    port = int(web.server_address[1])
    async with FakeProvider() as fake, fleet(home, agent_image, fake, port) as host:
        script = PROBE.replace("PORT", str(fake.port)).replace(
            "KEYS", json.dumps([PROVIDER_KEY, AGENT_TOKEN])
        )
        code, output = await docker_exec(host, "alice", script, timeout_s=60)
        assert code == 0, output
        probe = json.loads(output.strip().splitlines()[-1])
        assert probe["interfaces"] == ["lo"]  # no network at all
        assert probe["host_loopback"] != "connected"  # the host's loopback is not reachable
        assert probe["run_legion"] == ["mesh.sock"]  # its own socket only
        assert probe["uid"] == 10001
        assert probe["secrets_found"] == []
        assert probe["rootfs"] != "writable"
        # identity: through its socket the container is alice, whatever it claims
        who = (
            "import httpx; t = httpx.HTTPTransport(uds='/run/legion/mesh.sock'); "
            "print(httpx.Client(transport=t).get('http://legion/v1/whoami', "
            "headers={'X-Agent': 'bob'}).text)"
        )
        code, output = await docker_exec(host, "alice", who)
        assert code == 0 and json.loads(output)["agent"] == "alice"


async def test_a_fork_bomb_stops_at_the_pids_limit_and_the_host_keeps_serving(
    home: Path, agent_image: str, web: ThreadingHTTPServer
) -> None:
    port = int(web.server_address[1])
    async with FakeProvider() as fake, fleet(home, agent_image, fake, port) as host:
        bomb = (
            "import os, time\n"
            "for _ in range(2000):\n"
            "    try:\n        os.fork()\n    except OSError:\n        pass\n"
            "time.sleep(3)\n"
        )
        task = asyncio.create_task(docker_exec(host, "bob", bomb, timeout_s=8))
        await asyncio.sleep(1.5)
        async with control_client(host.paths) as operator:
            started = time.monotonic()
            response = await operator.put("/v1/blackboard/entries/alive", json={"value": 1})
            assert response.status_code == 200
            assert time.monotonic() - started < 2
        import docker

        client = docker.from_env()
        try:
            stats = client.containers.get(host.fleet.runs["bob"].container_id).stats(stream=False)
        finally:
            client.close()
        assert stats["pids_stats"].get("current", 0) <= 256
        await task
        await host.fleet.restart("bob")


async def test_a_killed_agent_is_restarted_and_handles_the_unacked_item(
    home: Path, agent_image: str, web: ThreadingHTTPServer
) -> None:
    import docker

    port = int(web.server_address[1])
    async with FakeProvider() as fake, fleet(home, agent_image, fake, port) as host:
        fake.script(Reply(content="too late", first_byte_delay_s=20), model="fake")
        async with control_client(host.paths) as operator:
            queued = (
                await operator.post(
                    "/v1/messages", json={"to": "alice", "payload": {"text": "survive this"}}
                )
            ).json()
        # wait until the agent took the item (the slow model call is under way), then kill it
        deadline = time.monotonic() + 60
        while not fake.requests and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert fake.requests, "the agent never called the model"
        old = host.fleet.runs["alice"].container_id
        client = docker.from_env()
        try:
            client.containers.get(old).kill()
        finally:
            client.close()
        async with host.bus.subscribe() as sub:
            deadline = time.monotonic() + 120
            while True:
                event = await asyncio.wait_for(sub.get(), max(0.1, deadline - time.monotonic()))
                if event.type == "agent_reply" and event.in_reply_to == queued["item_id"]:
                    break
        assert host.fleet.runs["alice"].container_id != old
        assert event.text.startswith("echo: survive this")
        deadline = time.monotonic() + 10  # the ack follows the reply
        while host.inboxes.depth("alice") and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert host.inboxes.depth("alice") == 0
        restarts = [
            r for r in audit.query(host.store.conn, actor="host") if r.action == "agent.restarting"
        ]
        assert restarts and "exited" in restarts[0].detail["reason"]


async def test_a_new_host_sweeps_containers_a_dead_host_left(
    home: Path, agent_image: str, web: ThreadingHTTPServer
) -> None:
    import docker

    from legion.fleet.backend import AgentSpec

    backend = DockerBackend(str(home))
    paths = Paths.resolve(home)
    leftover = AgentSpec(
        name="ghost",
        image=agent_image,
        data_dir=home / "ghost-data",
        socket_dir=home / "ghost-run",
        uid=10001,
        gid=10001,
        memory_mb=64,
        cpus=0.1,
        pids=32,
    )
    (home / "ghost-data").mkdir()
    (home / "ghost-run").mkdir()
    await backend.start(leftover)
    await backend.close()
    port = int(web.server_address[1])
    async with FakeProvider() as fake, fleet(home, agent_image, fake, port):
        client = docker.from_env()
        try:
            names = {
                c.labels.get("legion.agent")
                for c in client.containers.list(
                    all=True, filters={"label": f"legion.home={paths.home}"}
                )
            }
        finally:
            client.close()
        assert names == {"alice", "bob"}


PLANT_AND_DIE = r"""
import os, shutil, signal
shutil.rmtree("/data/workspace")
os.symlink(VICTIM, "/data/workspace")
print("planted", os.getuid(), flush=True)
os.kill(-1, signal.SIGKILL)  # every process of the container but init and this one
"""


async def test_issue_7_a_container_that_links_its_workspace_to_a_host_folder_and_dies(
    home: Path, agent_image: str, web: ThreadingHTTPServer
) -> None:
    """issue 7: a real agent, as its own uid, replaces /data/workspace with a link to a
    host folder and kills its runtime; the supervisor notices and restarts it on its own,
    and the restart must refuse the volume (audited, `failed` with the reason) instead of
    chowning the host folder. Bob keeps running; the operator moves the link away and
    starts alice again."""
    import os
    import shutil
    import stat

    etc = home.parent / f"{home.name}-etc"
    etc.mkdir(mode=0o755)
    (etc / "passwd").write_text("root:x:0:0\n")
    try:

        def owner_and_mode() -> list[tuple[int, int, int]]:
            return [
                (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
                for st in (os.lstat(etc), os.lstat(etc / "passwd"))
            ]

        before = owner_and_mode()
        port = int(web.server_address[1])
        async with FakeProvider() as fake, fleet(home, agent_image, fake, port) as host:
            old = host.fleet.runs["alice"].container_id
            async with host.bus.subscribe() as sub:
                code, output = await docker_exec(
                    host, "alice", PLANT_AND_DIE.replace("VICTIM", repr(str(etc)))
                )
                deadline = time.monotonic() + 60
                states = []
                # until the automatic restart has run: it ends failed (or, unfixed, running)
                while "restarting" not in states or states[-1] not in ("failed", "running"):
                    event = await asyncio.wait_for(sub.get(), max(0.1, deadline - time.monotonic()))
                    if event.type == "agent_state" and event.agent == "alice":
                        states.append(event.state)
                reason = event.reason
            workspace = host.paths.agent_data("alice") / "workspace"
            assert os.path.islink(workspace), (code, output)  # planted by the container
            assert os.lstat(workspace).st_uid == 10001  # ... as its own uid
            assert owner_and_mode() == before  # the link's target was never touched
            assert states[-1] == "failed", states
            assert str(workspace) in reason and "a symbolic link" in reason
            refused = [
                r
                for r in audit.query(host.store.conn, actor="host")
                if r.action == "agent.volume_refused"
            ]
            assert [(r.target, r.decision) for r in refused] == [("alice", "deny")]
            assert (await host.fleet.backend.status("bob")).state == "running"  # type: ignore[union-attr]
            async with control_client(host.paths) as operator:
                assert (await operator.get("/v1/status")).status_code == 200
                workspace.rename(workspace.with_name("workspace.suspect"))
                started = (await operator.post("/v1/agents/alice/start")).json()
            assert started["state"] == "running"
            await until_polling(host, "alice")
            assert host.fleet.runs["alice"].container_id != old
            assert workspace.is_dir() and os.lstat(workspace).st_uid == 10001
        assert owner_and_mode() == before
    finally:
        shutil.rmtree(etc, ignore_errors=True)
