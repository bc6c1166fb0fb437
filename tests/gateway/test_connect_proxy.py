"""issue 13: the host-side proxy of a browser (and, next, of an agent's MCP servers): one
Unix socket per principal, CONNECT and plain http:// under the egress address policy and
the principal's egress_hosts grants, every destination audited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from legion.gateway.connect_proxy import ConnectProxy
from legion.host import Host
from legion.mesh import audit
from tests.conftest import HostFactory, loopback_server

pytestmark = pytest.mark.anyio


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the proxy must still close after one answer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        conn = self.headers.get("Connection")
        body = f"path={self.path} host={self.headers.get('Host')} conn={conn}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Length", str(len(data) + 5))
        self.end_headers()
        self.wfile.write(b"got: " + data)


@pytest.fixture
def web() -> Iterator[ThreadingHTTPServer]:
    with loopback_server(Echo) as server:
        yield server


def config(port: int) -> str:
    return f"""
[egress]
allow = ["127.0.0.1:{port}"]

[agents.alice.permissions]
egress_hosts = ["127.0.0.1", "localhost", "rebind.test", "169.254.169.254", "::ffff:7f00:1"]

[agents.bob.permissions]
egress_hosts = ["example.org"]
"""


async def fake_resolver(name: str) -> list[str]:
    return {"rebind.test": ["127.0.0.1"], "localhost": ["127.0.0.1"]}.get(name, ["93.184.216.34"])


@asynccontextmanager
async def proxy_for(host: Host, agent: str, **kw: Any) -> AsyncIterator[Path]:
    path = host.paths.run / f"{agent}-proxy.sock"
    proxy = ConnectProxy(
        principal=agent,
        config=lambda: host.config.egress,
        permissions=host.permissions,
        audit=host.audit,
        action="browser.egress",
        resolver=fake_resolver,
        **kw,
    )
    await proxy.listen(path)
    try:
        yield path
    finally:
        await proxy.close()


async def exchange(path: Path, data: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(1 << 20), 10)
    finally:
        writer.close()


async def read_all(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while chunk := await asyncio.wait_for(reader.read(65536), 10):
        chunks.append(chunk)
    return b"".join(chunks)


async def test_connect_to_an_allowed_pair_tunnels_and_is_audited(
    running_host: HostFactory, web: ThreadingHTTPServer
) -> None:
    port = int(web.server_address[1])
    async with running_host(config(port)) as host, proxy_for(host, "alice") as path:
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(
            f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200")
        writer.write(b"GET /inside HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await read_all(reader)
        writer.close()
        assert b"path=/inside" in answer
        records = [
            r for r in audit.query(host.store.conn, actor="alice") if r.action == "browser.egress"
        ]
        assert [(r.target, r.decision, r.detail["method"]) for r in records] == [
            ("127.0.0.1", "allow", "CONNECT")
        ]
        assert records[0].detail["address"] == "127.0.0.1"


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("127.0.0.1:{other}", "loopback address"),
        ("169.254.169.254:80", "cloud metadata address"),
        ("rebind.test:{other}", "127.0.0.1: loopback address"),
        ("[::ffff:127.0.0.1]:{port}", "IPv4-mapped"),
        ("2130706433:{other}", "loopback address"),
    ],
)
async def test_refused_destinations_get_403_with_the_reason_and_are_audited(
    running_host: HostFactory, web: ThreadingHTTPServer, target: str, why: str
) -> None:
    port = int(web.server_address[1])
    with loopback_server(Echo) as other_server:
        other = int(other_server.server_address[1])
        target = target.format(port=port, other=other)
        async with running_host(config(port)) as host, proxy_for(host, "alice") as path:
            answer = await exchange(
                path, f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
            )
            assert answer.startswith(b"HTTP/1.1 403"), answer
            assert why.encode() in answer and b"[egress] allow" in answer
            plain_target = target.replace("[::ffff:127.0.0.1]", "[::ffff:127.0.0.1]")
            answer = await exchange(
                path, f"GET http://{plain_target}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            )
            assert answer.startswith(b"HTTP/1.1 403"), answer
            denied = [
                r
                for r in audit.query(host.store.conn, actor="alice")
                if r.action == "browser.egress" and r.decision == "deny"
            ]
            assert [r.detail["method"] for r in denied] == ["CONNECT", "GET"]
            assert all(why in r.detail["reason"] for r in denied)


async def test_a_host_outside_egress_hosts_is_refused(
    running_host: HostFactory, web: ThreadingHTTPServer
) -> None:
    port = int(web.server_address[1])
    async with running_host(config(port)) as host, proxy_for(host, "bob") as path:
        answer = await exchange(
            path, f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        )
        assert answer.startswith(b"HTTP/1.1 403") and b"egress_hosts" in answer
        (record,) = [
            r for r in audit.query(host.store.conn, actor="bob") if r.action == "browser.egress"
        ]
        assert record.decision == "deny" and record.detail["reason"].startswith("permission_denied")


async def test_plain_http_is_one_request_per_connection_with_connection_close(
    running_host: HostFactory, web: ThreadingHTTPServer
) -> None:
    """A client cannot slip a second request (for another host) through a checked
    connection: the proxy answers the first with Connection: close and closes."""
    port = int(web.server_address[1])
    async with running_host(config(port)) as host, proxy_for(host, "alice") as path:
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(
            f"GET http://127.0.0.1:{port}/first?q=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Proxy-Connection: keep-alive\r\nConnection: keep-alive\r\n\r\n"
            "GET http://169.254.169.254/latest HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n".encode()
        )
        answer = await read_all(reader)
        writer.close()
        assert answer.count(b"HTTP/1.1 ") == 1, answer
        assert b"path=/first?q=1" in answer and b"conn=close" in answer
        assert b"connection: close" in answer.lower()
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(
            f"POST http://127.0.0.1:{port}/form HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Content-Length: 5\r\n\r\nhello".encode()
        )
        answer = await read_all(reader)
        writer.close()
        assert answer.endswith(b"got: hello")
        methods = [
            r.detail["method"]
            for r in audit.query(host.store.conn, actor="alice")
            if r.action == "browser.egress"
        ]
        assert methods == ["GET", "POST"]  # the smuggled second request never reached policy


async def test_connections_beyond_the_cap_are_refused_and_the_proxy_keeps_serving(
    running_host: HostFactory, web: ThreadingHTTPServer
) -> None:
    port = int(web.server_address[1])
    async with running_host(config(port)) as host, proxy_for(host, "alice", max_tunnels=4) as path:
        held = [await asyncio.open_unix_connection(str(path)) for _ in range(4)]
        for _, writer in held:  # an incomplete head: each holds a slot
            writer.write(b"CONNECT 127.0.0.1")
            await writer.drain()
        await asyncio.sleep(0)  # let the proxy accept them
        deadline = asyncio.get_running_loop().time() + 5
        while True:
            answer = await exchange(path, b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: a:1\r\n\r\n")
            if answer.startswith(b"HTTP/1.1 503") or asyncio.get_running_loop().time() > deadline:
                break
        assert answer.startswith(b"HTTP/1.1 503"), answer
        for _, writer in held:
            writer.close()
        deadline = asyncio.get_running_loop().time() + 5
        while True:  # slots come back once the held connections are gone
            answer = await exchange(
                path, f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: a:{port}\r\n\r\n".encode()
            )
            if answer.startswith(b"HTTP/1.1 200") or asyncio.get_running_loop().time() > deadline:
                break
        assert answer.startswith(b"HTTP/1.1 200"), answer


async def test_junk_and_oversized_heads_close_the_connection(
    running_host: HostFactory, web: ThreadingHTTPServer
) -> None:
    port = int(web.server_address[1])
    async with running_host(config(port)) as host, proxy_for(host, "alice") as path:
        answer = await exchange(path, b"\x16\x03\x01 not http at all\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400"), answer
        answer = await exchange(path, b"GET / HTTP/1.1\r\nX: " + b"a" * 40000 + b"\r\n\r\n")
        assert not answer.startswith(b"HTTP/1.1 200")
        answer = await exchange(path, b"GET /relative HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400")
        answer = await exchange(path, b"GET ftp://127.0.0.1/ HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400")
        assert not [
            r
            for r in audit.query(host.store.conn, actor="alice")
            if r.decision == "allow" and r.action == "browser.egress"
        ]
