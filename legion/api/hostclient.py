"""`HostClient`: one async client of the host's control API, whatever carries the bytes.

The operations (status, agents, chat, events, costs, blackboard, audit, config, vault) are
written once, against the control routes. What differs between an attached TUI and an
embedded one is only the transport, an `httpx.AsyncBaseTransport`:

* `socket_transport(paths)`: the daemon's control socket (`run/control.sock`);
* `InProcessTransport(host)`: the control router of a host running in this process, called
  directly (same routes, policies, audit, redaction and error bodies; no socket);
* `AsyncSshTransport(remote)` (`legion --host ssh://user@server`, `open_remote`): each
  connection an `ssh ... legion dial-stdio` process bridged to the server's control socket
  (legion/api/remote.py); nothing else changes.

So both modes yield the same typed events (`legion.wire.events`), parsed from the same
redacted NDJSON. `open_host(paths)` picks the mode: attach when a host answers on this
LEGION_HOME, else embed one (holding the host lock, so a daemon cannot start beside it).
The CLI can use the same client (`asyncio.run`) where it wants async streaming.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qsl, quote

import httpx
from pydantic import BaseModel

from legion.api.client import ApiError, HostNotRunning
from legion.errors import LegionError
from legion.paths import Paths
from legion.wire.api import (
    AgentInfo,
    AgentList,
    BlackboardDeleted,
    BlackboardEntry,
    BlackboardList,
    HostStatus,
    MessageQueued,
    ReloadResult,
)
from legion.wire.automation import SteerQueued
from legion.wire.browser import BrowserInfo, BrowserList, Handoff
from legion.wire.dispatch import PauseState
from legion.wire.errors import ErrorBody
from legion.wire.events import parse_event
from legion.wire.ops import (
    AuditPage,
    AuditVerdict,
    ClaimList,
    ConfigCheck,
    CostReport,
    VaultList,
)

if TYPE_CHECKING:
    from legion.api.remote import Remote
    from legion.fleet.backend import RuntimeBackend
    from legion.host import Host

__all__ = [
    "AgentDraft",
    "ApiError",
    "HostClient",
    "HostNotRunning",
    "InProcessTransport",
    "Mode",
    "open_host",
    "open_remote",
    "socket_transport",
]

log = logging.getLogger("legion.hostclient")

Mode = Literal["embedded", "attached"]
TransportFactory = Callable[[], httpx.AsyncBaseTransport]


@dataclass(frozen=True)
class AgentDraft:
    """A new agent, as `legion agents add` takes it."""

    name: str
    model: str | None = None
    role: str | None = None
    team: str | None = None
    budget_daily: float | None = None
    budget_monthly: float | None = None


def socket_transport(paths: Paths) -> httpx.AsyncBaseTransport:
    from legion.api.sockstream import UnixSocketTransport

    return UnixSocketTransport(str(paths.control_socket))


class HostClient:
    """The host's control API, async. `mode` and `label` say what it is connected to."""

    def __init__(
        self,
        transport: httpx.AsyncBaseTransport,
        paths: Paths,
        *,
        mode: Mode,
        timeout: float = 35.0,
        remote: Remote | None = None,
    ) -> None:
        self.paths = paths
        self.mode: Mode = mode
        self.remote = remote  # the daemon is on another machine, through ssh
        self.label = "embedded host" if mode == "embedded" else "attached"
        if remote is not None:
            self.label = f"attached to {remote.target}"
        self.host_pid: int | None = None
        # Embedded only: returns when the host was asked to stop (`legion stop`, POST /v1/stop).
        self.stop_requested: Callable[[], Awaitable[None]] | None = None
        self._http = httpx.AsyncClient(
            transport=transport, base_url="http://legion", timeout=timeout
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- plumbing ---------------------------------------------------------------------

    def _unreachable(self, exc: BaseException) -> HostNotRunning:
        if self.remote is not None:
            return self.remote.lost(exc)
        return HostNotRunning(self.paths)

    async def _request(self, method: str, url: str, model: type[BaseModel], **kw: Any) -> Any:
        try:
            response = await self._http.request(method, url, **kw)
        except (
            httpx.ConnectError,
            httpx.RemoteProtocolError,
            httpx.ReadError,
            FileNotFoundError,
        ) as exc:
            raise self._unreachable(exc) from exc
        if response.status_code >= 400:
            try:
                body = ErrorBody.model_validate_json(response.content)
            except ValueError:
                body = ErrorBody.model_validate(
                    {
                        "error": {
                            "code": "http_error",
                            "status": response.status_code,
                            "message": response.text[:500],
                        }
                    }
                )
            raise ApiError(body)
        return model.model_validate_json(response.content)

    # --- host and fleet ---------------------------------------------------------------

    async def status(self) -> HostStatus:
        status: HostStatus = await self._request("GET", "/v1/status", HostStatus)
        self.host_pid = status.pid
        if self.remote is not None:
            self.label = f"attached to {self.remote.target} (daemon pid {status.pid})"
        elif self.mode == "attached":
            self.label = f"attached to daemon pid {status.pid}"
        return status

    async def agents(self) -> AgentList:
        result: AgentList = await self._request("GET", "/v1/agents", AgentList)
        return result

    async def agent_action(
        self, name: str, action: Literal["start", "stop", "restart"]
    ) -> AgentInfo:
        result: AgentInfo = await self._request(
            "POST", f"/v1/agents/{quote(name, safe='')}/{action}", AgentInfo, timeout=120
        )
        return result

    async def add_agent(self, draft: AgentDraft) -> ReloadResult:
        """Add `[agents.NAME]` to legion.toml (validated, atomic), then apply it."""
        import re

        from legion.config import NAME_RE
        from legion.config_edit import AgentFields, add_agent

        if not re.fullmatch(NAME_RE, draft.name):  # it becomes a TOML table name
            raise ApiError(
                LegionError(
                    f"invalid agent name {draft.name!r}: lowercase letters, digits and '-', "
                    "starting with a letter, at most 32 characters",
                    code="invalid_name",
                    status=422,
                ).body()
            )

        def edit(text: str) -> str:
            fields = AgentFields(
                role=draft.role,
                model=draft.model,
                team=draft.team,
                budget_daily=draft.budget_daily,
                budget_monthly=draft.budget_monthly,
            )
            return add_agent(text, draft.name, fields)  # AgentExists: 409 agent_exists

        await self._edit_config(edit)
        return await self.config_reload()

    async def remove_agent(self, name: str) -> ReloadResult:
        """Remove `[agents.NAME]` (and its sub-tables) from legion.toml, then apply it."""
        from legion.config_edit import remove_agent

        def edit(text: str) -> str:
            return remove_agent(text, name)  # UnknownAgent: 404 unknown_agent

        await self._edit_config(edit)
        return await self.config_reload()

    async def _edit_config(self, edit: Callable[[str], str]) -> None:
        from legion.config import read_config_text
        from legion.config_edit import write_validated
        from legion.errors import ConfigError

        if self.remote is not None:
            raise ApiError(
                LegionError(
                    f"legion.toml is on {self.remote.target}: edit it there (`ssh "
                    f"{self.remote.target} legion agents add ...`); the daemon applies it on "
                    "`config: Reload`",
                    code="remote_config",
                    status=409,
                ).body()
            )
        path = self.paths.config

        def apply() -> None:
            try:
                text = read_config_text(path) or ""
                write_validated(path, edit(text))
            except ConfigError as exc:
                raise LegionError(
                    "the change would make legion.toml invalid; nothing was written: "
                    + "; ".join(exc.problems),
                    code="config_invalid",
                    status=422,
                ) from None

        try:
            await asyncio.to_thread(apply)
        except LegionError as exc:
            raise ApiError(exc.body()) from None

    # --- messages and events ------------------------------------------------------------

    async def send(self, agent: str, text: str) -> MessageQueued:
        result: MessageQueued = await self._request(
            "POST", "/v1/messages", MessageQueued, json={"to": agent, "payload": {"text": text}}
        )
        return result

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[AsyncIterator[Any]]:
        """`async with client.subscribe() as events:`: subscribed once entered (the host
        keeps every later event for this stream); `events` yields typed host events."""
        try:
            async with self._http.stream("GET", "/v1/events", timeout=None) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise ApiError(ErrorBody.model_validate_json(response.content))

                async def events() -> AsyncIterator[Any]:
                    async for line in response.aiter_lines():
                        if line:
                            yield parse_event(line)

                yield events()
        except (httpx.ConnectError, FileNotFoundError) as exc:
            raise self._unreachable(exc) from exc

    async def chat(self, agent: str, text: str) -> AsyncIterator[Any]:
        """Send `text` to `agent` and yield what it does about it: token deltas, tool calls,
        notifications, then its reply (or the failure that ends the turn)."""
        async with self.subscribe() as events:
            queued = await self.send(agent, text)
            async for event in events:
                if getattr(event, "agent", None) != agent:
                    continue
                kind = event.type
                if kind in (
                    "token_delta",
                    "tool_call_started",
                    "tool_call_finished",
                    "agent_notification",
                ):
                    yield event
                else:
                    ends = (kind == "agent_reply" and event.in_reply_to == queued.item_id) or (
                        kind == "agent_state" and event.state == "failed"
                    )
                    if ends:
                        yield event
                        return

    async def steer(self, agent: str, text: str) -> SteerQueued:
        """Steer `agent`: the text reaches its running turn between two tool rounds (or is
        its next turn when idle), ahead of its queue."""
        result: SteerQueued = await self._request(
            "POST", "/v1/steer", SteerQueued, json={"to": agent, "text": text}
        )
        return result

    # --- the kill switch ---------------------------------------------------------------

    async def pause(self, agent: str | None, reason: str = "") -> PauseState:
        """Pause `agent`'s LLM calls (None: the whole fleet): in-flight calls are cut,
        new ones refused until `resume`."""
        body: dict[str, Any] = {"all": True} if agent is None else {"agent": agent}
        result: PauseState = await self._request(
            "POST", "/v1/pause", PauseState, json={**body, "reason": reason}
        )
        return result

    async def resume(self, agent: str | None) -> PauseState:
        body: dict[str, Any] = {"all": True} if agent is None else {"agent": agent}
        result: PauseState = await self._request("POST", "/v1/resume", PauseState, json=body)
        return result

    async def paused(self) -> PauseState:
        result: PauseState = await self._request("GET", "/v1/pause", PauseState)
        return result

    # --- read-outs ---------------------------------------------------------------------

    async def costs(self) -> CostReport:
        result: CostReport = await self._request("GET", "/v1/costs", CostReport)
        return result

    async def audit(
        self, *, actor: str | None = None, decision: str | None = None, limit: int = 200
    ) -> AuditPage:
        params: dict[str, str | int] = {"limit": limit}
        if actor:
            params["actor"] = actor
        if decision:
            params["decision"] = decision
        result: AuditPage = await self._request("GET", "/v1/audit", AuditPage, params=params)
        return result

    async def audit_verify(self) -> AuditVerdict:
        result: AuditVerdict = await self._request(
            "GET", "/v1/audit/verify", AuditVerdict, timeout=300
        )
        return result

    async def config_check(self) -> ConfigCheck:
        result: ConfigCheck = await self._request("GET", "/v1/config/check", ConfigCheck)
        return result

    async def config_reload(self) -> ReloadResult:
        result: ReloadResult = await self._request(
            "POST", "/v1/config/reload", ReloadResult, timeout=120
        )
        return result

    async def vault_list(self) -> VaultList:
        result: VaultList = await self._request("GET", "/v1/vault", VaultList)
        return result

    # --- blackboard --------------------------------------------------------------------

    async def bb_list(self, prefix: str = "") -> BlackboardList:
        result: BlackboardList = await self._request(
            "GET", "/v1/blackboard/entries", BlackboardList, params={"prefix": prefix}
        )
        return result

    async def bb_get(self, key: str) -> BlackboardEntry:
        result: BlackboardEntry = await self._request(
            "GET", f"/v1/blackboard/entries/{quote(key, safe='')}", BlackboardEntry
        )
        return result

    async def bb_put(self, key: str, value: Any, ttl_s: float | None = None) -> BlackboardEntry:
        body: dict[str, Any] = {"value": value}
        if ttl_s is not None:
            body["ttl_s"] = ttl_s
        result: BlackboardEntry = await self._request(
            "PUT", f"/v1/blackboard/entries/{quote(key, safe='')}", BlackboardEntry, json=body
        )
        return result

    async def bb_delete(self, key: str) -> BlackboardDeleted:
        result: BlackboardDeleted = await self._request(
            "DELETE", f"/v1/blackboard/entries/{quote(key, safe='')}", BlackboardDeleted
        )
        return result

    async def claims(self) -> ClaimList:
        result: ClaimList = await self._request("GET", "/v1/blackboard/claims", ClaimList)
        return result

    # --- browsers (issue 13: the TUI's browser panel) ----------------------------------

    async def browsers(self) -> BrowserList:
        """Every agent's browser: state, page, last action, waiting for a human."""
        result: BrowserList = await self._request("GET", "/v1/browsers", BrowserList)
        return result

    async def browser_handoff(self, name: str) -> Handoff:
        """A VNC link (with its `ssh -L` hint) to `name`'s browser; starts it if needed."""
        result: Handoff = await self._request(
            "POST", f"/v1/browsers/{quote(name, safe='')}/handoff", Handoff, timeout=120
        )
        return result

    async def browser_done(self, name: str, note: str = "") -> BrowserInfo:
        """End the hand-off: the links stop working, the waiting agent resumes with `note`."""
        result: BrowserInfo = await self._request(
            "POST", f"/v1/browsers/{quote(name, safe='')}/done", BrowserInfo, json={"note": note}
        )
        return result

    async def browser_stop(self, name: str) -> BrowserInfo:
        result: BrowserInfo = await self._request(
            "POST", f"/v1/browsers/{quote(name, safe='')}/stop", BrowserInfo, timeout=60
        )
        return result


# --- the in-process transport ------------------------------------------------------------


class _Chunks(httpx.AsyncByteStream):
    """A streamed route's chunks, redacted as the socket server would, closed like it."""

    def __init__(
        self,
        response: Any,
        redact: Callable[[bytes], bytes] | None,
        again: Callable[[bytes], bytes] | None,
    ) -> None:
        self.response = response
        self.redact = redact
        self.again = again
        self.started = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.started = True
        redact = self.redact
        async for chunk in self.response.chunks:
            if chunk:
                if redact is not None:
                    chunk = redact(chunk)
                    redact = self.again
                yield chunk

    async def aclose(self) -> None:
        if not self.started and self.response.on_abandon is not None:
            await self.response.on_abandon()
        closer = getattr(self.response.chunks, "aclose", None)
        if closer is not None:
            await closer()


class InProcessTransport(httpx.AsyncBaseTransport):
    """Serves requests with the control router of a host in this process: the routes,
    policies, audit, redaction and error bodies of the control socket, without the socket."""

    def __init__(self, host: Host) -> None:
        from legion.api.control import build_control_router
        from legion.api.http import Listener

        self.host = host
        self.listener = Listener(host.paths.control_socket, "operator", build_control_router(host))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        from legion.api.http import Request, Response

        server = self.host.http
        body = await request.aread()
        if body and server.redact is not None:
            body = server.redact(body)  # a vault value is never accepted into host state
        path, _, query = request.url.raw_path.decode("ascii").partition("?")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.headers.raw}
        result = await server.dispatch(
            self.listener, Request(request.method, path, dict(parse_qsl(query)), headers, body)
        )
        if isinstance(result, Response):
            content = server.redact(result.body) if server.redact is not None else result.body
            return httpx.Response(
                result.status, headers={"content-type": result.content_type}, content=content
            )
        return httpx.Response(
            result.status,
            headers={"content-type": result.content_type},
            stream=_Chunks(result, server.redact, server.redact_again),
        )


