"""The egress proxy against real loopback HTTP(S) servers.

Loopback is forbidden to agents, so these servers are reached only through exact
`[egress] allow` pairs. A guard on the socket layer refuses (and records) any connection
to anything but 127.0.0.1 / ::1, so a broken check can never send traffic elsewhere.
"""

from __future__ import annotations

import base64
import datetime
import gzip
import html
import ipaddress
import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import anyio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from legion.config import parse_config
from legion.errors import LegionError
from legion.gateway.egress import EgressProxy
from legion.gateway.redact import MASK, Redactor
from legion.gateway.vault import Vault
from legion.mesh import audit
from legion.mesh.audit import AuditLog
from legion.mesh.permissions import Permissions
from legion.store import Store
from legion.wire.egress import EgressRequest

SECRET = "sk-live-7Hq2Xw9Lm4Pz8Rt6"
OTHER_SECRET = "ghp-other-Zy5Kd3Wq8Vn1"
SYSTEM_SECRET = "sk-provider-Bb4Nn7Mm2Qq9"
CRLF_SECRET = "crlf-Vv8\r\nInjected: yes"
WEIRD_SECRET = "we/ird#va?l ue%41"
STRICT_SECRET = "tok-https-Qw7Lm2Xc9Vb4"  # bound without --allow-http
# 25 bytes (not a multiple of 3), with bytes whose base64 holds + and / (- and _ URL-safe)
ENC_SECRET = "~>?Zq8~Lm2>Tw7?Xc4~>Yp3?W"
ALL_SECRETS = (SECRET, OTHER_SECRET, SYSTEM_SECRET, CRLF_SECRET, WEIRD_SECRET, STRICT_SECRET)
LOOPBACK = {"127.0.0.1", "::1"}


# --- servers ---------------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Server:
    httpd: ThreadingHTTPServer
    scheme: str = "http"
    seen: list[Seen] = field(default_factory=list)
    sni: list[str | None] = field(default_factory=list)
    stored: bytes = b""

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up (timeouts, truncation) are expected here


def make_handler(server: Server, stop: threading.Event) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self.handle_any()

        do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

        def reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def handle_any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            split = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(split.query).items()}
            server.seen.append(Seen(self.command, self.path, dict(self.headers.items()), body))
            if split.path == "/echo":
                echoed = {
                    "method": self.command,
                    "path": self.path,
                    "headers": dict(self.headers.items()),
                    "body": body.decode("utf-8", "replace"),
                }
                auth = self.headers.get("Authorization", "")
                self.reply(200, json.dumps(echoed).encode(), {"X-Echo-Auth": auth})
            elif split.path == "/reflect":  # the X-Key header, re-encoded, in body and header
                form = encode(query["as"], self.headers.get("X-Key", ""))
                decoy = encode(query["as"], query.get("decoy", ""))
                body = json.dumps({"form": form, "decoy": decoy}).encode()
                self.reply(200, body, {"X-Reflect": form, "Content-Type": "application/json"})
            elif split.path == "/store":  # a service that keeps what it is sent...
                server.stored = body
                self.reply(200, b"stored")
            elif split.path == "/stored":  # ...and hands it back to whoever asks
                self.reply(200, server.stored)
            elif split.path == "/redirect":
                code = int(query.get("code", "302"))
                self.reply(code, b"moved", {"Location": query["to"]})
            elif split.path == "/huge":
                self.reply(200, b"a" * int(query["n"]), {"Content-Type": "text/plain"})
            elif split.path == "/tail":  # `pad` bytes of filler, then the secret sent to us
                secret = self.headers.get("X-Key", "")
                self.reply(200, b"x" * int(query["pad"]) + secret.encode())
            elif split.path == "/gzip":
                payload = gzip.compress(json.dumps(dict(self.headers.items())).encode())
                self.reply(200, payload, {"Content-Encoding": "gzip"})
            elif split.path == "/binary":
                self.reply(200, bytes(range(256)), {"Content-Type": "application/octet-stream"})
            elif split.path == "/sleep":
                stop.wait(float(query["s"]))
                self.reply(200, b"late")
            else:
                self.reply(404, b"no such path")

    return Handler


def encode(how: str, value: str) -> str:
    """How a careless server might reflect a credential it was sent."""
    raw = value.encode()
    forms = {
        "raw": value,
        "b64": base64.b64encode(raw).decode(),
        "b64-nopad": base64.b64encode(raw).decode().rstrip("="),
        "b64url": base64.urlsafe_b64encode(raw).decode(),
        "b64url-nopad": base64.urlsafe_b64encode(raw).decode().rstrip("="),
        "hex": raw.hex(),
        "HEX": raw.hex().upper(),
        "basic": "Basic " + base64.b64encode(b"user:" + raw).decode(),
        "basic-1": "Basic " + base64.b64encode(b"u:" + raw).decode(),
        "basic-2": "Basic " + base64.b64encode(b"ab:" + raw + b":tail").decode(),
        "json": json.dumps(value)[1:-1],
        "percent": quote(value, safe=""),
        "percent-lower": re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), quote(value, safe="")),
        "html": html.escape(value),
    }
    return forms[how]


