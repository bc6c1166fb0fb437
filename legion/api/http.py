"""A small HTTP/1.1 server for Unix sockets, with a declarative route table.

Why not an ASGI server: the host serves one socket per agent, and the identity
of a caller is the socket it connected to. Binding identity at accept time, in
code we own, keeps that invariant one line long (`Listener.principal`), lets
hundreds of listeners share one event loop without per-server signal handling,
and keeps a request hop to a few tens of microseconds.

Each route declares its body model, response model, policy (permission and
target) and rate class in one place; the server rate-limits, validates,
authorizes and audits before the handler runs, so no handler can forget to.

Request framing is h11's (`legion.api.conn`); the accept loop is ours: each socket
has its own connection cap (the accept loop stops accepting at the cap, so a flood
waits in the kernel's backlog and costs the host nothing), its own timeouts, its own
budget of request bytes in flight, token buckets per route class and a turn gate
(`legion.api.limits`). What an agent leaves at its socket path is moved aside, never
followed (`legion.api.sockpath`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import re
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from pydantic import BaseModel, TypeAdapter, ValidationError

from legion.api import sockpath
from legion.api.conn import Connection
from legion.api.framing import MAX_HEAD_BYTES, READ_BYTES, error_response
from legion.api.httptypes import Call, Request, Response, StreamResponse
from legion.api.limits import RESERVED_FDS, GateBoard, Rate, Throttle, raise_open_files_limit
from legion.api.serving import Listener, Serving
from legion.config import SocketLimits
from legion.errors import LegionError
from legion.paths import MAX_SOCKET_PATH
from legion.wire.errors import ErrorBody, ErrorDetail
from legion.wire.fields import CONFIGURED

if TYPE_CHECKING:
    from legion.api.sockpath import Moved

__all__ = [
    "MAX_HEAD_BYTES",
    "Call",
    "HttpServer",
    "Listener",
    "Policy",
    "Request",
    "Response",
    "Route",
    "Router",
    "StreamResponse",
]

log = logging.getLogger("legion.http")

BACKLOG = 128
# Connections one socket accepts in one turn of the event loop while others are active.
ACCEPTS_PER_TURN = 16

Handler = Callable[[Call], Awaitable[BaseModel | Response | StreamResponse]]


@dataclass(frozen=True)
class Policy:
    """What a route needs: a permission (by name) on a target read from a param or body field."""

    permission: str
    target: str
    action: str


@dataclass
class Route:
    method: str
    template: str
    handler: Handler
    body: type[BaseModel] | None
    response: type[BaseModel] | None
    summary: str
    policy: Policy | None
    # Documentation of the contract (see `Router.openapi`): the type of each path and query
    # parameter (a pydantic-compatible type, e.g. `legion.wire.fields.BlackboardKey`), and
    # the OpenAPI links from this route's 200 response to other operations.
    params: dict[str, Any] = field(default_factory=dict)
    query: dict[str, Any] = field(default_factory=dict)
    links: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The rate bucket this route draws from on an agent socket (None: unmetered).
    rate: str | None = None
    # The handler only waits (a long poll): when its client goes, cancel it.
    cancel_on_disconnect: bool = False
    regex: re.Pattern[str] = field(init=False)

    def __post_init__(self) -> None:
        pattern = re.sub(r"\{(\w+):path\}", r"(?P<\1>.+)", self.template)
        pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern)
        self.regex = re.compile(f"^{pattern}$")

    def target_of(self, call: Call) -> str:
        assert self.policy is not None
        name = self.policy.target
        if name in call.params:
            return call.params[name]
        if call.body is not None and hasattr(call.body, name):
            return str(getattr(call.body, name))
        return call.request.query.get(name, "")


class MethodNotAllowed(LegionError):
    status = 405
    code = "method_not_allowed"

    def __init__(self, message: str, allowed: list[str]) -> None:
        super().__init__(message, allowed=allowed)
        self.allowed = allowed

    def http_headers(self) -> list[tuple[str, str]]:
        return [("allow", ", ".join(self.allowed))]


class Router:
    def __init__(self, title: str) -> None:
        self.title = title
        self.routes: list[Route] = []

    def route(
        self,
        method: str,
        template: str,
        *,
        body: type[BaseModel] | None = None,
        response: type[BaseModel] | None = None,
        policy: Policy | None = None,
        params: dict[str, Any] | None = None,
        query: dict[str, Any] | None = None,
        links: dict[str, dict[str, Any]] | None = None,
        rate: str | None = None,
        cancel_on_disconnect: bool = False,
    ) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            summary = (handler.__doc__ or "").strip().splitlines()[0] if handler.__doc__ else ""
            self.routes.append(
                Route(
                    method,
                    template,
                    handler,
                    body,
                    response,
                    summary,
                    policy,
                    params or {},
                    query or {},
                    links or {},
                    rate,
                    cancel_on_disconnect,
                )
            )
            return handler

        return register

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route for `method path`; HEAD is served by the GET route (without a body)."""
        allowed: list[str] = []
        wanted = "GET" if method == "HEAD" else method
        for route in self.routes:
            m = route.regex.match(path)
            if m is None:
                continue
            if route.method != wanted:
                allowed.append(route.method)
                if route.method == "GET":
                    allowed.append("HEAD")
                continue
            return route, {k: unquote(v) for k, v in m.groupdict().items()}
        if allowed:
            raise MethodNotAllowed(
                f"{method} is not allowed on {path}; use {', '.join(allowed)}", allowed
            )
        raise LegionError(
            f"no route {method} {path}; see GET /v1/openapi.json", code="no_route", status=404
        )

    def openapi(self, configured: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """An OpenAPI 3.1 document generated from the route table.

        Bodies, responses and parameters come from the models and types the routes declare,
        so the document states every rule the models enforce. `configured` holds the values
        that depend on the host's configuration (e.g. `max_key_length`, the agent names); a
        schema node that says `x-legion-configured: {"maxLength": "max_key_length"}` gets
        the configured value."""
        components: dict[str, Any] = {}

        def ref(model: type[BaseModel]) -> dict[str, Any]:
            schema = json.loads(_model_schema(model))
            components.update(schema.pop("$defs", {}))
            components[model.__name__] = schema
            return {"$ref": f"#/components/schemas/{model.__name__}"}

        def parameter(name: str, where: str, annotation: Any, required: bool) -> dict[str, Any]:
            schema = json.loads(_type_schema(annotation)) if annotation is not None else {}
            description = schema.pop("description", None)
            param: dict[str, Any] = {
                "name": name,
                "in": where,
                "required": required,
                "schema": schema or {"type": "string"},
            }
            if description:
                param["description"] = description
            return param

        error_ref = ref(ErrorBody)
        operations = {route.handler.__name__ for route in self.routes}
        paths: dict[str, Any] = {}
        for route in self.routes:
            path = re.sub(r"\{(\w+):path\}", r"{\1}", route.template)
            ok: dict[str, Any] = (
                {
                    "description": "OK",
                    "content": {"application/json": {"schema": ref(route.response)}},
                }
                if route.response
                else {"description": "OK"}
            )
            # A link to an operation this socket does not serve (shared routes link to
            # agent-only ones) is left out.
            links = {
                name: link
                for name, link in route.links.items()
                if link.get("operationId") in operations
            }
            if links:
                ok["links"] = links
            op: dict[str, Any] = {
                "summary": route.summary,
                "operationId": route.handler.__name__,
                "responses": {
                    "200": ok,
                    "default": {
                        "description": "Typed error",
                        "content": {"application/json": {"schema": error_ref}},
                    },
                },
            }
            names = re.findall(r"\{(\w+)(?::path)?\}", route.template)
            parameters = [parameter(n, "path", route.params.get(n), True) for n in names]
            parameters += [parameter(n, "query", t, False) for n, t in route.query.items()]
            if parameters:
                op["parameters"] = parameters
            if route.body is not None:
                op["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": ref(route.body)}},
                }
            if route.policy is not None:
                op["x-legion-permission"] = route.policy.permission
                op["x-legion-target"] = route.policy.target
            paths.setdefault(path, {})[route.method.lower()] = op
        document = {
            "openapi": "3.1.0",
            "info": {"title": self.title, "version": "1"},
            "paths": paths,
            "components": {"schemas": components},
        }
        _apply_configured(document, configured or {})
        return document