# --- choosing a mode ------------------------------------------------------------------------


async def _answers(paths: Paths, timeout_s: float = 2.0) -> bool:
    if not paths.control_socket.exists():
        return False
    client = HostClient(socket_transport(paths), paths, mode="attached", timeout=timeout_s)
    try:
        await client.status()
    except (HostNotRunning, ApiError, httpx.HTTPError, OSError):
        return False
    finally:
        await client.aclose()
    return True


async def _wait_for_answer(paths: Paths, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await _answers(paths):
            return True
        await asyncio.sleep(0.1)
    return False


def _log_to(log_file: Path, level: str) -> logging.Handler:
    """Send every log record to `log_file` (mode 0600), as JSON lines, instead of the screen."""
    from legion import logs

    log_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    log_file.touch(mode=0o600, exist_ok=True)
    os.chmod(log_file, 0o600)
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    return handler


@contextlib.asynccontextmanager
async def embedded_host(
    paths: Paths,
    *,
    clock: Callable[[], float] = time.time,
    runtime: RuntimeBackend | Literal["configured"] | None = "configured",
    log_file: Path | None = None,
) -> AsyncIterator[Host]:
    """The host in this process, as `legion daemon` runs it: the lock, the provider keys moved
    from the environment into the vault, the configured runtime backend. Its logs go to
    `log_file` (a terminal UI owns the screen). Raises `AlreadyRunning` when a host holds the lock.
    """
    import importlib

    from legion.config import load_config
    from legion.daemon import _import_provider_keys, acquire_lock

    # The host's modules take a while to import (SQLite, the gateway, pydantic models): off
    # the event loop, so a TUI paints its first frame meanwhile (LiteLLM comes later still,
    # in its own thread, when the host preloads it).
    Host = (await asyncio.to_thread(importlib.import_module, "legion.host")).Host
    lock = acquire_lock(paths)
    handler: logging.Handler | None = None
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        config = load_config(paths.config)
        if log_file is not None:
            handler = _log_to(log_file, config.host.log_level)
        await asyncio.to_thread(_import_provider_keys, paths)
        backend: RuntimeBackend | None
        if runtime == "configured":
            backend = None
            if config.runtime.backend == "docker":
                from legion.fleet.docker_backend import DockerBackend

                backend = DockerBackend(str(paths.home))
        else:
            backend = runtime
        async with Host.running(
            config, paths, clock=clock, preload_llm=True, runtime=backend
        ) as host:
            paths.pid_file.write_text(str(os.getpid()))
            try:
                yield host
            finally:
                paths.pid_file.unlink(missing_ok=True)
    finally:
        lock.close()
        if handler is not None:
            root.handlers[:], _ = saved
            root.setLevel(saved[1])
            handler.close()


@contextlib.asynccontextmanager
async def open_host(
    paths: Paths,
    *,
    clock: Callable[[], float] = time.time,
    runtime: RuntimeBackend | Literal["configured"] | None = "configured",
    log_file: Path | None = None,
    on_host: Callable[[Host], None] | None = None,
) -> AsyncIterator[HostClient]:
    """Attach to the host that answers on this LEGION_HOME, or embed one.

    Leaving the context closes the client; an embedded host then stops its fleet cleanly.
    A daemon that is starting (it holds the lock but does not answer yet) is waited for.
    """
    from legion.daemon import AlreadyRunning

    async with contextlib.AsyncExitStack() as stack:
        transport: httpx.AsyncBaseTransport = socket_transport(paths)
        mode: Mode = "attached"
        if not await _answers(paths):
            try:
                host = await stack.enter_async_context(
                    embedded_host(paths, clock=clock, runtime=runtime, log_file=log_file)
                )
            except AlreadyRunning:
                if not await _wait_for_answer(paths, 20.0):
                    raise
            else:
                if on_host is not None:
                    on_host(host)
                transport, mode = InProcessTransport(host), "embedded"
        client = HostClient(transport, paths, mode=mode)
        if mode == "embedded":
            client.stop_requested = host.wait_stopped
        stack.push_async_callback(client.aclose)
        await client.status()
        yield client


@contextlib.asynccontextmanager
async def open_remote(
    remote: Remote, *, request_timeout_s: float = 35.0
) -> AsyncIterator[HostClient]:
    """Attach to the daemon on another machine through ssh (`legion --host ssh://...`).
    Raises `RemoteError` (a `HostNotRunning`) saying what failed and how to fix it."""
    from legion.api.remote import AsyncSshTransport

    paths = Paths.resolve(f"/remote/{remote.target}/{remote.home or '~'}")
    client = HostClient(
        AsyncSshTransport(remote), paths, mode="attached", timeout=request_timeout_s, remote=remote
    )
    try:
        await client.status()
        yield client
    finally:
        await client.aclose()