ENCODINGS = ["raw", "b64", "b64-nopad", "b64url", "b64url-nopad", "hex", "HEX"]
ENCODINGS += ["basic", "basic-1", "basic-2", "json", "percent", "percent-lower", "html"]
# What stays beside the mask: only whole base64 groups of the bytes around the secret
# ("use" of "user:", "ab:" and "ail" of ":tail"); the groups mixing its bits are masked.
KEPT = {"basic": "Basic dXNl", "basic-1": "Basic ", "basic-2": "Basic YWI6YWls"}


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    stop = threading.Event()
    running: list[tuple[ThreadingHTTPServer, threading.Thread]] = []

    def start(tls: ssl.SSLContext | None = None) -> Server:
        httpd = QuietServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
        server = Server(httpd, "https" if tls else "http")
        httpd.RequestHandlerClass = make_handler(server, stop)
        if tls is not None:
            tls.sni_callback = lambda _sock, name, _ctx: server.sni.append(name)
            httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        running.append((httpd, thread))
        return server

    yield start
    stop.set()
    for httpd, thread in running:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture(autouse=True)
def connections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every TCP connection attempted; anything but loopback is refused before it leaves."""
    attempts: list[str] = []
    real = anyio.connect_tcp

    async def guarded(remote_host: Any, remote_port: int, **kwargs: Any) -> Any:
        attempts.append(f"{remote_host}:{remote_port}")
        if str(remote_host) not in LOOPBACK:
            raise OSError(f"test guard: refusing a connection to {remote_host}")
        return await real(remote_host, remote_port, **kwargs)

    monkeypatch.setattr(anyio, "connect_tcp", guarded)
    return attempts


# --- the proxy under test ------------------------------------------------------------

NAMES = {
    "a.test": ["127.0.0.1"],
    "b.test": ["127.0.0.1"],
    "localhost": ["127.0.0.1", "::1"],
    "internal.test": ["10.0.0.1"],
    "metadata.test": ["169.254.169.254"],
    "mixed.test": ["127.0.0.1", "10.0.0.5"],
    "pinned.test": ["127.0.0.1"],
    "wrong.test": ["127.0.0.1"],
}


@dataclass
class Env:
    home: Path
    store: Store
    vault: Vault
    lookups: list[str] = field(default_factory=list)
    proxies: list[EgressProxy] = field(default_factory=list)

    async def resolve(self, host: str) -> list[str]:
        self.lookups.append(host)
        if host not in NAMES:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return NAMES[host]

    def proxy(
        self,
        allow: list[str],
        *,
        max_response_bytes: int = 4096,
        timeout_s: float = 10.0,
        max_redirects: int = 3,
        ssl_context: ssl.SSLContext | None = None,
    ) -> EgressProxy:
        allow_toml = ", ".join(json.dumps(a) for a in allow)
        config = parse_config(
            f"""
[egress]
allow = [{allow_toml}]
max_response_bytes = {max_response_bytes}
timeout_s = {timeout_s}
max_redirects = {max_redirects}

[agents.bot.permissions]
allowed_credentials = ["api", "other", "openai", "ghost", "crlf", "weird", "strict", "enc"]
egress_hosts = ["**"]

[agents.globber.permissions]
allowed_credentials = ["a*"]
egress_hosts = ["**"]

[agents.plain]
role = "no credentials at all"
[agents.plain.permissions]
egress_hosts = ["**"]

