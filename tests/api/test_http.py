"""The socket HTTP server: typed errors, body caps, keep-alive, OpenAPI."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from legion.config import parse_config
from legion.host import Host
from legion.paths import Paths
from tests.conftest import agent_client, control_client

pytestmark = pytest.mark.anyio

CONFIG = """
[host]
max_body_bytes = 2048
[agents.alice]
[agents.alice.permissions]
blackboard_write = ["**"]
"""


async def raw(paths: Paths, agent: str, data: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(paths.agent_socket(agent)))
    writer.write(data)
    await writer.drain()
    out = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return out


async def test_typed_errors(home: Path) -> None:
    paths = Paths.resolve(home)
    async with Host.running(parse_config(CONFIG), paths), agent_client(paths, "alice") as alice:
        missing = await alice.get("/v1/nothing")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "no_route"
        wrong = await alice.delete("/v1/publish")
        assert wrong.status_code == 405 and wrong.json()["error"]["detail"]["allowed"] == ["POST"]
        bad_json = await alice.post("/v1/publish", content=b"{nope")
        assert bad_json.status_code == 422 and bad_json.json()["error"]["code"] == "invalid_body"
        bad_type = await alice.post("/v1/inbox/poll", json={"max_items": "many"})
        body = bad_type.json()["error"]
        assert bad_type.status_code == 422 and "max_items" in body["message"]
        too_big = await alice.put("/v1/blackboard/entries/k", json={"value": "x" * 5000})
        assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "body_too_large"
        for response in (missing, wrong, bad_json, bad_type, too_big):
            assert response.headers["content-type"] == "application/json"
            assert response.json()["error"]["status"] == response.status_code


async def test_malformed_and_chunked_requests(home: Path) -> None:
    """issue 7: chunked request bodies are accepted (h11 frames them), bounded like any body."""
    paths = Paths.resolve(home)
    async with Host.running(parse_config(CONFIG), paths):
        garbage = await raw(paths, "alice", b"NOT HTTP\r\n\r\n")
        assert garbage.startswith(b"HTTP/1.1 400")
        body = b'{"value": 1}'
        whole = await raw(
            paths,
            "alice",
            b"PUT /v1/blackboard/entries/k HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n" % (len(body[:5]), body[:5])
            + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body[5:]), body[5:]),
        )
        assert whole.startswith(b"HTTP/1.1 200") and b'"version":' in whole
        big = b"x" * 1500
        too_big = await raw(
            paths,
            "alice",
            b"PUT /v1/blackboard/entries/k HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + (b"%x\r\n%s\r\n" % (len(big), big)) * 2,
        )
        assert too_big.startswith(b"HTTP/1.1 413") and b"body_too_large" in too_big
        huge_head = await raw(paths, "alice", b"GET / HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n")
        assert huge_head.startswith(b"HTTP/1.1 431")


async def test_keep_alive_serves_many_requests_on_one_connection(home: Path) -> None:
    paths = Paths.resolve(home)
    async with Host.running(parse_config(CONFIG), paths):
        reader, writer = await asyncio.open_unix_connection(str(paths.agent_socket("alice")))
        for _ in range(3):
            writer.write(b"GET /v1/whoami HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
            assert b'"agent":"alice"' in await reader.readexactly(length)
        writer.close()


async def test_openapi_documents_every_route_and_policy(home: Path) -> None:
    paths = Paths.resolve(home)
    async with (
        Host.running(parse_config(CONFIG), paths) as host,
        agent_client(paths, "alice") as alice,
        control_client(paths) as operator,
    ):
        spec = (await alice.get("/v1/openapi.json")).json()
        assert spec["openapi"].startswith("3.")
        ops = {(m.upper(), p) for p, item in spec["paths"].items() for m in item}
        assert ("PUT", "/v1/blackboard/entries/{key}") in ops
        assert ("POST", "/v1/inbox/poll") in ops and ("POST", "/v1/publish") in ops
        put = spec["paths"]["/v1/blackboard/entries/{key}"]["put"]
        assert put["x-legion-permission"] == "blackboard_write"
        ref = put["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.split("/")[-1] in spec["components"]["schemas"]
        control = (await operator.get("/v1/openapi.json")).json()
        assert "/v1/status" in control["paths"] and "/v1/status" not in spec["paths"]
        assert host is not None


async def test_control_socket_event_stream(home: Path) -> None:
    paths = Paths.resolve(home)
    async with (
        Host.running(parse_config(CONFIG), paths),
        control_client(paths) as operator,
        agent_client(paths, "alice") as alice,
    ):
        async with operator.stream("GET", "/v1/events") as stream:
            lines = stream.aiter_lines()
            await alice.put("/v1/blackboard/entries/news", json={"value": 1})
            seen = []
            while not any('"blackboard_changed"' in line for line in seen):
                seen.append(await asyncio.wait_for(lines.__anext__(), 5))
        from legion.wire.events import parse_event

        events = [parse_event(line) for line in seen]
        assert events[-1].key == "news" and events[-1].writer == "alice"
        assert any(e.type == "audit_appended" and e.decision == "allow" for e in events)
