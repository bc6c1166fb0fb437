"""MeshClient and the tools that go through the host, against a real host's agent socket."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent_container.client import HostUnavailable, MeshClient, MeshError
from agent_container.completion import collect
from agent_container.registry import Hooks, Registry
from agent_container.tools import builtin_tools
from agent_container.workspace import Workspace
from legion.host import Host
from tests.agent_container.harness import TOKEN, config_text, next_event, running_host
from tests.conftest import agent_client
from tests.fakes.provider import FakeProvider, Reply

pytestmark = pytest.mark.anyio


class Echo(BaseHTTPRequestHandler):
    """Answers with what it received (so a credential in the answer must come back masked)."""

    seen: list[dict[str, str]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        seen = {
            "path": self.path,
            "authorization": self.headers.get("Authorization", ""),
            "body": self.rfile.read(length).decode(),
        }
        Echo.seen.append(seen)
        body = json.dumps(seen).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def web() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    Echo.seen = []
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


@dataclass
class Env:
    host: Host
    fake: FakeProvider
    mesh: MeshClient
    tools: Registry
    web_port: int
    written: list[str] = field(default_factory=list)
    sent: list[tuple[int, str]] = field(default_factory=list)


@pytest.fixture
async def env(home: Path, web: int) -> AsyncIterator[Env]:
    async with (
        FakeProvider() as fake,
        running_host(home, config_text(fake.base_url, egress_port=web)) as host,
    ):
        mesh = MeshClient(str(host.paths.agent_socket("alice")))
        e = Env(host, fake, mesh, Registry(), web)
        hooks = Hooks(e.written.append, lambda item, to: e.sent.append((item, to)))
        e.tools = builtin_tools(mesh, Workspace(home / "ws"), hooks)
        try:
            yield e
        finally:
            await mesh.close()


async def test_blackboard_tools(env: Env) -> None:
    run = env.tools.run
    assert await run("blackboard_write", {"key": "notes/a", "value": {"n": 1}}) == (
        "wrote notes/a (version 1)"
    )
    assert env.written == ["notes/a"]
    read = json.loads(await run("blackboard_read", {"key": "notes/a"}))
    assert read["value"] == {"n": 1} and read["writer"] == "alice" and read["version"] == 1
    assert await run("blackboard_list", {"prefix": "notes/"}) == 'notes/a v1 by alice: {"n": 1}'
    missing = await run("blackboard_read", {"key": "notes/none"})
    assert missing.startswith("error: the host refused: key_not_found (404)")
    denied = await run("blackboard_write", {"key": "other/x", "value": 1})
    assert "403" in denied and env.written == ["notes/a"]
    claimed = await run("blackboard_claim", {"key": "notes/a", "ttl_s": 60})
    assert claimed.startswith("claimed notes/a until ")
    async with agent_client(env.host.paths, "bob") as bob:
        taken = await bob.post("/v1/blackboard/claim", json={"key": "notes/a"})
        assert taken.status_code == 423
    assert await run("blackboard_release", {"key": "notes/a"}) == "released notes/a"
    assert await run("blackboard_release", {"key": "notes/a"}) == "no claim of yours on notes/a"


async def test_blackboard_watch_continues_where_it_stopped(env: Env) -> None:
    run = env.tools.run
    assert await run("blackboard_watch", {"pattern": "notes/**", "wait_s": 0.05}) == (
        "no changes to notes/** within 0.05s"
    )
    env.host.blackboard.put("notes/w", "first", "operator")
    assert await run("blackboard_watch", {"pattern": "notes/**", "wait_s": 1}) == (
        'put notes/w v1 by operator: "first"'
    )
    env.host.blackboard.put("notes/w", "second", "operator")
    assert await run("blackboard_watch", {"pattern": "notes/**", "wait_s": 1}) == (
        'put notes/w v2 by operator: "second"'
    )


async def test_pubsub_messages_and_notifications(env: Env) -> None:
    run = env.tools.run
    async with agent_client(env.host.paths, "bob") as bob:
        assert (await bob.post("/v1/subscriptions", json={"topic": "news/*"})).status_code == 200
    assert await run("publish", {"topic": "news/today", "payload": {"x": 1}}) == (
        "published on news/today; delivered to: bob"
    )
    assert await run("subscribe", {"topic": "news/**"}) == "subscribed; your topics: news/**"
    assert "403" in await run("subscribe", {"topic": "secret/**"})
    sent = await run("send_message", {"to": "bob", "payload": "hi"})
    assert sent.startswith("queued for bob (item ")
    assert env.sent == [(int(sent.split("item ")[1].split(")")[0]), "bob")]
    assert env.host.inboxes.depth("bob") == 2
    event = await next_event(
        env.host,
        lambda e: e.type == "agent_notification",
        lambda: env.tools.run("notify_user", {"text": "look", "level": "warning"}),
    )
    assert (event.agent, event.text, event.level) == ("alice", "look", "warning")
    bad = await run("notify_user", {"text": "x", "level": "loud"})
    assert bad == "error: notify_user: level must be one of info, warning, error"


async def test_get_system_status(env: Env) -> None:
    status = await env.tools.run("get_system_status", {})
    summary, data = status.split("\n{", 1)
    assert summary.startswith("You are alice (role researcher, team red), in chat mode, model m.")
    assert "Agents you may message: bob." in summary
    assert json.loads("{" + data)["max_task_steps"] == 4


async def test_http_request_passes_credential_handles_to_the_host(env: Env) -> None:
    result = await env.tools.run(
        "http_request",
        {
            "method": "post",
            "url": f"http://127.0.0.1:{env.web_port}/api?key=$CRED{{token}}",
            "headers": {"Authorization": "Bearer $CRED{token}"},
            "body": "token=$CRED{token}",
        },
    )
    # the host substituted the handle on the way out...
    assert Echo.seen == [
        {"path": f"/api?key={TOKEN}", "authorization": f"Bearer {TOKEN}", "body": f"token={TOKEN}"}
    ]
    # ...and the agent never sees the value, even when the server echoes it
    assert TOKEN not in result
    response = json.loads(result)
    assert response["status"] == 201
    assert json.loads(response["body"])["authorization"] == "Bearer [REDACTED]"
    denied = await env.tools.run("http_request", {"url": "http://10.1.2.3/"})
    assert denied.startswith("error: the host refused:")


async def test_client_errors_are_typed(env: Env, home: Path) -> None:
    with pytest.raises(MeshError) as info:
        await env.mesh.bb_get("notes/missing")
    assert (info.value.status, info.value.code) == (404, "key_not_found")
    assert info.value.detail == {"key": "notes/missing"}
    gone = MeshClient(str(home / "run" / "nobody.sock"))
    with pytest.raises(HostUnavailable):
        await gone.heartbeat()
    await gone.close()


async def test_stream_chat_yields_chunks_and_raises_refusals(env: Env) -> None:
    env.fake.script(Reply(content="hello there"))
    completion = await collect(env.mesh.stream_chat([{"role": "user", "content": "hi"}]))
    assert completion.text == "hello there" and completion.tool_calls == []
    env.host.config.agents["alice"].budget.daily_usd = 0.0
    with pytest.raises(MeshError) as info:
        await collect(env.mesh.stream_chat([{"role": "user", "content": "hi"}]))
    assert (info.value.status, info.value.code) == (402, "budget_exceeded")
