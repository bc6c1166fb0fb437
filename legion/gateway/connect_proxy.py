"""A host-side HTTP proxy on a Unix socket of one principal: CONNECT tunnels and plain
`http://` requests, under the same address policy and grants as `/egress/http`.

The identity is the socket: one `ConnectProxy` serves one socket, bound to one principal
(an agent's browser today; an agent's MCP servers next), so nothing a client sends can
change whose traffic it is. For every CONNECT and every plain request:

* the agent's `egress_hosts` must match the host (`Permissions.decide`, default deny);
* the name is resolved once, off the loop; if any address is refused by
  `legion.gateway.netcheck` (loopback, private, link-local, metadata, mapped forms...) the
  request is refused unless `[egress] allow` opens that exact HOST:PORT; the connection
  goes to the checked address, so DNS cannot be rebound between check and connect;
* each destination is audited (`<action>` allow, or deny with the reason); refusals are
  answered `403` with the reason in the body.

TLS inside a tunnel is opaque to the host: no credential is ever added to this traffic.
A plain request is parsed with h11 and sent on with `Connection: close`, and its answer is
re-framed by h11 with `Connection: close`: one request per client connection, so a client
can never slip a second request (for another host) through a checked connection.
Upgrades over plain HTTP are not proxied (`wss://` goes through CONNECT).
Limits: `max_tunnels` connections at once per socket, a head of at most 16 KiB, and a
connection with no bytes either way for `idle_s` is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import h11

from legion.config import EgressConfig
from legion.errors import LegionError
from legion.gateway.egress_transport import system_resolver
from legion.gateway.netcheck import AllowList, IPAddress, normalize_host, parse_ip_literal, refusal
from legion.mesh.audit import AuditLog
from legion.mesh.permissions import Perm, Permissions
from legion.paths import MAX_SOCKET_PATH

log = logging.getLogger("legion.gateway.connect")

Resolver = Callable[[str], Awaitable[list[str]]]
MAX_HEAD = 16 * 1024
CHUNK = 64 * 1024
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"upgrade",
        b"transfer-encoding",
    }
)


class Refused(LegionError):
    status = 403
    code = "egress_denied"


@dataclass(frozen=True)
class Destination:
    host: str  # normalized: lower-case, IP literals canonical, no brackets
    port: int
    addresses: list[IPAddress]


class ConnectProxy:
    """Serves one Unix socket for one principal (see the module docstring)."""

    def __init__(
        self,
        *,
        principal: str,
        config: EgressConfig | Callable[[], EgressConfig],
        permissions: Permissions,
        audit: AuditLog,
        action: str = "egress.connect",
        resolver: Resolver | None = None,
        max_tunnels: int = 64,
        idle_s: float = 120.0,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.principal = principal
        self._config = config
        self._allow: tuple[EgressConfig, AllowList] | None = None
        self.permissions = permissions
        self.audit = audit
        self.action = action
        self.resolver: Resolver = resolver or system_resolver
        self.max_tunnels = max_tunnels
        self.idle_s = idle_s
        self.on_refused = on_refused
        self.path: Path | None = None
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task[None]] = set()

    @property
    def config(self) -> EgressConfig:
        """The current `[egress]` section (a callable source follows config reloads)."""
        return self._config if isinstance(self._config, EgressConfig) else self._config()

    @property
    def allow(self) -> AllowList:
        config = self.config
        if self._allow is None or self._allow[0] is not config:
            self._allow = (config, AllowList.parse(config.allow))
        return self._allow[1]

    # --- the socket ----------------------------------------------------------------------

    async def listen(self, path: Path, owner: tuple[int, int] | None = None) -> None:
        """Listen on `path` (its folder must be the host's; a stale entry there is removed)."""
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            raise LegionError(
                f"socket path {path} is too long for a Unix socket; use a shorter LEGION_HOME",
                code="socket_path_too_long",
            )
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a local unlink (never follows a link)
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._on_connect, path=str(path), limit=MAX_HEAD
            )
        finally:
            os.umask(old)
        if owner is not None:
            os.chown(path, *owner, follow_symlinks=False)
        self.path = path

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # a local unlink

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._conns) >= self.max_tunnels:
            writer.write(_plain(503, f"more than {self.max_tunnels} connections at once"))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()
            return
        self._conns.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.CancelledError:  # the proxy is closing (asyncio would log a
            pass  # cancelled connection task as an error)
        except Exception:
            log.exception("proxy connection of %s failed", self.principal)
        finally:
            self._conns.discard(task)
            writer.close()

    # --- policy --------------------------------------------------------------------------

    async def check(self, host: str, port: int) -> Destination:
        """Grant, resolution and address checks for host:port; raises Refused."""
        name = normalize_host(host)
        if self.principal != "operator":
            decision = self.permissions.decide(self.principal, Perm.EGRESS, name)
            if not decision.allowed:
                raise Refused(
                    f"{self.principal} may not reach {name!r}: {decision.reason}. The operator "
                    f"can grant it with egress_hosts in [agents.{self.principal}.permissions]",
                    code="permission_denied",
                )
        literal = parse_ip_literal(name)
        if literal is not None:
            addresses: list[IPAddress] = [literal]
        else:
            try:
                raw = await asyncio.wait_for(self.resolver(name), self.config.timeout_s)
            except (OSError, TimeoutError) as exc:
                raise Refused(f"cannot resolve {name}: {exc}", code="egress_failed") from None
            addresses = [ip for ip in map(parse_ip_literal, raw) if ip is not None]
        why = refusal(name, port, addresses, self.allow)
        if why is not None:
            pair = f"[{name}]:{port}" if ":" in name else f"{name}:{port}"
            raise Refused(
                f"egress to {pair} is refused: {why}. The operator can open this exact pair "
                f'with [egress] allow = ["{pair}"]'
            )
        return Destination(name, port, addresses)

    def _record(
        self, method: str, host: str, port: int, error: LegionError | None, **kw: Any
    ) -> None:
        decision = "deny" if error is not None else "allow"
        self.audit.append(
            self.principal,
            self.action,
            host,
            decision,
            method=method,
            port=port,
            reason=f"{error.code}: {error.message}" if error else "connected",
            **kw,
        )
        if error is not None and self.on_refused is not None:
            self.on_refused(f"{host}:{port}: {error.message}")

    async def _open(
        self, dest: Destination
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
        error: Exception | None = None
        for ip in dest.addresses:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(str(ip), dest.port, limit=CHUNK),
                    self.config.timeout_s,
                )
            except (OSError, TimeoutError) as exc:
                error = exc
                continue
            return reader, writer, str(ip)
        raise Refused(f"cannot connect to {dest.host}:{dest.port}: {error}", code="egress_failed")

    # --- one client connection -----------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        try:
            request = await self._next(client, reader, strict=True)
        except h11.RemoteProtocolError as exc:
            writer.write(_plain(400, f"not a usable proxy request: {exc}"))
            await writer.drain()
            return
        if not isinstance(request, h11.Request):
            return
        target = request.target.decode("latin-1")
        if request.method == b"CONNECT":
            host, port = _split_authority(target, 443)
            await self._tunnel(client, reader, writer, host, port)
            return
        try:
            split = urlsplit(target)
            if split.scheme != "http" or not split.hostname:
                raise ValueError
            port = split.port or 80
        except ValueError:
            writer.write(_plain(400, "send absolute http:// URLs or CONNECT host:port"))
            await writer.drain()
            return
        await self._forward(client, reader, writer, request, split.hostname, port, split)

    async def _next(
        self, conn: h11.Connection, reader: asyncio.StreamReader, strict: bool = False
    ) -> object:
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                if strict:
                    raise
                return None
            if event is h11.NEED_DATA:
                data = await asyncio.wait_for(reader.read(CHUNK), self.idle_s)
                conn.receive_data(data)
                continue
            return event

    async def _tunnel(
        self,
        client: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        host: str,
        port: int,
    ) -> None:
        try:
            if not host:
                raise Refused("CONNECT needs host:port", code="bad_request")
            dest = await self.check(host, port)
            up_reader, up_writer, address = await self._open(dest)
        except Refused as exc:
            self._record("CONNECT", normalize_host(host), port, exc)
            writer.write(_plain(exc.status if exc.code != "egress_failed" else 502, exc.message))
            await writer.drain()
            return
        self._record("CONNECT", dest.host, port, None, address=address)
        try:
            writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            early, _ = client.trailing_data
            if early:
                up_writer.write(early)
            await _splice(reader, writer, up_reader, up_writer, self.idle_s)
        finally:
            up_writer.close()

    async def _forward(
        self,
        client: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: h11.Request,
        host: str,
        port: int,
        split: object,
    ) -> None:
        method = request.method.decode("latin-1")
        try:
            dest = await self.check(host, port)
            up_reader, up_writer, address = await self._open(dest)
        except Refused as exc:
            self._record(method, normalize_host(host), port, exc)
            writer.write(_plain(exc.status if exc.code != "egress_failed" else 502, exc.message))
            await writer.drain()
            return
        self._record(method, dest.host, port, None, address=address)
        path = request.target.decode("latin-1")
        origin_form = path[path.index("/", len("http://")) :] if "/" in path[7:] else "/"
        headers = [(k, v) for k, v in request.headers if k.lower() not in HOP_BY_HOP]
        headers.append((b"connection", b"close"))
        upstream = h11.Connection(h11.CLIENT)
        try:
            outgoing = h11.Request(method=request.method, target=origin_form, headers=headers)
            chunked = any(k.lower() == b"transfer-encoding" for k, _ in request.headers)
            if chunked and not any(k.lower() == b"content-length" for k, _ in headers):
                outgoing = h11.Request(
                    method=request.method,
                    target=origin_form,
                    headers=[*headers, (b"transfer-encoding", b"chunked")],
                )
            up_writer.write(upstream.send(outgoing) or b"")
            while True:  # the request body
                event = await self._next(client, reader)
                if isinstance(event, h11.Data):
                    up_writer.write(upstream.send(event) or b"")
                    await up_writer.drain()
                elif isinstance(event, h11.EndOfMessage):
                    up_writer.write(upstream.send(h11.EndOfMessage()) or b"")
                    await up_writer.drain()
                    break
                else:
                    return
            while True:  # the response, re-framed with Connection: close
                event = await self._next(upstream, up_reader)
                if isinstance(event, h11.InformationalResponse):
                    continue
                if not isinstance(event, h11.Response):
                    writer.write(_plain(502, f"{dest.host}:{port} sent no valid response"))
                    await writer.drain()
                    return
                out_headers = [(k, v) for k, v in event.headers if k.lower() not in HOP_BY_HOP]
                length = any(k.lower() == b"content-length" for k, _ in out_headers)
                if not length and event.status_code not in (204, 304) and method != "HEAD":
                    out_headers.append((b"transfer-encoding", b"chunked"))
                out_headers.append((b"connection", b"close"))
                writer.write(
                    client.send(
                        h11.Response(
                            status_code=event.status_code,
                            headers=out_headers,
                            reason=event.reason,
                        )
                    )
                    or b""
                )
                break
            while True:
                event = await self._next(upstream, up_reader)
                if isinstance(event, h11.Data):
                    writer.write(client.send(event) or b"")
                    await writer.drain()
                elif isinstance(event, h11.EndOfMessage):
                    writer.write(client.send(h11.EndOfMessage()) or b"")
                    await writer.drain()
                    return
                else:
                    return
        except h11.LocalProtocolError as exc:
            log.info("proxied request of %s abandoned: %s", self.principal, exc)
        finally:
            up_writer.close()