# Generating a model's schema takes milliseconds; the models never change while the host
# runs, so each is generated once (as text, so every document gets its own copy to edit).
@cache
def _model_schema(model: type[BaseModel]) -> str:
    return json.dumps(model.model_json_schema(ref_template="#/components/schemas/{model}"))


@cache
def _type_schema(annotation: Any) -> str:
    return json.dumps(TypeAdapter(annotation).json_schema())


def _apply_configured(node: Any, configured: Mapping[str, Any]) -> None:
    """Write configured values where a schema node names them (`x-legion-configured`)."""
    if isinstance(node, dict):
        wanted = node.pop(CONFIGURED, None)
        if isinstance(wanted, dict):
            for keyword, name in wanted.items():
                if name in configured:
                    node[keyword] = configured[name]
        for value in node.values():
            _apply_configured(value, configured)
    elif isinstance(node, list):
        for value in node:
            _apply_configured(value, configured)


Authorizer = Callable[[Call, Route], None]
# (principal, kind, count, fields): a limit was hit `count` times since the last report.
LimitReport = Callable[[str, str, int, dict[str, Any]], None]


def _error_bytes(exc: LegionError) -> bytes:
    return exc.body().model_dump_json().encode()


def _encode(result: BaseModel | Response | StreamResponse) -> Response | StreamResponse:
    if isinstance(result, Response | StreamResponse):
        return result
    return Response(200, result.model_dump_json().encode())


