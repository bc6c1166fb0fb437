"""A small HTTP/1.1 server for Unix sockets, with a declarative route table.

Why not an ASGI server: the host serves one socket per agent, and the identity
of a caller is the socket it connected to. Binding identity at accept time, in
code we own, keeps that invariant one line long (`Listener.principal`), lets
hundreds of listeners share one event loop without per-server signal handling,
and keeps a request hop to a few tens of microseconds.

Each route declares its body model, response model and policy (permission and
target) in one place; the server validates, authorizes and audits before the
handler runs, so no handler can forget to.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import BaseModel, TypeAdapter, ValidationError

from legion.errors import LegionError
from legion.paths import MAX_SOCKET_PATH
from legion.wire.errors import ErrorBody, ErrorDetail
from legion.wire.fields import CONFIGURED

log = logging.getLogger("legion.http")

MAX_HEAD_BYTES = 32 * 1024


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"


@dataclass
class StreamResponse:
    """A chunked response; each item of `chunks` is written and flushed as it comes."""

    chunks: AsyncIterator[bytes]
    status: int = 200
    content_type: str = "application/x-ndjson"
    # Runs when the client is gone before the first chunk was asked for: the producer's
    # own `finally` never ran then (an async generator that never started has nothing to
    # clean up), so whoever holds a resource for it (a reservation, a subscription) frees it.
    on_abandon: Callable[[], Awaitable[None]] | None = None


@dataclass
class Call:
    """One request as a handler sees it: who (from the socket), what, validated body."""

    principal: str
    request: Request
    params: dict[str, str]
    body: Any


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
                )
            )
            return handler

        return register

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        allowed: list[str] = []
        for route in self.routes:
            m = route.regex.match(path)
            if m is None:
                continue
            if route.method != method:
                allowed.append(route.method)
                continue
            return route, {k: unquote(v) for k, v in m.groupdict().items()}
        if allowed:
            raise LegionError(
                f"{method} is not allowed on {path}; use {', '.join(allowed)}",
                code="method_not_allowed",
                status=405,
                allowed=allowed,
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


def _error_bytes(exc: LegionError) -> bytes:
    return exc.body().model_dump_json().encode()


def _encode(result: BaseModel | Response | StreamResponse) -> Response | StreamResponse:
    if isinstance(result, Response | StreamResponse):
        return result
    return Response(200, result.model_dump_json().encode())


@dataclass
class Listener:
    """One socket and the principal every request on it acts as."""

    path: Path
    principal: str
    router: Router
    mode: int = 0o600
    owner: tuple[int, int] | None = None  # chown the socket and its folder to this uid:gid


class HttpServer:
    """Serves any number of Unix-socket listeners on the running loop."""

    def __init__(
        self,
        *,
        max_body_bytes: int,
        authorize: Authorizer | None = None,
        redact: Callable[[bytes], bytes] | None = None,
        redact_again: Callable[[bytes], bytes] | None = None,
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self.authorize = authorize
        self.redact = redact
        # For the 2nd..nth chunk of one streamed response: no re-reading of the secrets.
        self.redact_again = redact_again or redact
        self._servers: dict[Path, asyncio.AbstractServer] = {}
        self._conns: set[asyncio.Task[None]] = set()

    async def listen(self, listener: Listener) -> None:
        path = listener.path
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            raise LegionError(
                f"socket path {path} is {len(os.fsencode(path))} bytes; Unix sockets allow "
                f"{MAX_SOCKET_PATH}. Use a shorter LEGION_HOME",
                code="socket_path_too_long",
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_socket() or path.exists():
            path.unlink()

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._conns.add(task)
            try:
                await self._serve_connection(listener, reader, writer)
            finally:
                self._conns.discard(task)

        old_umask = os.umask(0o177)  # the socket is born 0600, no window
        try:
            server = await asyncio.start_unix_server(
                on_connect, path=str(path), limit=MAX_HEAD_BYTES
            )
        finally:
            os.umask(old_umask)
        # Never follow a symlink here: an agent's folder may be writable by a container of
        # an earlier host still running, which could swap the socket for a link. (The socket
        # was born 0600 under the umask above; chown below does not follow links.)
        if path.is_symlink() or not path.is_socket():
            raise LegionError(
                f"{path} was replaced by something other than our socket; "
                "stop the old agent container and restart",
                code="socket_swapped",
                status=500,
            )
        os.chmod(path, listener.mode)
        if listener.owner is not None:
            if path.parent.is_symlink():
                raise LegionError(
                    f"{path.parent} is a symlink; remove it and restart",
                    code="socket_dir_symlink",
                    status=500,
                )
            os.chown(path.parent, *listener.owner, follow_symlinks=False)
            os.chmod(path.parent, 0o700)
            os.chown(path, *listener.owner, follow_symlinks=False)
        self._servers[path] = server

    async def listen_tcp(
        self, host: str, port: int, principal: str, router: Router
    ) -> tuple[str, int]:
        """Serve `router` on a TCP address (the webhook listener; loopback unless the
        operator binds elsewhere). Every request acts as `principal`. Returns the bound
        (host, port): port 0 picks a free one."""
        listener = Listener(Path(f"tcp:{host}:{port}"), principal, router)

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._conns.add(task)
            try:
                await self._serve_connection(listener, reader, writer)
            finally:
                self._conns.discard(task)

        server = await asyncio.start_server(on_connect, host, port, limit=MAX_HEAD_BYTES)
        bound = server.sockets[0].getsockname()
        self._servers[Path(f"tcp:{bound[0]}:{bound[1]}")] = server
        return str(bound[0]), int(bound[1])

    async def unlisten(self, path: Path) -> None:
        server = self._servers.pop(path, None)
        if server is not None:
            server.close()
            await server.wait_closed()
        path.unlink(missing_ok=True)  # noqa: ASYNC240 - a local unlink, microseconds

    async def close(self) -> None:
        for path in list(self._servers):
            server = self._servers.pop(path)
            server.close()
            if path.is_socket():
                path.unlink()
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)

    # --- one connection ---------------------------------------------------------

    async def _serve_connection(
        self, listener: Listener, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                except asyncio.LimitOverrunError:
                    await self._write(
                        writer,
                        Response(
                            431,
                            _error_bytes(
                                LegionError(
                                    "request head too large", code="head_too_large", status=431
                                )
                            ),
                        ),
                        False,
                    )
                    return
                keep_alive = await self._handle(listener, head, reader, writer)
                if not keep_alive:
                    return
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(
        self,
        listener: Listener,
        head: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> bool:
        try:
            request_line, *header_lines = head[:-4].decode("latin-1").split("\r\n")
            method, target, version = request_line.split(" ", 2)
            headers: dict[str, str] = {}
            for line in header_lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        except ValueError:
            await self._write(
                writer,
                Response(
                    400,
                    _error_bytes(LegionError("malformed HTTP request", code="malformed_request")),
                ),
                False,
            )
            return False
        keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
        if "chunked" in headers.get("transfer-encoding", "").lower():
            await self._write(
                writer,
                Response(
                    411,
                    _error_bytes(
                        LegionError(
                            "chunked request bodies are not accepted; send Content-Length",
                            code="length_required",
                            status=411,
                        )
                    ),
                ),
                False,
            )
            return False
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            length = -1
        if length < 0:
            await self._write(
                writer,
                Response(
                    400,
                    _error_bytes(LegionError("invalid Content-Length", code="malformed_request")),
                ),
                False,
            )
            return False
        if length > self.max_body_bytes:
            await self._write(
                writer,
                Response(
                    413,
                    _error_bytes(
                        LegionError(
                            f"body is {length} bytes; the limit is {self.max_body_bytes}",
                            code="body_too_large",
                            status=413,
                            limit=self.max_body_bytes,
                        )
                    ),
                ),
                False,
            )
            return False
        try:
            body = await reader.readexactly(length) if length else b""
        except asyncio.IncompleteReadError:
            return False
        if self.redact is not None and body:
            body = self.redact(body)  # a vault value is never accepted into host state
        split = urlsplit(target)
        request = Request(method.upper(), split.path, dict(parse_qsl(split.query)), headers, body)
        response = await self.dispatch(listener, request)
        await self._write(writer, response, keep_alive)
        return keep_alive

    async def dispatch(self, listener: Listener, request: Request) -> Response | StreamResponse:
        try:
            route, params = listener.router.match(request.method, request.path)
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
            if route.policy is not None and self.authorize is not None:
                self.authorize(call, route)
            return _encode(await route.handler(call))
        except LegionError as exc:
            return Response(exc.status, _error_bytes(exc))
        except Exception:
            log.exception("unhandled error serving %s %s", request.method, request.path)
            detail = ErrorDetail(
                code="internal", message="internal error; see the host log", status=500
            )
            return Response(500, ErrorBody(error=detail).model_dump_json().encode())

    async def _write(
        self, writer: asyncio.StreamWriter, response: Response | StreamResponse, keep_alive: bool
    ) -> None:
        reason = HTTPStatus(response.status).phrase
        conn = "keep-alive" if keep_alive else "close"
        if isinstance(response, Response):
            if self.redact is not None:
                response.body = self.redact(response.body)
            writer.write(
                f"HTTP/1.1 {response.status} {reason}\r\ncontent-type: {response.content_type}"
                f"\r\ncontent-length: {len(response.body)}\r\nconnection: {conn}\r\n\r\n".encode()
                + response.body
            )
            await writer.drain()
            return
        chunks = response.chunks
        redact = self.redact
        started = False
        try:
            # Inside the try: a client gone before the headers still runs the producer's
            # cleanup (settling an LLM reservation, closing the upstream, an event feed).
            writer.write(
                f"HTTP/1.1 {response.status} {reason}\r\ncontent-type: "
                f"{response.content_type}\r\ntransfer-encoding: chunked\r\n"
                f"connection: {conn}\r\n\r\n".encode()
            )
            await writer.drain()
            started = True
            async for chunk in chunks:
                if chunk:
                    if redact is not None:
                        chunk = redact(chunk)
                        redact = self.redact_again
                    writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    await writer.drain()
        finally:
            # Run the producer's cleanup now (e.g. settle an aborted LLM stream), not at GC.
            if not started and response.on_abandon is not None:
                await response.on_abandon()
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
