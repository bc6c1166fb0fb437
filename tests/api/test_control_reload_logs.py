"""Control routes `POST /v1/config/reload` and `GET /v1/agents/{name}/logs` on a real host
(its real control socket), with the fake runtime backend where containers are needed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from legion.api.control import config_changes
from legion.config import parse_config
from legion.fleet.backend import FakeBackend
from legion.host import Host
from legion.paths import Paths
from tests.conftest import HostFactory, control_client

pytestmark = pytest.mark.anyio

BASE = """
[runtime]
image = "legion-agent:latest"

[agents.alice]
role = "researcher"

[agents.bob]
autostart = false
"""


def audit_rows(host: Host, action: str) -> list[tuple[str, str, str]]:
    rows = host.store.execute(
        "SELECT actor, target, decision FROM audit WHERE action = ? ORDER BY seq", (action,)
    )
    return [tuple(r) for r in rows]


async def test_reload_applies_and_reports_what_changed_and_what_waits(home: Path) -> None:
    """issue 8: a reload says which keys changed, which need a host restart, and which
    running agents need a restart to get new container settings."""
    backend = FakeBackend()
    paths = Paths.resolve(home)
    paths.home.mkdir(parents=True, exist_ok=True)
    paths.config.write_text(BASE)
    async with (
        Host.running(parse_config(BASE), paths, runtime=backend) as host,
        control_client(paths) as operator,
    ):
        assert host.fleet.runs["alice"].state == "running"
        paths.config.write_text(
            BASE.replace('role = "researcher"', 'role = "critic"')
            + "[agents.alice.resources]\nmemory_mb = 512\n"
            + "[agents.carol]\n"
            + "[host]\nvisibility_timeout_s = 30\n"
        )
        response = await operator.post("/v1/config/reload")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["added"] == ["carol"] and body["removed"] == []
        assert body["file"] == str(paths.config)
        assert "agents.alice.role" in body["changed"]
        assert "agents.alice.resources.memory_mb" in body["changed"]
        assert "agents.carol" not in body["changed"]
        assert body["restart_needed"] == ["host.visibility_timeout_s"]
        assert body["agents_to_restart"] == ["alice"]  # bob is not running
        assert host.config.agents["alice"].role == "critic"
        assert backend.starts.get("carol") == 1

        # A new image: every running agent must restart to run it.
        paths.config.write_text(BASE.replace("legion-agent:latest", "legion-agent:v2"))
        body = (await operator.post("/v1/config/reload")).json()
        assert body["removed"] == ["carol"]
        assert body["changed"] == [
            "agents.alice.resources.memory_mb",
            "agents.alice.role",
            "runtime.image",
        ]
        assert body["agents_to_restart"] == ["alice"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[host]\nlog_level = "loud"\n', "host.log_level"),
        ("[agents.alice\n", "not valid TOML"),
        ("[agents.alice]\nmodel = 3\n", "agents.alice.model"),
        (None, "no such file"),
        (b"\xff\xfe not utf-8", "cannot read"),
    ],
    ids=["bad-value", "syntax", "bad-type", "missing", "not-utf8"],
)
async def test_a_refused_reload_changes_nothing_and_says_why(
    running_host: HostFactory, text: str | bytes | None, needle: str
) -> None:
    """issue 8: a file that fails validation (or is gone, or unreadable) changes nothing;
    the answer is a typed 422 with every problem, file and key, and it is audited."""
    async with running_host(BASE) as host, control_client(host.paths) as operator:
        before = host.config.model_dump()
        if text is None:
            host.paths.config.unlink(missing_ok=True)
        elif isinstance(text, bytes):
            host.paths.config.write_bytes(text)
        else:
            host.paths.config.write_text(text)
        response = await operator.post("/v1/config/reload")
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "config_invalid"
        assert error["detail"]["file"] == str(host.paths.config)
        assert any(needle in p for p in error["detail"]["problems"]), error
        assert needle in error["message"] and "keeps its current config" in error["message"]
        assert host.config.model_dump() == before
        assert host.paths.agent_socket("alice").is_socket()
        assert audit_rows(host, "config.reload")[-1] == ("operator", "legion.toml", "deny")


def test_config_changes_lists_leaf_keys() -> None:
    old = parse_config(BASE)
    new = parse_config(BASE + '[llm.models.m]\nmodel = "openai/x"\n[teams.red]\n')
    assert config_changes(old, new) == ["llm.models.m", "teams.red"]
    assert config_changes(old, parse_config(BASE)) == []


async def test_logs_of_an_unknown_agent_or_without_runtime(running_host: HostFactory) -> None:
    """issue 8: `legion logs` of a name that is not an agent is a typed 404; a host without
    containers says so (409), before anything is audited."""
    async with running_host(BASE) as host, control_client(host.paths) as operator:
        ghost = await operator.get("/v1/agents/ghost/logs")
        assert ghost.status_code == 404
        assert ghost.json()["error"]["code"] == "unknown_agent"
        none = await operator.get("/v1/agents/alice/logs")
        assert none.status_code == 409
        assert none.json()["error"]["code"] == "no_runtime"
        assert audit_rows(host, "agent.logs") == []


@pytest.mark.parametrize(
    "query",
    [
        "tail=-1",
        "tail=1.5",
        "tail=x",
        "tail=99999999",
        "since=nan",
        "since=-3",
        "since=inf",
        "follow=maybe",
    ],
)
async def test_logs_query_is_checked(home: Path, query: str) -> None:
    paths = Paths.resolve(home)
    async with (
        Host.running(parse_config(BASE), paths, runtime=FakeBackend()),
        control_client(paths) as operator,
    ):
        response = await operator.get(f"/v1/agents/alice/logs?{query}")
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "invalid_query"


async def test_logs_stream_what_the_container_wrote(home: Path) -> None:
    backend = FakeBackend()
    paths = Paths.resolve(home)
    async with (
        Host.running(parse_config(BASE), paths, runtime=backend) as host,
        control_client(paths) as operator,
    ):
        lines = [json.dumps({"msg": f"line {i}"}) for i in range(5)]
        # What a container writes arrives in pieces that do not follow its lines.
        written = "\n".join(lines).encode() + b"\n" + b"no newline at the end"
        backend.output["alice"] = [written[i : i + 7] for i in range(0, len(written), 7)]
        everything = await operator.get("/v1/agents/alice/logs")
        assert everything.status_code == 200
        assert everything.headers["content-type"] == "application/x-ndjson"
        got = [json.loads(line) for line in everything.text.splitlines()]
        assert got == [{"line": line} for line in [*lines, "no newline at the end"]]
        backend.output["alice"] = [line.encode() + b"\n" for line in lines]
        last = await operator.get("/v1/agents/alice/logs", params={"tail": "2"})
        assert [json.loads(x)["line"] for x in last.text.splitlines()] == lines[-2:]
        # bob is configured but has no container (autostart = false).
        bob = await operator.get("/v1/agents/bob/logs")
        assert bob.status_code == 404
        assert bob.json()["error"]["code"] == "no_container"
        assert "legion agents start bob" in bob.json()["error"]["message"]
        assert audit_rows(host, "agent.logs") == [
            ("operator", "alice", "allow"),
            ("operator", "alice", "allow"),
        ]


async def test_a_quiet_stream_sends_keep_alives_and_splits_long_lines() -> None:
    """A follow stream with nothing to say sends `{}` now and then, so the host notices a
    reader that left; a line longer than the limit arrives in pieces."""
    from legion.api.control import MAX_LOG_LINE_BYTES, log_lines

    class Quiet:
        def __init__(self) -> None:
            self.closed = False
            self.sent = False

        def __aiter__(self) -> Quiet:
            return self

        async def __anext__(self) -> bytes:
            if not self.sent:
                self.sent = True
                return b"x" * (MAX_LOG_LINE_BYTES * 2 + 5)
            await asyncio.sleep(3600)
            raise StopAsyncIteration

        async def aclose(self) -> None:
            self.closed = True

    stream = Quiet()
    out = log_lines(stream, idle_s=0.05)
    pieces = [json.loads(line) for line in (await anext(out)).splitlines()]
    assert pieces == [{"line": "x" * MAX_LOG_LINE_BYTES}] * 2  # the last 5 bytes wait
    assert await anext(out) == b"{}\n"
    assert await anext(out) == b"{}\n"
    await out.aclose()
    assert stream.closed


async def test_a_new_agent_whose_socket_cannot_exist_is_refused_whole(home: Path) -> None:
    """issue 8 (attack pass): an added agent whose socket path would be too long for a Unix
    socket is refused before anything is applied (not half-applied: the other new agent
    does not appear either)."""
    deep = home / ("d" * 50)
    deep.mkdir()
    paths = Paths.resolve(deep)
    long_name = "a" + "b" * 31
    async with (
        Host.running(parse_config(BASE), paths) as host,
        control_client(paths) as operator,
    ):
        paths.config.write_text(BASE + f"[agents.ok]\n[agents.{long_name}]\n")
        response = await operator.post("/v1/config/reload")
        assert response.status_code == 422, response.text
        [problem] = response.json()["error"]["detail"]["problems"]
        assert f"agents.{long_name}" in problem and "shorter" in problem
        assert sorted(host.config.agents) == ["alice", "bob"]
        assert not paths.agent_socket("ok").exists()