[agents.walled]
role = "no egress grant at all"
[agents.walled.permissions]
egress_hosts = ["only.example.org"]
"""
        )
        proxy = EgressProxy(
            config=config.egress,
            vault=self.vault,
            # as the host builds it: audit records mask every vault value
            audit=AuditLog(self.store.conn, redact=Redactor(self.vault.values).redact),
            permissions=Permissions(config),
            resolver=self.resolve,
            ssl_context=ssl_context,
        )
        self.proxies.append(proxy)
        return proxy

    def audit_text(self) -> str:
        rows = self.store.conn.execute("SELECT * FROM audit ORDER BY seq").fetchall()
        return json.dumps([list(map(str, row)) for row in rows])

    def records(self) -> list[audit.AuditRecord]:
        return [r for r in audit.query(self.store.conn) if r.action == "egress.http"]


@pytest.fixture
def env(home: Path) -> Iterator[Env]:
    store = Store(home / "host.db")
    vault = Vault(home / "vault.db", home / "vault.key")
    # The loopback servers speak plain http (except the TLS tests): bindings allow it.
    vault.set("api", SECRET, bound_hosts=["127.0.0.1", "a.test", "pinned.test"], allow_http=True)
    vault.set("other", OTHER_SECRET, bound_hosts=["elsewhere.example"])
    vault.set("openai", SYSTEM_SECRET, tier="system")
    vault.set("crlf", CRLF_SECRET, bound_hosts=["127.0.0.1"], allow_http=True)
    vault.set("weird", WEIRD_SECRET, bound_hosts=["127.0.0.1"], allow_http=True)
    vault.set("strict", STRICT_SECRET, bound_hosts=["127.0.0.1", "pinned.test"])
    vault.set("enc", ENC_SECRET, bound_hosts=["127.0.0.1"], allow_http=True)
    e = Env(home, store, vault)
    yield e
    text = e.audit_text()
    for secret in ALL_SECRETS:
        assert secret not in text and quote(secret, safe="") not in text
        assert json.dumps(secret)[1:-1] not in text
    assert audit.verify(store.conn).ok
    vault.close()
    store.close()


async def refused(proxy: EgressProxy, req: EgressRequest, agent: str = "bot") -> LegionError:
    with pytest.raises(LegionError) as info:
        await proxy.request(agent, req)
    for secret in ALL_SECRETS:
        assert secret not in str(info.value) and secret not in json.dumps(info.value.detail)
    return info.value


def get(url: str, **kw: Any) -> EgressRequest:
    return EgressRequest(method="GET", url=url, **kw)


# --- address checks --------------------------------------------------------------------


@pytest.mark.anyio
async def test_allow_listed_pair_is_reached(
    env: Env, serve: Callable[..., Server], connections: list[str]
) -> None:
    a = serve()
    proxy = env.proxy([f"127.0.0.1:{a.port}"])
    resp = await proxy.request("bot", get(a.url("/echo?x=1")))
    assert resp.status == 200 and not resp.truncated and resp.redirects == 0
    echoed = json.loads(resp.body or "")
    assert echoed["path"] == "/echo?x=1"
    assert echoed["headers"]["Host"] == f"127.0.0.1:{a.port}"
    assert echoed["headers"]["Accept-Encoding"] == "identity"
    assert resp.final_url == a.url("/echo?x=1")
    assert connections == [f"127.0.0.1:{a.port}"]
    (record,) = env.records()
    assert record.decision == "allow" and record.target == "127.0.0.1"
    assert record.detail["status"] == 200 and record.detail["bytes"] == len(resp.body or "")
    assert record.detail["method"] == "GET" and record.detail["address"] == "127.0.0.1"


def forbidden_urls(port: int) -> list[str]:
    teredo = ipaddress.IPv6Address(
        (0x20010000 << 96)
        | (int(ipaddress.IPv4Address("8.8.8.8")) << 64)
        | (int(ipaddress.IPv4Address("127.0.0.1")) ^ 0xFFFFFFFF)
    )
    return [
        f"http://127.0.0.1:{port}/echo",
        f"http://localhost:{port}/echo",
        f"http://2130706433:{port}/echo",  # decimal
        f"http://0177.0.0.1:{port}/echo",  # octal
        f"http://0x7f.1:{port}/echo",  # hex, short
        f"http://127.1:{port}/echo",  # short
        f"http://[::1]:{port}/echo",
        f"http://[::ffff:127.0.0.1]:{port}/echo",  # IPv4-mapped
        f"http://[::127.0.0.1]:{port}/echo",  # IPv4-compatible
        f"http://[64:ff9b::7f00:1]:{port}/echo",  # NAT64
        f"http://[2002:7f00:1::1]:{port}/echo",  # 6to4
        f"http://[{teredo}]:{port}/echo",  # Teredo client
        "http://10.0.0.1/",
        "http://192.168.1.1:8080/",
        "http://172.16.5.5/",
        "http://100.64.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://0251.0376.0251.0376/latest/meta-data/",  # metadata, octal
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://[fe80::1%25eth0]/",
        "http://224.0.0.1/",
        "http://0.0.0.0/",
        "http://internal.test/",  # a name that resolves to a private address
        "http://metadata.test/",
    ]


@pytest.mark.anyio
@pytest.mark.parametrize("index", range(len(forbidden_urls(1))))
async def test_forbidden_destinations_are_refused_unsent(
    env: Env, serve: Callable[..., Server], connections: list[str], index: int
) -> None:
    a = serve()
    other = serve()
    proxy = env.proxy([f"127.0.0.1:{other.port}"])  # a's port is not open
    url = forbidden_urls(a.port)[index]
    exc = await refused(proxy, get(url))
    assert (exc.status, exc.code) == (403, "egress_denied"), exc.message
    assert "[egress] allow" in exc.message
    assert a.seen == [] and connections == []
    (record,) = env.records()
    assert record.decision == "deny" and record.detail["reason"].startswith("egress_denied")


@pytest.mark.anyio
async def test_any_forbidden_address_refuses(
    env: Env, serve: Callable[..., Server], connections: list[str]
) -> None:
    a = serve()
    proxy = env.proxy([f"127.0.0.1:{a.port}"])  # 127.0.0.1 is open, 10.0.0.5 is not
    exc = await refused(proxy, get(f"http://mixed.test:{a.port}/echo"))
    assert exc.code == "egress_denied" and "10.0.0.5" in exc.message
    assert a.seen == [] and connections == []


@pytest.mark.anyio
async def test_allow_list_by_name_and_pinned_address(
    env: Env, serve: Callable[..., Server], connections: list[str]
) -> None:
    a = serve()
    proxy = env.proxy([f"a.test:{a.port}"])
    resp = await proxy.request("bot", get(f"http://a.test:{a.port}/echo"))
    assert json.loads(resp.body or "")["headers"]["Host"] == f"a.test:{a.port}"
    assert env.lookups == ["a.test"]  # resolved once, then connected to that address
    assert connections == [f"127.0.0.1:{a.port}"]
    # The pair is exact: the same server by IP, or another port, stays closed.
    assert (await refused(proxy, get(a.url("/echo")))).code == "egress_denied"
    assert (await refused(proxy, get(f"http://a.test:{a.port + 1}/"))).code == "egress_denied"
    assert len(a.seen) == 1


@pytest.mark.anyio
async def test_decimal_literal_of_an_allow_listed_address(
    env: Env, serve: Callable[..., Server]
) -> None:
    a = serve()
    proxy = env.proxy([f"127.0.0.1:{a.port}"])
    resp = await proxy.request("bot", get(f"http://2130706433:{a.port}/echo"))
    assert resp.status == 200 and len(a.seen) == 1


@pytest.mark.anyio
@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/file",
        "file:///etc/passwd",
        "gopher://127.0.0.1:70/",
        "http:///nohost",
        "http://user:pw@example.com/",
        "http://$CRED{api}.example.com/",
        "http://example.com:99999/",
        "http://exa mple.com/",
        "not a url",
    ],
)
async def test_invalid_urls(env: Env, url: str, connections: list[str]) -> None:
    proxy = env.proxy([])
    exc = await refused(proxy, get(url))
    assert (exc.status, exc.code) == (400, "invalid_url"), exc.message
    assert connections == [] and env.lookups == []
    assert env.records()[-1].decision == "deny"


@pytest.mark.anyio
async def test_header_injection_is_refused(env: Env, serve: Callable[..., Server]) -> None:
    a = serve()
    proxy = env.proxy([f"127.0.0.1:{a.port}"])
    exc = await refused(proxy, get(a.url("/echo"), headers={"X-A": "1\r\nEvil: yes"}))
    assert exc.code == "invalid_header"
    exc = await refused(proxy, get(a.url("/echo"), headers={"Bad Name": "1"}))
    assert exc.code == "invalid_header"
    assert a.seen == []


@pytest.mark.anyio
async def test_agent_cannot_set_host_or_framing(env: Env, serve: Callable[..., Server]) -> None:
    a = serve()
    proxy = env.proxy([f"127.0.0.1:{a.port}"])
    headers = {"Host": "evil.example", "Content-Length": "999", "Accept-Encoding": "gzip"}
    resp = await proxy.request(
        "bot", EgressRequest(method="POST", url=a.url("/echo"), body="hi", headers=headers)
    )
    seen = a.seen[0]
    assert seen.headers["Host"] == f"127.0.0.1:{a.port}"
    assert seen.headers["Content-Length"] == "2" and seen.body == b"hi"
    assert seen.headers["Accept-Encoding"] == "identity"
    assert json.loads(resp.body or "")["body"] == "hi"


# --- credentials -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_credential_substituted_and_echo_scrubbed(
    env: Env, serve: Callable[..., Server]
) -> None:
    a = serve()
    proxy = env.proxy([f"127.0.0.1:{a.port}"])
    req = EgressRequest(
        method="POST",
        url=a.url("/echo?key=$CRED{api}"),
        headers={"Authorization": "Bearer $CRED{api}", "Content-Type": "text/plain"},
        body="token=$CRED{api}",
    )
    resp = await proxy.request("bot", req)
    seen = a.seen[0]
    assert seen.headers["Authorization"] == f"Bearer {SECRET}"
    assert seen.path == f"/echo?key={SECRET}" and seen.body == f"token={SECRET}".encode()
    assert SECRET not in resp.model_dump_json()
    echoed = json.loads(resp.body or "")
    assert echoed["headers"]["Authorization"] == f"Bearer {MASK}"
    assert echoed["body"] == f"token={MASK}" and echoed["path"] == f"/echo?key={MASK}"
    assert resp.headers["x-echo-auth"] == f"Bearer {MASK}"
    assert resp.final_url == req.url  # the agent's own URL, handles and all
    (record,) = env.records()
    assert record.decision == "allow" and record.detail["credentials"] == ["api"]
    assert "$CRED{api}" in record.detail["url"]


@pytest.mark.anyio
async def test_credential_in_binary_body(env: Env, serve: Callable[..., Server]) -> None:
    a = serve()
    proxy = env.proxy([f"127.0.0.1:{a.port}"])
    raw = b"\x00\x01key=$CRED{api}\xff"
    req = EgressRequest(
        method="PUT", url=a.url("/echo"), body_base64=base64.b64encode(raw).decode()
    )
    await proxy.request("bot", req)
    assert a.seen[0].body == b"\x00\x01key=" + SECRET.encode() + b"\xff"


@pytest.mark.anyio
async def test_credential_allowed_by_glob(env: Env, serve: Callable[..., Server]) -> None:
    a = serve()
    proxy = env.proxy([f"127.0.0.1:{a.port}"])
    await proxy.request("globber", get(a.url("/echo"), headers={"X-Key": "$CRED{api}"}))
    assert a.seen[0].headers["X-Key"] == SECRET


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("agent", "handle", "why"),
    [
        ("plain", "api", "not in the agent's allowed_credentials"),
        ("globber", "other", "not in the agent's allowed_credentials"),
        ("bot", "other", "bound to elsewhere.example"),
        ("bot", "openai", "system-tier"),
        ("bot", "ghost", "no credential named 'ghost' in the vault"),
        ("stranger", "api", "not in the agent's allowed_credentials"),
    ],
)
@pytest.mark.parametrize("where", ["header", "url", "body"])
async def test_credential_refused_and_nothing_sent(
    env: Env,
    serve: Callable[..., Server],
    connections: list[str],
    agent: str,
    handle: str,
    why: str,
    where: str,
) -> None:
    a = serve()
    proxy = env.proxy([f"127.0.0.1:{a.port}"])
    tag = f"$CRED{{{handle}}}"
    req = {
        "header": EgressRequest(url=a.url("/echo"), headers={"Authorization": f"Bearer {tag}"}),
        "url": EgressRequest(url=a.url(f"/echo?k={tag}")),
        "body": EgressRequest(method="POST", url=a.url("/echo"), body=f"k={tag}"),
    }[where]
    exc = await refused(proxy, req, agent)
    assert (exc.status, exc.code) == (403, "credential_denied")
    if "bound to" in why:  # granted: the agent may learn where its credential goes
        assert why in exc.message
    else:  # issue 7: missing, system-tier and not granted look the same to the agent
        assert exc.message == (
            f"credential {handle!r} is not available to this agent: the operator must list "
            "it in the agent's allowed_credentials and store it as an agent-tier credential"
        )
        assert exc.detail == {"credential": handle}
    assert a.seen == [] and connections == [] and env.lookups == []
    (record,) = env.records()
    assert record.decision == "deny" and record.actor == agent
    # the operator's audit record says which it was
    assert (
        record.detail["reason"].startswith("credential_denied") and why in record.detail["reason"]
    )


@pytest.mark.anyio
async def test_bound_credential_not_sent_to_another_host(
    env: Env, serve: Callable[..., Server]
) -> None:
    a = serve()
    proxy = env.proxy([f"b.test:{a.port}"])  # reachable, but api is not bound to b.test
    exc = await refused(proxy, get(f"http://b.test:{a.port}/echo?k=$CRED{{api}}"))
    assert exc.code == "credential_denied" and a.seen == []


@pytest.mark.anyio
async def test_credential_with_a_line_break_is_not_sent(
    env: Env, serve: Callable[..., Server]
) -> None:
    a = serve()
    proxy = env.proxy([f"127.0.0.1:{a.port}"])
    exc = await refused(proxy, get(a.url("/echo"), headers={"X-Key": "$CRED{crlf}"}))
    assert exc.code == "invalid_header" and "Injected" not in exc.message
    assert a.seen == []


@pytest.mark.anyio
async def test_url_encoded_credential_is_scrubbed_too(
    env: Env, serve: Callable[..., Server]
) -> None:
    a = serve()
    proxy = env.proxy([f"127.0.0.1:{a.port}"])
    resp = await proxy.request("bot", get(a.url("/echo?k=$CRED{weird}&x=1")))
    sent = a.seen[0].path
    assert parse_qs(urlsplit(sent).query) == {"k": [WEIRD_SECRET], "x": ["1"]}
    echoed = json.loads(resp.body or "")
    assert echoed["path"] == f"/echo?k={MASK}&x=1"
    assert WEIRD_SECRET not in resp.model_dump_json()


@pytest.mark.anyio
@pytest.mark.parametrize("how", ENCODINGS)
async def test_credential_echoed_in_another_encoding_is_scrubbed(
    env: Env, serve: Callable[..., Server], how: str
) -> None:
    """issue 7: a bound host reflecting the substituted credential in base64 (std and
    URL-safe, padded or not), hex (either case), inside Basic auth's base64 of user:secret
    at any alignment, JSON-escaped or percent-encoded: masked in body and headers, with no
    bits of it left beside the mask. The same encoding of another value is left alone."""
    a = serve()
    proxy = env.proxy([f"127.0.0.1:{a.port}"])
    decoy = "not-the-secret-9Tz4Wq"
    url = a.url(f"/reflect?as={how}&decoy={quote(decoy)}")
    resp = await proxy.request("bot", get(url, headers={"X-Key": "$CRED{enc}"}))
    assert a.seen[0].headers["X-Key"] == ENC_SECRET
    reflected = json.loads(resp.body or "")
    form = encode(how, ENC_SECRET)
    assert form not in (resp.body or "") and form not in resp.headers["x-reflect"]
    assert MASK in reflected["form"] and MASK in resp.headers["x-reflect"]
    assert reflected["form"].replace(MASK, "") == KEPT.get(how, "")
    assert reflected["decoy"] == encode(how, decoy)


@pytest.mark.anyio
async def test_a_credential_stored_by_a_bound_host_is_scrubbed_when_read_back(
    env: Env, serve: Callable[..., Server]
) -> None:
    """issue 7: an agent that has a bound host store its credential (sent with $CRED in
    one request) and reads it back in another request that substitutes nothing still gets
    it masked: egress scrubs every credential the agent is granted, in every response."""
    a = serve()
    proxy = env.proxy([f"127.0.0.1:{a.port}"])
    store = EgressRequest(method="POST", url=a.url("/store"), body="token=$CRED{api} b64=")
    await proxy.request("bot", store)
    assert a.seen[0].body == f"token={SECRET} b64=".encode()
    back = await proxy.request("bot", get(a.url("/stored")))
    assert back.body == f"token={MASK} b64="


@pytest.mark.anyio
async def test_egress_never_masks_what_the_agent_was_not_granted(
    env: Env, serve: Callable[..., Server]
) -> None:
    """issue 7: an agent granted no credential gets an echo of another agent's secret or a
    system secret back as it sent it (masking it would tell it the guess was right)."""
    a = serve()
    proxy = env.proxy([f"127.0.0.1:{a.port}"])
    for guess in (SECRET, SYSTEM_SECRET, SECRET[:-1] + "x"):
        resp = await proxy.request(
            "plain", EgressRequest(method="POST", url=a.url(f"/echo?q={guess}"), body=guess)
        )
        echoed = json.loads(resp.body or "")
        assert echoed["body"] == guess and echoed["path"] == f"/echo?q={guess}"


@pytest.mark.anyio
async def test_credential_needs_allow_http_for_plain_http(
    env: Env,
    serve: Callable[..., Server],
    connections: list[str],
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    """issue 7: a binding without --allow-http refuses plain http (nothing sent, audited,
    the error says how to fix it); over https it is sent; with --allow-http, http works."""
    a = serve()
    proxy = env.proxy([f"127.0.0.1:{a.port}"])
    for where in ("header", "url", "body"):
        req = {
            "header": get(a.url("/echo"), headers={"Authorization": "Bearer $CRED{strict}"}),
            "url": get(a.url("/echo?k=$CRED{strict}")),
            "body": EgressRequest(method="POST", url=a.url("/echo"), body="k=$CRED{strict}"),
        }[where]
        exc = await refused(proxy, req)
        assert (exc.status, exc.code) == (403, "credential_needs_https")
        assert "--allow-http" in exc.message and "https://" in exc.message
    assert a.seen == [] and connections == []
    records = env.records()
    assert [r.decision for r in records] == ["deny"] * 3
    assert all(r.detail["reason"].startswith("credential_needs_https") for r in records)
    # a binding that allows http: sent
    await proxy.request("bot", get(a.url("/echo"), headers={"X-Key": "$CRED{api}"}))
    assert a.seen[0].headers["X-Key"] == SECRET
    # https to a bound host: sent
    server_ctx, client_ctx = tls
    s = serve(server_ctx)
    secure = env.proxy([f"pinned.test:{s.port}"], ssl_context=client_ctx)
    resp = await secure.request(
        "bot", get(f"https://pinned.test:{s.port}/echo", headers={"X-Key": "$CRED{strict}"})
    )
    assert resp.status == 200 and s.seen[0].headers["X-Key"] == STRICT_SECRET


@pytest.mark.anyio
async def test_redirect_to_plain_http_does_not_carry_an_https_only_credential(
    env: Env, serve: Callable[..., Server], tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    """issue 7: a 307 from https to http re-sends the body; a credential bound for https
    only is refused on the http hop, and nothing reaches the plain server."""
    server_ctx, client_ctx = tls
    s, plain = serve(server_ctx), serve()
    proxy = env.proxy(
        [f"pinned.test:{s.port}", f"pinned.test:{plain.port}"], ssl_context=client_ctx
    )
    to = quote(f"http://pinned.test:{plain.port}/echo")
    req = EgressRequest(
        method="POST",
        url=f"https://pinned.test:{s.port}/redirect?code=307&to={to}",
        body="k=$CRED{strict}",
    )
    exc = await refused(proxy, req)
    assert exc.code == "credential_needs_https"
    assert len(s.seen) == 1 and plain.seen == []


# --- redirects -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_cross_origin_redirect_drops_credentials(
    env: Env, serve: Callable[..., Server]
) -> None:
    a, b = serve(), serve()
    proxy = env.proxy([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"])
    target = b.url("/echo")
    headers = {
        "Authorization": "Bearer $CRED{api}",
        "X-Api-Key": "key $CRED{api}",
        "Cookie": "session=1",
        "Proxy-Authorization": "Basic abc",
        "X-Plain": "kept",
    }
    resp = await proxy.request("bot", get(a.url(f"/redirect?to={quote(target)}"), headers=headers))
    assert resp.status == 200 and resp.redirects == 1 and resp.final_url == target
    assert a.seen[0].headers["Authorization"] == f"Bearer {SECRET}"
    assert a.seen[0].headers["X-Api-Key"] == f"key {SECRET}"
    (at_b,) = b.seen
    for name in ("Authorization", "X-Api-Key", "Cookie", "Proxy-Authorization"):
        assert name not in at_b.headers
    assert at_b.headers["X-Plain"] == "kept"
    assert SECRET not in json.dumps(at_b.headers)
    (record,) = env.records()
    assert record.detail["redirects"] == 1 and record.detail["final_url"] == target


@pytest.mark.anyio
async def test_same_origin_redirect_keeps_credentials(
    env: Env, serve: Callable[..., Server]
) -> None:
    a = serve()
    proxy = env.proxy([f"127.0.0.1:{a.port}"])
    req = get(a.url("/redirect?to=/echo"), headers={"Authorization": "Bearer $CRED{api}"})
    resp = await proxy.request("bot", req)
    assert resp.redirects == 1 and resp.final_url == a.url("/echo")
    assert [s.headers["Authorization"] for s in a.seen] == [f"Bearer {SECRET}"] * 2


@pytest.mark.anyio
@pytest.mark.parametrize(
    "to",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://[::ffff:127.0.0.1]:{closed}/echo",
        "http://localhost:{closed}/echo",
        "http://2130706433:{closed}/echo",
    ],
)
async def test_redirect_to_forbidden_address_is_refused(
    env: Env, serve: Callable[..., Server], connections: list[str], to: str
) -> None:
    a, closed = serve(), serve()
    proxy = env.proxy([f"127.0.0.1:{a.port}"])
    location = to.format(closed=closed.port)
    exc = await refused(proxy, get(a.url(f"/redirect?to={quote(location)}")))
    assert exc.code == "egress_denied"
    assert len(a.seen) == 1 and closed.seen == []
    assert connections == [f"127.0.0.1:{a.port}"]
    (record,) = env.records()
    assert record.decision == "deny" and record.detail["final_url"] is not None


@pytest.mark.anyio
async def test_redirect_carrying_a_secret_to_an_unbound_host_is_refused(
    env: Env, serve: Callable[..., Server]
) -> None:
    a, b = serve(), serve()
    proxy = env.proxy([f"127.0.0.1:{a.port}", f"b.test:{b.port}"])
    # The (bound) server reflects the substituted value into its redirect target.
    to = quote(f"http://b.test:{b.port}/echo?k=", safe="") + "$CRED{api}"
    exc = await refused(proxy, get(a.url(f"/redirect?to={to}")))
    assert exc.code == "credential_denied" and "b.test" in exc.message
    assert len(a.seen) == 1 and b.seen == []


@pytest.mark.anyio
async def test_307_body_is_resent_only_where_the_credential_is_bound(
    env: Env, serve: Callable[..., Server]
) -> None:
    a, b = serve(), serve()
    proxy = env.proxy([f"127.0.0.1:{a.port}", f"b.test:{b.port}"])
    target = quote(f"http://b.test:{b.port}/echo", safe="")
    req = EgressRequest(
        method="POST", url=a.url(f"/redirect?code=307&to={target}"), body="k=$CRED{api}"
    )
    exc = await refused(proxy, req)
    assert exc.code == "credential_denied" and b.seen == []
    # Without a credential the body follows a 307.
    plain = EgressRequest(method="POST", url=req.url, body="hello")
    resp = await proxy.request("bot", plain)
    assert resp.redirects == 1 and b.seen[0].method == "POST" and b.seen[0].body == b"hello"


@pytest.mark.anyio
async def test_303_turns_post_into_get(env: Env, serve: Callable[..., Server]) -> None:
    a = serve()
    proxy = env.proxy([f"127.0.0.1:{a.port}"])
    req = EgressRequest(method="POST", url=a.url("/redirect?code=303&to=/echo"), body="x")
    resp = await proxy.request("bot", req)
    assert [s.method for s in a.seen] == ["POST", "GET"] and a.seen[1].body == b""
    assert json.loads(resp.body or "")["method"] == "GET"


@pytest.mark.anyio
async def test_redirect_limit_and_not_following(env: Env, serve: Callable[..., Server]) -> None:
    a = serve()
    proxy = env.proxy([f"127.0.0.1:{a.port}"], max_redirects=2)
    loop = a.url("/redirect?to=" + quote("/redirect?to=" + quote("/redirect?to=/echo")))
    exc = await refused(proxy, get(loop))
    assert (exc.status, exc.code) == (502, "egress_failed") and "2 redirects" in exc.message
    assert len(a.seen) == 3
    resp = await proxy.request("bot", get(loop, follow_redirects=False))
    assert resp.status == 302 and resp.headers["location"].startswith("/redirect")
    assert resp.body == "moved" and resp.redirects == 0


# --- responses -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_size_cap_truncates(env: Env, serve: Callable[..., Server]) -> None:
    a = serve()
    proxy = env.proxy([f"127.0.0.1:{a.port}"], max_response_bytes=4096)
    resp = await proxy.request("plain", get(a.url("/huge?n=5000000")))
    assert resp.truncated and resp.body == "a" * 4096
    (record,) = env.records()
    assert record.detail["bytes"] == 4096
    small = await proxy.request("plain", get(a.url("/huge?n=4096")))
    assert not small.truncated and small.body == "a" * 4096
    # an agent holding credentials loses a fixed tail of a truncated body (see below)
    held = await proxy.request("bot", get(a.url("/huge?n=5000000")))
    assert held.truncated and 4096 - 100 < len(held.body or "") < 4096


@pytest.mark.anyio
async def test_truncation_mid_secret_leaks_no_prefix(
    env: Env, serve: Callable[..., Server]
) -> None:
    a = serve()
    proxy = env.proxy([f"127.0.0.1:{a.port}"], max_response_bytes=4096)
    req = get(a.url(f"/tail?pad={4096 - 10}"), headers={"X-Key": "$CRED{api}"})
    resp = await proxy.request("bot", req)
    body = resp.body or ""
    assert resp.truncated and body and body == "x" * len(body)
    assert SECRET[:4] not in body


@pytest.mark.anyio
async def test_truncation_cut_does_not_depend_on_the_tail(
    env: Env, serve: Callable[..., Server]
) -> None:
    """issue 7: a truncated body loses a fixed tail when credentials were substituted, so an
    agent that makes a bound host reflect its guesses at the cut cannot learn a prefix of
    the credential from how much was cut."""
    a = serve()
    proxy = env.proxy([f"127.0.0.1:{a.port}"], max_response_bytes=4096)
    bodies = []
    for guess in (SECRET[:20], "z" * 20, SECRET[:20].upper()):
        req = get(
            a.url(f"/tail?pad={4096 - 10}"),
            headers={"X-Key": guess, "Authorization": "Bearer $CRED{api}"},
        )
        resp = await proxy.request("bot", req)
        assert resp.truncated
        bodies.append(resp.body or "")
    assert bodies[0] == bodies[1] == bodies[2] == "x" * len(bodies[0])


@pytest.mark.anyio
async def test_gzip_is_decoded_then_scrubbed(env: Env, serve: Callable[..., Server]) -> None:
    a = serve()
    proxy = env.proxy([f"127.0.0.1:{a.port}"])
    resp = await proxy.request("bot", get(a.url("/gzip"), headers={"X-Key": "$CRED{api}"}))
    assert json.loads(resp.body or "")["X-Key"] == MASK
    assert "content-encoding" not in resp.headers


@pytest.mark.anyio
async def test_binary_body_is_base64(env: Env, serve: Callable[..., Server]) -> None:
    a = serve()
    proxy = env.proxy([f"127.0.0.1:{a.port}"])
    resp = await proxy.request("bot", get(a.url("/binary")))
    assert resp.body is None and base64.b64decode(resp.body_base64 or "") == bytes(range(256))


@pytest.mark.anyio
async def test_head_has_no_body(env: Env, serve: Callable[..., Server]) -> None:
    a = serve()
    proxy = env.proxy([f"127.0.0.1:{a.port}"])
    resp = await proxy.request("bot", EgressRequest(method="HEAD", url=a.url("/huge?n=10")))
    assert resp.status == 200 and resp.body == "" and resp.headers["content-length"] == "10"


@pytest.mark.anyio
async def test_timeout_gives_504(env: Env, serve: Callable[..., Server]) -> None:
    a = serve()
    proxy = env.proxy([f"127.0.0.1:{a.port}"], timeout_s=5.0)
    started = time.monotonic()
    exc = await refused(proxy, get(a.url("/sleep?s=3"), timeout_s=0.3))
    assert (exc.status, exc.code) == (504, "egress_timeout")
    assert time.monotonic() - started < 2.0
    (record,) = env.records()
    assert record.detail["reason"].startswith("egress_timeout")


@pytest.mark.anyio
async def test_operator_timeout_caps_the_agents(env: Env, serve: Callable[..., Server]) -> None:
    a = serve()
    proxy = env.proxy([f"127.0.0.1:{a.port}"], timeout_s=0.3)
    exc = await refused(proxy, get(a.url("/sleep?s=3"), timeout_s=60))
    assert exc.code == "egress_timeout"


@pytest.mark.anyio
async def test_connection_refused_is_502(env: Env, serve: Callable[..., Server]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proxy = env.proxy([f"127.0.0.1:{port}"])
    exc = await refused(proxy, get(f"http://127.0.0.1:{port}/"))
    assert (exc.status, exc.code) == (502, "egress_failed")
    assert env.records()[0].decision == "allow"


@pytest.mark.anyio
async def test_unresolvable_name_is_502(env: Env) -> None:
    proxy = env.proxy([])
    exc = await refused(proxy, get("http://no-such-name.test/"))
    assert exc.code == "egress_failed" and "resolve" in exc.message


@pytest.mark.anyio
async def test_cancelled_request_is_audited(env: Env, serve: Callable[..., Server]) -> None:
    a = serve()
    proxy = env.proxy([f"127.0.0.1:{a.port}"])
    with anyio.move_on_after(0.3):
        await proxy.request("bot", get(a.url("/sleep?s=3")))
    (record,) = env.records()
    assert record.detail["reason"] == "cancelled by the caller"


# --- TLS to a pinned address -----------------------------------------------------------


def certificates(name: str) -> tuple[bytes, bytes, bytes]:
    """A CA (PEM) and a leaf certificate and key (PEM) for `name`, signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "legion test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return ca.public_bytes(pem), leaf.public_bytes(pem), key_pem