def _split_authority(target: str, default_port: int) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return "", 0
    return host.strip("[]"), int(port)


def _plain(status: int, message: str) -> bytes:
    body = (message + "\n").encode("utf-8", "replace")
    reason = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway", 503: "Busy"}.get(
        status, "Error"
    )
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


async def _splice(
    a_reader: asyncio.StreamReader,
    a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader,
    b_writer: asyncio.StreamWriter,
    idle_s: float,
) -> None:
    """Copy bytes both ways until either side closes or both are idle for `idle_s`."""
    loop = asyncio.get_running_loop()
    last = [loop.time()]

    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while True:
            data = await src.read(CHUNK)
            if not data:
                with contextlib.suppress(OSError):
                    if dst.can_write_eof():
                        dst.write_eof()
                return
            last[0] = loop.time()
            dst.write(data)
            await dst.drain()

    async def idle() -> None:
        while True:
            await asyncio.sleep(max(0.5, idle_s - (loop.time() - last[0])))
            if loop.time() - last[0] >= idle_s:
                return

    tasks = [
        asyncio.create_task(pump(a_reader, b_writer)),
        asyncio.create_task(pump(b_reader, a_writer)),
    ]
    watchdog = asyncio.create_task(idle())
    try:
        done, _ = await asyncio.wait([*tasks, watchdog], return_when=asyncio.FIRST_COMPLETED)
        if watchdog not in done:
            # one direction ended: let the other finish what it has (bounded by idle)
            rest = [t for t in tasks if not t.done()]
            if rest:
                await asyncio.wait([*rest, watchdog], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in [*tasks, watchdog]:
            task.cancel()
        await asyncio.gather(*tasks, watchdog, return_exceptions=True)
