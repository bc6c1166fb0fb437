"""Remote MCP servers (streamable HTTP), connected by the host, never by a container.

`[mcp.NAME] url = ..., credential = ...`: the host holds one MCP session per server (the
`mcp` SDK's client over its streamable HTTP transport) and offers its tools to the
agents whose `allowed_mcp` names it, through their own sockets (`GET /v1/mcp/servers`,
`POST /v1/mcp/call`, in `legion.api.agent`). So:

* the credential (agent tier, in the vault) is resolved by the host and sent as the
  server's auth header (`auth_header`, `auth_scheme`), only toward the URL's own host,
  which the credential must be bound to (and over https unless the binding allows http:
  `Vault.resolve_for_agent`); it never reaches a container. What the server sends back
  (results, errors) is scrubbed of the credential in every form egress scrubs;
* connections go through the egress address policy: the name is resolved at connect
  time, a forbidden address is refused unless `[egress] allow` opens that exact pair, and
  the connection goes to the address checked; the SDK follows same-origin redirects only,
  and the auth header is dropped from any request to another origin;
* tool descriptions and schemas are cleaned and capped (`legion.wire.mcp`);
* a session that fails (a call's transport error, a ping unanswered, the connect
  refused) is reconnected with backoff (1 s doubling to 60 s); meanwhile the server is
  `restarting` and its tools are unavailable;
* calls are bounded per agent (MAX_CALLS_PER_AGENT at once) and by the server's
  `timeout_s`; each is permission-checked by the route's policy and its outcome audited.

Each session lives in a task of its own (the SDK's contexts are task-bound); the host owns
them and closes them at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from legion.errors import LegionError
from legion.gateway.egress_transport import system_resolver
from legion.gateway.netcheck import AllowList, IPAddress, normalize_host, parse_ip_literal, refusal
from legion.gateway.redact import EchoScrubber
from legion.wire.mcp import (
    McpCallResult,
    McpServerInfo,
    McpState,
    McpTool,
    result_text,
    tools_of,
)

if TYPE_CHECKING:
    import httpcore2
    import httpx2
    from mcp import ClientSession

    from legion.config import Config, McpRemoteConfig
    from legion.gateway.vault import Vault
    from legion.mesh.audit import AuditLog

log = logging.getLogger("legion.gateway.mcp")

Resolver = Callable[[str], Awaitable[list[str]]]
DISABLED = "enabled = false in legion.toml: set it true (and reload) to connect"
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 60.0
PING_EVERY_S = 30.0
MAX_CALLS_PER_AGENT = 4
LIST_PAGES = 10


class McpUnavailable(LegionError):
    status = 503
    code = "mcp_unavailable"


class McpFailed(LegionError):
    status = 502
    code = "mcp_failed"


class McpTimeout(LegionError):
    status = 504
    code = "mcp_timeout"


class UnknownTool(LegionError):
    status = 404
    code = "unknown_mcp_tool"


# --- the connection: checked addresses, the credential toward its own host only ------------


def _checked_transport(
    host: str, port: int, allow: Callable[[], AllowList], resolver: Resolver, timeout_s: float
) -> httpx2.AsyncBaseTransport:
    """An httpx2 transport whose every connection goes to an address of `host` that the
    egress address policy accepts (resolved at connect time, connected to as checked)."""
    import httpcore2
    import httpx2

    origin = (host, port)

    class CheckedBackend(httpcore2.AsyncNetworkBackend):
        def __init__(self) -> None:
            self._inner = httpcore2.AnyIOBackend()

        async def connect_tcp(
            self,
            host: str,
            port: int,
            timeout: float | None = None,  # noqa: ASYNC109 - httpcore2's interface
            local_address: str | None = None,
            socket_options: Iterable[Any] | None = None,
        ) -> httpcore2.AsyncNetworkStream:
            port_ = port
            name = normalize_host(host)
            if (name, port_) != origin:
                raise httpcore2.ConnectError(f"{name}:{port_} is not this server's origin")
            literal = parse_ip_literal(name)
            if literal is not None:
                addresses: list[IPAddress] = [literal]
            else:
                try:
                    raw = await asyncio.wait_for(resolver(name), timeout_s)
                except (OSError, TimeoutError) as exc:
                    raise httpcore2.ConnectError(f"cannot resolve {name}: {exc}") from None
                addresses = [ip for ip in map(parse_ip_literal, raw) if ip is not None]
            why = refusal(name, port_, addresses, allow())
            if why is not None:
                pair = f"[{name}]:{port_}" if ":" in name else f"{name}:{port_}"
                raise httpcore2.ConnectError(
                    f"{pair} is refused by the egress address policy: {why}; the operator "
                    f'can open it with [egress] allow = ["{pair}"]'
                )
            error: Exception | None = None
            for ip in addresses:
                try:
                    return await self._inner.connect_tcp(
                        str(ip), port_, timeout, local_address, socket_options
                    )
                except httpcore2.ConnectError as exc:
                    error = exc
            raise error or httpcore2.ConnectError(f"{name} has no address")

        async def connect_unix_socket(
            self,
            path: str,
            timeout: float | None = None,  # noqa: ASYNC109 - httpcore2's interface
            socket_options: Iterable[Any] | None = None,
        ) -> httpcore2.AsyncNetworkStream:
            raise httpcore2.ConnectError("remote MCP never uses Unix sockets")

        async def sleep(self, seconds: float) -> None:
            await self._inner.sleep(seconds)

    transport = httpx2.AsyncHTTPTransport(trust_env=False)
    # httpx2's transport takes no network backend; its pool does (the same pool class,
    # with the backend above): replaced before the transport is ever used.
    transport._pool = httpcore2.AsyncConnectionPool(
        ssl_context=httpx2.create_ssl_context(trust_env=False),
        max_connections=8,
        network_backend=CheckedBackend(),
    )
    return transport


@dataclass
class RemoteServer:
    """One configured remote server: its connection task, session and state."""

    name: str
    config: McpRemoteConfig
    state: McpState = "starting"
    reason: str = ""
    since: float = 0.0
    restarts: int = 0
    tools: list[McpTool] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    session: ClientSession | None = None
    secret: str | None = None
    broken: asyncio.Event = field(default_factory=asyncio.Event)
    broken_reason: str = ""
    task: asyncio.Task[None] | None = None

    def scrubber(self) -> EchoScrubber:
        return EchoScrubber([self.secret] if self.secret else [])

    def info(self) -> McpServerInfo:
        return McpServerInfo(
            name=self.name,
            kind="remote",
            state=self.state,
            reason=self.reason,
            restarts=self.restarts,
            since=self.since or None,
            tools=list(self.tools) if self.state == "ready" else [],
            dropped=list(self.dropped),
        )


class RemoteMcp:
    """Every `[mcp.NAME]` server of the host (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        vault: Vault,
        audit: AuditLog,
        *,
        resolver: Resolver | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.vault = vault
        self.audit = audit
        self.resolver: Resolver = resolver or system_resolver
        self.clock = clock
        self.servers: dict[str, RemoteServer] = {}
        self._calls: dict[str, asyncio.Semaphore] = {}
        self.ping_every_s = PING_EVERY_S  # an idle session is pinged this often
        self._allow: tuple[Any, AllowList] | None = None

    def allow(self) -> AllowList:
        entries = self.config.egress.allow
        if self._allow is None or self._allow[0] is not entries:
            self._allow = (entries, AllowList.parse(entries))
        return self._allow[1]

    # --- lifecycle ---------------------------------------------------------------------

    async def apply(self) -> None:
        """Start servers new in the config, restart changed ones, stop removed ones."""
        wanted = self.config.mcp
        for name in list(self.servers):
            if name not in wanted or wanted[name] != self.servers[name].config:
                await self._stop(name)
        for name, cfg in wanted.items():
            if name not in self.servers:
                server = RemoteServer(name, cfg, since=self.clock())
                if cfg.enabled:
                    server.task = asyncio.create_task(self._run(server), name=f"mcp-{name}")
                else:
                    server.state, server.reason = "stopped", DISABLED
                self.servers[name] = server

    async def _stop(self, name: str) -> None:
        server = self.servers.pop(name)
        if server.task is not None:
            server.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await server.task

    async def close(self) -> None:
        for name in list(self.servers):
            await self._stop(name)

    def _set(self, server: RemoteServer, state: McpState, reason: str = "") -> None:
        if (server.state, server.reason) == (state, reason):
            return
        server.state, server.reason, server.since = state, reason, self.clock()
        self.audit.append("host", f"mcp.{state}", server.name, "allow", reason=reason[:500])
        log.info("mcp server %s: %s %s", server.name, state, reason)

    async def _run(self, server: RemoteServer) -> None:
        backoff = BACKOFF_MIN_S
        while True:
            started = time.monotonic()
            try:
                await self._session(server)
                reason = "the session ended"
            except asyncio.CancelledError:
                self._set(server, "stopped", "the host stopped it")
                raise
            except LegionError as exc:
                reason = exc.message
            except BaseException as exc:  # the SDK raises task-group exception groups
                reason = _describe(exc)
            server.session = None
            reason = server.scrubber().text(reason)
            if time.monotonic() - started > BACKOFF_MAX_S:
                backoff = BACKOFF_MIN_S  # it ran a while: not a crash loop
            server.restarts += 1
            self._set(server, "restarting", f"{reason}; retrying in {backoff:g}s")
            await asyncio.sleep(backoff)
            backoff = min(BACKOFF_MAX_S, backoff * 2)

    def _headers(self, server: RemoteServer, host: str, scheme: str) -> dict[str, str]:
        cfg = server.config
        if not cfg.credential:
            return {}
        from legion.gateway.vault import CredentialDenied

        value = ""
        try:
            value = self.vault.resolve_for_agent(
                cfg.credential, allowed=[cfg.credential], host=host, scheme=scheme
            )
        except CredentialDenied as exc:
            why = exc.operator_reason
        except LegionError as exc:
            why = exc.message
        else:
            why = ""
        if why:
            raise McpUnavailable(
                f"credential {cfg.credential!r} cannot be sent to {host}: {why}; it must be "
                f"an agent-tier credential bound to that host (`legion vault set "
                f"{cfg.credential} --bind {host}`, with --allow-http for an http:// URL)"
            )
        server.secret = value
        return {cfg.auth_header: f"{cfg.auth_scheme} {value}" if cfg.auth_scheme else value}

    async def _session(self, server: RemoteServer) -> None:
        import httpx2
        from mcp import ClientSession
        from mcp.client.streamable_http import streamable_http_client

        cfg = server.config
        split = urlsplit(cfg.url)
        scheme = split.scheme
        host = normalize_host(split.hostname or "")
        port = split.port or (443 if scheme == "https" else 80)
        headers = self._headers(server, host, scheme)

        async def only_its_origin(request: httpx2.Request) -> None:
            target = (request.url.scheme, normalize_host(request.url.host), request.url.port)
            if target[:2] != (scheme, host) or (target[2] or port) != port:
                request.headers.pop(cfg.auth_header, None)

        transport = _checked_transport(host, port, self.allow, self.resolver, cfg.timeout_s)
        client = httpx2.AsyncClient(
            transport=transport,
            headers=headers,
            timeout=httpx2.Timeout(cfg.timeout_s, read=max(cfg.timeout_s, 300.0)),
            follow_redirects=False,
            trust_env=False,
            event_hooks={"request": [only_its_origin]},
        )
        server.broken.clear()
        async with (
            client,
            streamable_http_client(cfg.url, http_client=client) as (read, write),
            ClientSession(read, write, read_timeout_seconds=cfg.timeout_s) as session,
        ):
            await asyncio.wait_for(session.initialize(), cfg.timeout_s)
            server.tools, server.dropped = tools_of(
                server.name,
                [t.model_dump(mode="json", by_alias=True) for t in await _list(session)],
            )
            server.session = session
            self._set(server, "ready", f"{len(server.tools)} tools")
            while not server.broken.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(server.broken.wait(), self.ping_every_s)
                    break
                await asyncio.wait_for(session.send_ping(), cfg.timeout_s)
            raise McpFailed(server.broken_reason or "a call failed")

    # --- what agents see ---------------------------------------------------------------------

    def info(self) -> list[McpServerInfo]:
        return [s.info() for _, s in sorted(self.servers.items())]

    def for_agent(self, allowed: Callable[[str], bool]) -> list[McpServerInfo]:
        return [s.info() for _, s in sorted(self.servers.items()) if allowed(s.name)]

    async def call(
        self, agent: str, server_name: str, tool: str, arguments: dict[str, Any]
    ) -> McpCallResult:
        """Call `tool` on a remote server for `agent` (the route checked `allowed_mcp`)."""
        server = self.servers.get(server_name)
        if server is None:
            raise UnknownTool(
                f"no remote MCP server named {server_name!r}", server=server_name, tool=tool
            )
        if server.state != "ready" or server.session is None:
            raise McpUnavailable(
                f"MCP server {server_name!r} is {server.state} ({server.reason}); its tools are "
                "unavailable until it reconnects",
                server=server_name,
                state=server.state,
            )
        if not any(t.tool == tool for t in server.tools):
            raise UnknownTool(
                f"MCP server {server_name!r} offers no tool {tool!r}",
                server=server_name,
                tool=tool,
            )
        gate = self._calls.setdefault(agent, asyncio.Semaphore(MAX_CALLS_PER_AGENT))
        if gate.locked():
            raise LegionError(
                f"{MAX_CALLS_PER_AGENT} MCP calls of {agent} are in flight; wait for one",
                code="too_many_calls",
                status=429,
            )
        session = server.session
        timeout = server.config.timeout_s
        scrub = server.scrubber()
        started = time.monotonic()
        async with gate:
            try:
                result = await asyncio.wait_for(
                    session.call_tool(tool, arguments, read_timeout_seconds=timeout), timeout
                )
            except TimeoutError:
                self._outcome(agent, server_name, tool, "timeout", started)
                raise McpTimeout(
                    f"{server_name}__{tool} did not answer within {timeout:g}s", timeout_s=timeout
                ) from None
            except Exception as exc:
                message = scrub.text(_describe(exc))
                self._outcome(agent, server_name, tool, "failed", started, error=message)
                # A failure of this call's own stream (each call is its own POST: an
                # oversized or malformed event in its answer) leaves the session answering;
                # only a session that no longer answers a ping is reconnected, or one
                # agent's amplifying call would cut every agent off the server.
                if (
                    _is_transport(exc)
                    and not await _answers(session, timeout)
                    and server.session is session  # not already ended and reconnecting
                ):
                    server.broken_reason = f"a call failed: {message[:300]}"
                    server.broken.set()  # reconnect; the tools are unavailable meanwhile
                    self._set(server, "restarting", server.broken_reason)
                raise McpFailed(
                    f"{server_name}__{tool} failed: {message[:2000]}", server=server_name
                ) from None
        data = result.model_dump(mode="json", by_alias=True)
        text, truncated = result_text(data.get("content"), data.get("structuredContent"))
        text = scrub.text(text)
        is_error = bool(data.get("isError"))
        self._outcome(agent, server_name, tool, "error" if is_error else "ok", started)
        return McpCallResult(text=text, is_error=is_error, truncated=truncated)

    def _outcome(
        self, agent: str, server: str, tool: str, status: str, started: float, **extra: Any
    ) -> None:
        self.audit.append(
            agent,
            "mcp.result",
            server,
            "allow",
            tool=tool,
            status=status,
            ms=round((time.monotonic() - started) * 1000, 1),
            **extra,
        )


async def _list(session: ClientSession) -> list[Any]:
    """Every tool of a session's listing (a few pages at most)."""
    from mcp_types import PaginatedRequestParams

    tools: list[Any] = []
    cursor: str | None = None
    for _ in range(LIST_PAGES):
        params = PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.list_tools(params=params)
        tools += page.tools
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


PROBE_S = 5.0  # how long a session may take to answer the ping after a failed call


async def _answers(session: ClientSession, timeout_s: float) -> bool:
    """Whether the session still answers (a ping) after one of its calls failed."""
    try:
        await asyncio.wait_for(session.send_ping(), min(timeout_s, PROBE_S))
    except Exception:
        return False
    return True


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _describe(exc: BaseException) -> str:
    """One line: the innermost meaningful errors of an SDK failure (task groups nest them)."""
    from mcp.shared.exceptions import MCPError

    parts = []
    for leaf in _leaves(exc):
        text = leaf.message if isinstance(leaf, MCPError) else str(leaf)
        text = text or leaf.__class__.__name__
        cause = leaf.__cause__
        if cause is not None and str(cause) and str(cause) not in text:
            text += f" ({cause})"
        parts.append(f"{leaf.__class__.__name__}: {text}"[:500])
    return "; ".join(dict.fromkeys(parts))


def _is_transport(exc: BaseException) -> bool:
    """A failure of the connection rather than of the tool (the session must reconnect)."""
    from mcp.shared.exceptions import MCPError

    for leaf in _leaves(exc):
        if isinstance(leaf, MCPError):
            from mcp_types import CONNECTION_CLOSED

            if getattr(getattr(leaf, "error", None), "code", None) == CONNECTION_CLOSED:
                return True
            continue
        if isinstance(leaf, OSError | ConnectionError) or "httpx2" in type(leaf).__module__:
            return True
    return False