@pytest.fixture
def tls(home: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context for pinned.test, client context trusting only its CA)."""
    ca, leaf, key = certificates("pinned.test")
    (home / "leaf.pem").write_bytes(leaf)
    (home / "leaf.key").write_bytes(key)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(home / "leaf.pem", home / "leaf.key")
    client = ssl.create_default_context(cadata=ca.decode())
    return server, client


@pytest.mark.anyio
async def test_tls_uses_the_name_while_connecting_to_the_pinned_address(
    env: Env,
    serve: Callable[..., Server],
    connections: list[str],
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_ctx, client_ctx = tls
    s = serve(server_ctx)
    proxy = env.proxy([f"pinned.test:{s.port}", f"wrong.test:{s.port}"], ssl_context=client_ctx)
    req = get(f"https://pinned.test:{s.port}/echo", headers={"X-Key": "$CRED{api}"})
    resp = await proxy.request("bot", req)
    assert resp.status == 200
    assert s.sni == ["pinned.test"] and connections == [f"127.0.0.1:{s.port}"]
    assert s.seen[0].headers["Host"] == f"pinned.test:{s.port}"
    assert s.seen[0].headers["X-Key"] == SECRET
    # The same address under a name the certificate does not carry fails verification.
    exc = await refused(proxy, get(f"https://wrong.test:{s.port}/echo"))
    assert exc.code == "egress_failed" and "certificate" in exc.message.lower()
    assert len(s.seen) == 1


# --- audit -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_every_request_is_audited_without_secrets(
    env: Env, serve: Callable[..., Server]
) -> None:
    a, b = serve(), serve()
    proxy = env.proxy([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"])
    auth = {"Authorization": "Bearer $CRED{api}"}
    await proxy.request("bot", get(a.url("/echo?k=$CRED{api}"), headers=auth))
    await proxy.request("bot", get(a.url("/redirect?to=" + quote(b.url("/echo"))), headers=auth))
    await refused(proxy, get("http://169.254.169.254/?k=$CRED{api}"))
    await refused(proxy, get(a.url("/echo?k=$CRED{other}")))
    await refused(proxy, get(a.url("/echo?k=$CRED{openai}")))
    await refused(proxy, get(a.url("/sleep?s=2&k=$CRED{api}"), timeout_s=0.2))
    records = env.records()
    assert [r.decision for r in records] == ["allow", "allow", "deny", "deny", "deny", "allow"]
    assert all(r.actor == "bot" for r in records)
    text = env.audit_text()
    for secret in ALL_SECRETS:
        assert secret not in text
    assert "$CRED{api}" in text


@pytest.mark.anyio
async def test_egress_needs_a_host_grant(
    env: Env, serve: Callable[..., Server], connections: list[str]
) -> None:
    """Regression (security review): egress is an outward action, so it is default deny."""
    server = serve()
    proxy = env.proxy([f"127.0.0.1:{server.port}"])
    error = await refused(proxy, get(server.url("/echo")), agent="walled")
    assert error.status == 403 and error.code == "permission_denied"
    assert "egress_hosts" in error.message
    assert server.seen == [] and connections == []
    assert any(r.actor == "walled" and r.decision == "deny" for r in env.records())