class HttpServer:
    """Serves any number of Unix-socket listeners on the running loop."""

    def __init__(
        self,
        *,
        max_body_bytes: int,
        authorize: Authorizer | None = None,
        redact: Callable[[bytes], bytes] | None = None,
        redact_again: Callable[[bytes], bytes] | None = None,
        on_limit: LimitReport | None = None,
        log_interval_s: float = 10.0,
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self.authorize = authorize
        self.redact = redact
        # For the 2nd..nth chunk of one streamed response: no re-reading of the secrets.
        self.redact_again = redact_again or redact
        self.on_limit = on_limit
        self.throttle = Throttle(log_interval_s, self._report_limit)
        self._serving: dict[Path, Serving] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.adopting: set[asyncio.Task[Any]] = set()
        self.gates = GateBoard()  # which sockets compete for turns right now
        # Every read of every connection lands here first (the loop reads one socket at
        # a time), so no read is larger than READ_BYTES.
        self.scratch = memoryview(bytearray(READ_BYTES))
        # Every agent connection is a descriptor: together they stay below the process's
        # limit (raised to the hard limit), with room kept for everything else.
        self.max_shared_conns = max(64, raise_open_files_limit() - RESERVED_FDS)
        self.shared_conns = 0
        self.fd_freed = asyncio.Event()

    # --- listeners --------------------------------------------------------------------

    async def listen(self, listener: Listener) -> list[Moved]:
        """Bind `listener`'s socket and serve it; returns what had to be moved aside."""
        path = listener.path
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            raise LegionError(
                f"socket path {path} is {len(os.fsencode(path))} bytes; Unix sockets allow "
                f"{MAX_SOCKET_PATH}. Use a shorter LEGION_HOME",
                code="socket_path_too_long",
            )
        old = self._serving.pop(path, None)
        if old is not None:
            await self._stop(old)
        root = listener.trusted_root or path.parent
        sdir = sockpath.open_socket_dir(
            root,
            path.parent.relative_to(root).parts,
            label=listener.principal,
            owner=listener.owner,
        )
        try:
            sockpath.clear_name(sdir, path.name, label=listener.principal)
            sock, inode = sockpath.bind_in(sdir, path.name, listener.mode, BACKLOG)
        finally:
            sockpath.close_socket_dir(sdir)
        serving = Serving(self, listener, sock, inode)
        serving.accepting = asyncio.create_task(
            self._accept_forever(serving), name=f"accept:{listener.principal}"
        )
        self._serving[path] = serving
        for moved in sdir.moved:
            log.warning(
                "moved aside what stood at a socket path",
                extra={
                    "fields": {
                        "principal": listener.principal,
                        "path": moved.path,
                        "kind": moved.kind,
                        "moved_to": moved.moved_to,
                    }
                },
            )
        return sdir.moved

    def is_serving(self, path: Path) -> bool:
        """Whether `path` is still the socket this server bound (nobody replaced it)."""
        serving = self._serving.get(path)
        if serving is None:
            return False
        return sockpath.is_our_socket(serving.root, serving.components, path.name, serving.inode)

    async def listen_tcp(
        self,
        host: str,
        port: int,
        principal: str,
        router: Router,
        *,
        limits: SocketLimits | None = None,
        rates: dict[str, Rate] | None = None,
    ) -> tuple[str, int]:
        """Serve `router` on a TCP address (the webhook listener; loopback unless the
        operator binds elsewhere), with the same accept loop, connection cap, read timeouts
        and buckets as a Unix socket. Every request acts as `principal`. Returns the bound
        (host, port): port 0 picks a free one."""
        sock = socket.create_server((host, port), backlog=BACKLOG, reuse_port=False)
        sock.setblocking(False)
        bound = sock.getsockname()
        path = Path(f"tcp:{bound[0]}:{bound[1]}")
        listener = Listener(
            path,
            principal,
            router,
            limits=limits or SocketLimits(),
            rates=rates,
            trusted_root=path.parent,
            shared_budget=False,
        )
        serving = Serving(self, listener, sock, inode=0)  # inode 0: no file to unlink
        serving.accepting = asyncio.create_task(
            self._accept_forever(serving), name=f"accept:{principal}:tcp"
        )
        self._serving[path] = serving
        return str(bound[0]), int(bound[1])

    async def unlisten(self, path: Path) -> None:
        """Stop serving `path`: no new connections, the open ones closed, the socket gone."""
        serving = self._serving.pop(path, None)
        if serving is not None:
            await self._stop(serving, drop=True)

    async def _stop(self, serving: Serving, *, drop: bool = False) -> None:
        if serving.accepting is not None:
            serving.accepting.cancel()
            await asyncio.gather(serving.accepting, return_exceptions=True)
        serving.sock.close()
        if serving.parse_timer is not None:
            serving.parse_timer.cancel()
        path = serving.listener.path
        sockpath.unlink_if_ours(serving.root, serving.components, path.name, serving.inode)
        if drop:
            for conn in list(serving.conns):
                conn.abort()

    async def close(self) -> None:
        for path in list(self._serving):
            await self._stop(self._serving.pop(path), drop=True)
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.adopting:
            await asyncio.gather(*self.adopting, return_exceptions=True)
        self.throttle.close()

    # --- accepting ----------------------------------------------------------------------

    def shared_slot_freed(self) -> None:
        if self.shared_conns == self.max_shared_conns - 1:
            for serving in self._serving.values():
                serving.slot.set()

    async def _accept_forever(self, serving: Serving) -> None:
        while True:
            try:
                await self._accept_some(serving)
            except Exception:  # never stop serving a socket over one bad accept
                log.exception("accepting on %s failed; going on", serving.listener.path)
                await asyncio.sleep(0.1)

    async def _accept_some(self, serving: Serving) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if serving.full():
                # At the cap: accept nothing; new connections wait in the kernel's backlog
                # (and beyond it are refused there), costing the host nothing.
                serving.note(
                    "connection_cap",
                    open=len(serving.conns),
                    limit=serving.limits.max_connections,
                )
                serving.slot.clear()
                await serving.slot.wait()
                continue
            try:
                conn_sock, _ = await loop.sock_accept(serving.sock)
            except OSError as exc:
                await self._accept_failed(serving, exc)
                continue
            self._adopt(serving, conn_sock)
            # Take more of the backlog in the same turn (a burst of connections is served
            # together); while other sockets are active, a bounded number, so a flood of
            # connects is spread over turns.
            gate = serving.gate
            batch = ACCEPTS_PER_TURN if gate is not None and not gate.alone() else BACKLOG
            for _ in range(batch - 1):
                if serving.full():
                    break
                try:
                    conn_sock, _ = serving.sock.accept()
                except BlockingIOError:
                    break
                except OSError as exc:
                    await self._accept_failed(serving, exc)
                    break
                self._adopt(serving, conn_sock)

    async def _accept_failed(self, serving: Serving, exc: OSError) -> None:
        serving.note("accept_error", error=f"{exc.__class__.__name__}: {exc}")
        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            # Out of descriptors: wait for a connection to close (or a second) first.
            self.fd_freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.fd_freed.wait(), 1.0)

    def _adopt(self, serving: Serving, conn_sock: socket.socket) -> None:
        """Make a connection of an accepted socket (its transport is set up in a task)."""
        loop = asyncio.get_running_loop()
        conn_sock.setblocking(False)
        serving.pending += 1
        made: list[Connection] = []

        def factory() -> Connection:
            made.append(Connection(serving))
            return made[0]

        task = loop.create_task(loop.connect_accepted_socket(factory, conn_sock))
        self.adopting.add(task)

        def done(task: asyncio.Task[Any]) -> None:
            self.adopting.discard(task)
            if task.cancelled() or task.exception() is not None:
                conn_sock.close()
                if not made or made[0].transport is None:
                    serving.pending -= 1  # never opened: no longer pending either
                serving.slot.set()
                if not task.cancelled():
                    serving.note("accept_error", error=str(task.exception()))

        task.add_done_callback(done)

    def _report_limit(self, principal: str, kind: str, count: int, fields: dict[str, Any]) -> None:
        log.warning(
            "limit reached",
            extra={"fields": {"principal": principal, "limit": kind, "count": count, **fields}},
        )
        if self.on_limit is not None:
            try:
                self.on_limit(principal, kind, count, fields)
            except Exception:
                log.exception("recording a limit report failed")

    # --- one request --------------------------------------------------------------------

    async def dispatch(
        self,
        listener: Listener,
        request: Request,
        *,
        conn: Connection | None = None,
        undelivered: list[Callable[[], None]] | None = None,
    ) -> Response | StreamResponse:
        try:
            route, params = listener.router.match(request.method, request.path)
            serving = conn.serving if conn is not None else None
            if serving is not None and serving.rates is not None and route.rate is not None:
                try:
                    serving.rates.check(listener.principal, route.rate)
                except LegionError:
                    serving.note("rate_limited", bucket=route.rate)
                    raise
            if self.redact is not None and request.body:
                # A vault value is never accepted into host state.
                request.body = self.redact(request.body)
            body: Any = None
            if route.body is not None:
                try:
                    body = route.body.model_validate_json(request.body or b"null")
                except ValidationError as exc:
                    raise LegionError(
                        "invalid request body: "
                        + "; ".join(
                            f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                            for e in exc.errors()
                        ),
                        code="invalid_body",
                        status=422,
                        errors=json.loads(exc.json(include_url=False, include_input=False)),
                    ) from None
            call = Call(listener.principal, request, params, body)
            if undelivered is not None:
                call.undelivered = undelivered
            if route.policy is not None and self.authorize is not None:
                self.authorize(call, route)
            if conn is None or not route.cancel_on_disconnect:
                return _encode(await route.handler(call))
            conn.cancellable = True  # a handler that only waits: stop it if the client goes
            try:
                return _encode(await route.handler(call))
            finally:
                conn.cancellable = False
        except LegionError as exc:
            return error_response(exc)
        except Exception:
            log.exception("unhandled error serving %s %s", request.method, request.path)
            detail = ErrorDetail(
                code="internal", message="internal error; see the host log", status=500
            )
            return Response(500, ErrorBody(error=detail).model_dump_json().encode())
