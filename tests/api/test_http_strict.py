"""Strict HTTP/1.1 parsing (h11 plus our refusals), HEAD, 405 Allow, Expect: 100-continue.

issue 7 item 11, issue 15 item 4, issue 8 (Expect).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from legion.config import parse_config
from legion.host import Host
from legion.paths import Paths
from tests.api.raw import RawConn, exchange, request
from tests.conftest import agent_client, control_client

pytestmark = pytest.mark.anyio

CONFIG = """
[host]
max_body_bytes = 4096
[agents.alice]
[agents.alice.permissions]
blackboard_read = ["**"]
blackboard_write = ["**"]
"""


@asynccontextmanager
async def host_at(home: Path) -> AsyncIterator[tuple[Host, Path]]:
    paths = Paths.resolve(home)
    async with Host.running(parse_config(CONFIG), paths) as host:
        yield host, paths.agent_socket("alice")


PUT_HEAD = b"PUT /v1/blackboard/entries/k HTTP/1.1\r\nhost: x\r\n"
BODY = b'{"value": 1}'


@pytest.mark.parametrize(
    ("head", "why"),
    [
        (b"content-length: +12\r\n", "sign"),
        (b"content-length: 0x0c\r\n", "hex"),
        (b"content-length: 12 \r\ncontent-length: 12\r\n", "duplicate"),
        (b"content-length: 12\r\ncontent-length: 13\r\n", "conflicting"),
        (b"content-length: 12, 12\r\n", "list"),
        (b"content-length: 12\r\ntransfer-encoding: chunked\r\n", "both"),
        (b"content-length: 12\r\nx-a: b\r\n  folded\r\n", "obs-fold"),
        (b"content-length: 12\r\nx-a: b\r\n\tfolded\r\n", "obs-fold tab"),
        (b"transfer-encoding: gzip, chunked\r\n", "unknown coding"),
        (b"content-length : 12\r\n", "space before colon"),
    ],
)
async def test_lenient_framing_is_refused(home: Path, head: bytes, why: str) -> None:
    """issue 7: Content-Length digits only, one of it, no obs-fold, no CL with TE."""
    async with host_at(home) as (host, sock):
        answer = await exchange(sock, PUT_HEAD + head + b"\r\n" + BODY)
        assert answer.status in (400, 501), (why, answer)
        error = __import__("json").loads(answer.body)["error"]
        assert error["code"] in ("malformed_request", "not_implemented")
        assert error["status"] == answer.status
        # Nothing was written, and the host still answers.
        assert host.blackboard.get("k") is None
        ok = await exchange(sock, request("GET", "/v1/whoami"))
        assert ok.status == 200


async def test_a_head_of_more_than_100_header_lines_is_refused(home: Path) -> None:
    """Each header line costs h11 parsing time: 100 is the most a head may have."""
    async with host_at(home) as (_, sock):
        many = [(f"x-h{i}", "v") for i in range(99)]
        assert (await exchange(sock, request("GET", "/v1/whoami", headers=many))).status == 200
        many.append(("x-h99", "v"))
        refused = await exchange(sock, request("GET", "/v1/whoami", headers=many))
        assert refused.status == 431


async def test_bare_lf_and_missing_host_are_refused(home: Path) -> None:
    async with host_at(home) as (_, sock):
        bare = await exchange(sock, b"GET /v1/whoami HTTP/1.1\nhost: x\n\n")
        assert bare.status == 400
        no_host = await exchange(sock, b"GET /v1/whoami HTTP/1.1\r\n\r\n")
        assert no_host.status == 400


async def test_expect_100_continue_is_honoured(home: Path) -> None:
    """issue 8: a client that waits for 100 Continue gets it at once (no 1 s stall)."""
    async with host_at(home) as (host, sock):
        conn = await RawConn.open(sock)
        try:
            started = time.monotonic()
            await conn.send(
                PUT_HEAD + b"expect: 100-continue\r\ncontent-length: %d\r\n\r\n" % len(BODY)
            )
            interim = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 2)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            assert time.monotonic() - started < 0.5
            await conn.send(BODY)
            # The parser saw the 100 already; re-parse the final answer on its own.
            final = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 2)
            assert final.startswith(b"HTTP/1.1 200 OK\r\n")
        finally:
            conn.close()
        assert host.blackboard.get("k") is not None
        # A body over the limit is refused before it is sent: no 100, a 413, closed.
        conn = await RawConn.open(sock)
        try:
            await conn.send(PUT_HEAD + b"expect: 100-continue\r\ncontent-length: 99999\r\n\r\n")
            answer = await conn.answer()
            assert answer.status == 413 and answer.headers["connection"] == "close"
        finally:
            conn.close()
    # httpx sends no Expect; a client library that does (curl-like) works through h11 too.


async def test_head_answers_like_get_without_a_body(home: Path) -> None:
    """issue 15: HEAD on every GET route: the GET's status and headers, no body."""
    async with host_at(home) as (host, sock):
        host.blackboard.put("notes/a", {"x": 1}, "alice")
        router_gets = [
            r.template.replace("{key:path}", "notes/a")
            for r in host.http._serving[sock].listener.router.routes
            if r.method == "GET"
        ]
        assert "/v1/whoami" in router_gets
        for target in [*router_gets, "/v1/blackboard/entries/missing"]:
            conn = await RawConn.open(sock)
            try:
                await conn.send(request("GET", target))
                got = await conn.answer()
                await conn.send(request("HEAD", target))
                head = await conn.answer(head=True)
                assert head.status == got.status, target
                assert head.headers == got.headers, target
                assert head.body == b""
                # The connection is still in step: the next request is answered.
                await conn.send(request("GET", "/v1/whoami"))
                assert (await conn.answer()).status == 200
            finally:
                conn.close()


async def test_head_on_the_event_stream_holds_nothing(home: Path) -> None:
    async with host_at(home) as (host, _):
        paths = host.paths
        conn = await RawConn.open(paths.control_socket)
        try:
            await conn.send(request("HEAD", "/v1/events"))
            head = await conn.answer(head=True)
            assert head.status == 200 and head.headers["content-type"] == "application/x-ndjson"
        finally:
            conn.close()
        # The stream's producer never started: its subscription was closed (on_abandon).
        assert host.bus.subscriber_count == 0


async def test_405_carries_allow(home: Path) -> None:
    """issue 15: RFC 9110 requires Allow on a 405."""
    async with host_at(home) as (_, sock), agent_client(Paths.resolve(home), "alice") as alice:
        wrong = await alice.delete("/v1/publish")
        assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
        on_get = await alice.post("/v1/whoami")
        assert on_get.status_code == 405 and on_get.headers["allow"] == "GET, HEAD"
        assert on_get.json()["error"]["detail"]["allowed"] == ["GET", "HEAD"]
        key = await alice.post("/v1/blackboard/entries/k")
        assert set(key.headers["allow"].split(", ")) == {"GET", "HEAD", "PUT", "DELETE"}
        assert sock.exists()


async def test_pipelined_requests_are_answered_in_order(home: Path) -> None:
    async with host_at(home) as (_, sock):
        conn = await RawConn.open(sock)
        try:
            puts = b"".join(
                request("PUT", f"/v1/blackboard/entries/p{i}", b'{"value": %d}' % i)
                for i in range(5)
            )
            await conn.send(puts + request("GET", "/v1/blackboard/entries/p4"))
            for _ in range(5):
                assert (await conn.answer()).status == 200
            last = await conn.answer()
            assert last.status == 200 and b'"value":4' in last.body
        finally:
            conn.close()


async def test_a_long_pipeline_in_one_write_is_answered_in_order(home: Path) -> None:
    """2000 requests in one write (past the read-ahead limit and the buffer compaction):
    each is answered, in order, on the one connection."""
    async with host_at(home) as (_, sock):
        conn = await RawConn.open(sock)
        try:
            requests = b"".join(
                request("GET", f"/v1/blackboard/entries/p{i % 7}") for i in range(1999)
            )
            requests += request("PUT", "/v1/blackboard/entries/last", b'{"value": "end"}')
            sender = asyncio.create_task(conn.send(requests))
            statuses = [(await conn.answer()).status for _ in range(1999)]
            last = await conn.answer()
            await sender
            assert statuses == [404] * 1999
            assert last.status == 200 and b'"end"' in last.body
        finally:
            conn.close()


async def test_responses_stay_byte_compatible(home: Path) -> None:
    """Clients (httpx, the openai SDK, the agent runtime) see the same bytes as before."""
    async with host_at(home) as (_, sock):
        conn = await RawConn.open(sock)
        try:
            await conn.send(request("GET", "/v1/whoami"))
            raw = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 2)
            assert raw.startswith(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
            assert raw.endswith(b"connection: keep-alive\r\n\r\n")
        finally:
            conn.close()
        async with control_client(Paths.resolve(home)) as operator:
            status = await operator.get("/v1/status")
            assert status.status_code == 200 and status.headers["connection"] == "keep-alive"
        http10 = await exchange(sock, b"GET /v1/whoami HTTP/1.0\r\n\r\n")
        assert http10.status == 200 and http10.headers["connection"] == "close"


async def test_httpx_streaming_upload_is_accepted(home: Path) -> None:
    """A client that streams its body (chunked) is served, within max_body_bytes."""

    async def parts() -> AsyncIterator[bytes]:
        yield b'{"value": '
        yield b'"streamed"}'

    async with host_at(home) as (host, _), agent_client(Paths.resolve(home), "alice") as alice:
        put = await alice.put("/v1/blackboard/entries/s", content=parts())
        assert put.status_code == 200
        assert host.blackboard.get("s") is not None

        async def big() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b"x" * 1000

        try:
            response = await alice.put("/v1/blackboard/entries/s", content=big())
        except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
            pass  # the host refused and closed while the body was still being sent
        else:
            assert response.status_code == 413
        entry = host.blackboard.get("s")
        assert entry is not None and entry.value == "streamed"


async def test_the_openai_sdk_works_unmodified_over_the_agent_socket(home: Path) -> None:
    """The official `openai` client (httpx inside) parses our answers, streamed and not."""
    from openai import AsyncOpenAI

    from legion.gateway.vault import Vault
    from tests.fakes.provider import FakeProvider

    paths = Paths.resolve(home)
    paths.home.mkdir(parents=True, exist_ok=True)
    vault = Vault(paths.vault_db, paths.vault_key)
    vault.set("provider", "sk-openai-sdk-test-provider-key", tier="system")
    vault.close()
    with FakeProvider() as fake:
        text = f"""
[llm.models.m]
model = "openai/fake"
api_base = "{fake.base_url}"
credential = "provider"
input_cost_per_mtok = 1.0
output_cost_per_mtok = 1.0
[agents.alice]
model = "m"
"""
        transport = httpx.AsyncHTTPTransport(uds=str(paths.agent_socket("alice")))
        async with (
            Host.running(parse_config(text), paths),
            httpx.AsyncClient(transport=transport) as http,
        ):
            client = AsyncOpenAI(base_url="http://legion/v1", api_key="unused", http_client=http)
            said: Any = [{"role": "user", "content": "hello sdk"}]
            done = await client.chat.completions.create(model="m", messages=said)
            assert done.choices[0].message.content == "echo: hello sdk"
            stream = await client.chat.completions.create(model="m", messages=said, stream=True)
            parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
            assert "".join(parts) == "echo: hello sdk"
