"""A client of the host's control socket, for the CLI (and the TUI's socket transport)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from legion.paths import Paths
from legion.wire.api import (
    AgentInfo,
    AgentList,
    BlackboardDeleted,
    BlackboardEntry,
    BlackboardList,
    HostStatus,
    MessageQueued,
    PurgeResult,
    ReloadResult,
    StopResponse,
)
from legion.wire.automation import (
    CronJob,
    CronJobList,
    CronRemoved,
    CronRun,
    CronRunList,
    SteerQueued,
    WebhookInfo,
    WebhookJob,
    WebhookList,
    WebhookRemoved,
)
from legion.wire.browser import BrowserInfo, BrowserList, Handoff
from legion.wire.dispatch import PauseState
from legion.wire.errors import ErrorBody
from legion.wire.events import parse_event
from legion.wire.mcp import McpList
from legion.wire.skills import SkillInfo, SkillList, SkillText

if TYPE_CHECKING:
    from legion.api.remote import Remote


class HostNotRunning(Exception):
    def __init__(self, paths: Paths) -> None:
        super().__init__(
            f"no legion host is running for {paths.home} (no control socket at "
            f"{paths.control_socket}); start one with `legion daemon` (or `make run`)"
        )


class ControlSocketGone(HostNotRunning):
    """A host holds this home's lock, but its control socket is missing or dead."""

    def __init__(self, paths: Paths, pid: int | None) -> None:
        Exception.__init__(
            self,
            f"the host (pid {pid if pid is not None else 'unknown'}) is running for "
            f"{paths.home} but its control socket {paths.control_socket} is gone; it serves "
            "it again within seconds"
            + (f" (or at once on `kill -HUP {pid}`)" if pid is not None else "")
            + "; `legion stop` still stops it",
        )
        self.paths = paths
        self.pid = pid


class NoPermission(HostNotRunning):
    """This user may not use the control socket (the host runs as another user)."""

    def __init__(self, paths: Paths) -> None:
        Exception.__init__(
            self,
            f"permission denied on {paths.control_socket}: the host for {paths.home} belongs "
            "to another user; run this as that user (e.g. with sudo)",
        )


def not_running(paths: Paths) -> HostNotRunning:
    """HostNotRunning, or ControlSocketGone when the host lock says a host is there, or
    NoPermission when this user cannot look."""
    from legion.hostlock import lock_holder

    try:
        holder = lock_holder(paths)
    except PermissionError:
        return NoPermission(paths)
    except OSError:
        holder = None
    return HostNotRunning(paths) if holder is None else ControlSocketGone(paths, holder.pid)


def _denied(exc: BaseException) -> bool:
    """Whether a connect error was, at its root, a permission error."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, PermissionError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _socket_present(paths: Paths) -> bool:
    try:
        return paths.control_socket.exists()
    except PermissionError:
        raise NoPermission(paths) from None


class ApiError(Exception):
    def __init__(self, body: ErrorBody) -> None:
        super().__init__(body.error.message)
        self.body = body
        self.status = body.error.status
        self.code = body.error.code


class ControlClient:
    """The control API, blocking: this home's control socket, or a remote daemon's through
    ssh (`ControlClient.remote`, `legion --host ssh://...`)."""

    def __init__(
        self, paths: Paths, timeout: float = 35.0, *, _remote: Remote | None = None
    ) -> None:
        self.paths = paths
        self._remote = _remote
        transport: httpx.BaseTransport
        if _remote is not None:
            from legion.api.remote import SshTransport

            transport = SshTransport(_remote)
        else:
            transport = httpx.HTTPTransport(uds=str(paths.control_socket))
        self._http = httpx.Client(transport=transport, base_url="http://legion", timeout=timeout)

    @classmethod
    def remote(cls, remote: Remote, timeout: float = 35.0) -> ControlClient:
        """A client of the daemon on `remote`, each connection an `ssh ... dial-stdio`."""
        home = remote.home or "~"
        return cls(Paths.resolve(f"/remote/{remote.target}/{home}"), timeout, _remote=remote)

    def _check(self) -> None:
        """Fail early, with the reason, when no local host can be there."""
        if self._remote is None and not _socket_present(self.paths):
            raise not_running(self.paths)

    def _unreachable(self, exc: BaseException) -> HostNotRunning:
        """The error for a connection that failed (local) or broke (remote)."""
        if self._remote is not None:
            return self._remote.lost(exc)
        if _denied(exc):
            return NoPermission(self.paths)
        return not_running(self.paths)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, url: str, model: type[BaseModel] | None, **kw: Any) -> Any:
        self._check()
        try:
            response = self._http.request(method, url, **kw)
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise self._unreachable(exc) from exc
        except FileNotFoundError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code >= 400:
            raise _api_error(response)
        return model.model_validate_json(response.content) if model else response.json()

    def status(self) -> HostStatus:
        result: HostStatus = self._request("GET", "/v1/status", HostStatus)
        return result

    def stop(self) -> StopResponse:
        result: StopResponse = self._request("POST", "/v1/stop", StopResponse)
        return result

    def bb_get(self, key: str) -> BlackboardEntry:
        result: BlackboardEntry = self._request(
            "GET", f"/v1/blackboard/entries/{quote(key, safe='')}", BlackboardEntry
        )
        return result

    def bb_put(self, key: str, value: Any, ttl_s: float | None = None) -> BlackboardEntry:
        body: dict[str, Any] = {"value": value}
        if ttl_s is not None:
            body["ttl_s"] = ttl_s
        result: BlackboardEntry = self._request(
            "PUT", f"/v1/blackboard/entries/{quote(key, safe='')}", BlackboardEntry, json=body
        )
        return result

    def bb_list(self, prefix: str = "") -> BlackboardList:
        result: BlackboardList = self._request(
            "GET", "/v1/blackboard/entries", BlackboardList, params={"prefix": prefix}
        )
        return result

    def bb_delete(self, key: str) -> BlackboardDeleted:
        result: BlackboardDeleted = self._request(
            "DELETE", f"/v1/blackboard/entries/{quote(key, safe='')}", BlackboardDeleted
        )
        return result

    def send(self, to: str, payload: Any) -> MessageQueued:
        result: MessageQueued = self._request(
            "POST", "/v1/messages", MessageQueued, json={"to": to, "payload": payload}
        )
        return result

    def agents(self) -> AgentList:
        result: AgentList = self._request("GET", "/v1/agents", AgentList)
        return result

    def agent_action(self, name: str, action: str) -> AgentInfo:
        result: AgentInfo = self._request(
            "POST", f"/v1/agents/{quote(name, safe='')}/{action}", AgentInfo, timeout=120
        )
        return result

    def purge(self, name: str) -> PurgeResult:
        result: PurgeResult = self._request(
            "DELETE", f"/v1/agents/{quote(name, safe='')}/state", PurgeResult
        )
        return result

    def mcp(self, agent: str | None = None) -> McpList:
        params = {"agent": agent} if agent else {}
        result: McpList = self._request("GET", "/v1/mcp", McpList, params=params)
        return result

    def skills(self, agent: str | None = None) -> SkillList:
        params = {"agent": agent} if agent else {}
        result: SkillList = self._request("GET", "/v1/skills", SkillList, params=params)
        return result

    def skill_add(
        self, name: str, files: dict[str, str], agent: str | None, replace: bool
    ) -> SkillInfo:
        body = {"name": name, "agent": agent, "files": files, "replace": replace}
        result: SkillInfo = self._request("POST", "/v1/skills", SkillInfo, json=body, timeout=120)
        return result

    def skill_remove(self, name: str, agent: str | None) -> SkillList:
        params = {"agent": agent} if agent else {}
        result: SkillList = self._request(
            "DELETE", f"/v1/skills/{quote(name, safe='')}", SkillList, params=params
        )
        return result

    def skill_show(self, name: str, agent: str | None, source: str | None) -> SkillText:
        params = {k: v for k, v in (("agent", agent), ("source", source)) if v}
        result: SkillText = self._request(
            "GET", f"/v1/skills/{quote(name, safe='')}", SkillText, params=params
        )
        return result

    def skill_promote(self, name: str, agent: str, to: str | None, replace: bool) -> SkillInfo:
        body = {"agent": agent, "to": to, "replace": replace}
        result: SkillInfo = self._request(
            "POST", f"/v1/skills/{quote(name, safe='')}/promote", SkillInfo, json=body
        )
        return result

    def reload(self) -> ReloadResult:
        result: ReloadResult = self._request("POST", "/v1/config/reload", ReloadResult, timeout=120)
        return result

    def logs(
        self,
        name: str,
        *,
        tail: int | None = None,
        since: float | None = None,
        follow: bool = False,
    ) -> Iterator[str]:
        """An agent's container output, line by line, each without its newline (with
        `follow`, until the container stops)."""
        self._check()
        params: dict[str, str] = {
            "tail": "all" if tail is None else str(tail),
            "follow": "true" if follow else "false",
        }
        if since is not None:
            params["since"] = repr(since)
        url = f"/v1/agents/{quote(name, safe='')}/logs"
        try:
            with self._http.stream(
                "GET", url, params=params, timeout=httpx.Timeout(30.0, read=None)
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _api_error(response)
                for raw in response.iter_lines():
                    if not raw:
                        continue
                    record = json.loads(raw)
                    if isinstance(record, dict) and isinstance(record.get("line"), str):
                        yield record["line"]  # anything else is a keep-alive
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise self._unreachable(exc) from exc
        except FileNotFoundError as exc:
            raise self._unreachable(exc) from exc

    # --- automation (legion/automation) ---------------------------------------------

    def call(self, method: str, url: str, model: type[BaseModel] | None = None, **kw: Any) -> Any:
        """Any control route: the parsed `model`, or the decoded JSON."""
        return self._request(method, url, model, **kw)

    def cron_jobs(self, agent: str | None = None) -> CronJobList:
        params = {"agent": agent} if agent else {}
        result: CronJobList = self._request("GET", "/v1/cron/jobs", CronJobList, params=params)
        return result

    def cron_add(self, spec: dict[str, Any]) -> CronJob:
        result: CronJob = self._request("POST", "/v1/cron/jobs", CronJob, json=spec)
        return result

    def cron_remove(self, job_id: int) -> CronRemoved:
        result: CronRemoved = self._request("DELETE", f"/v1/cron/jobs/{job_id}", CronRemoved)
        return result

    def cron_action(self, job_id: int, action: str) -> Any:
        model: type[BaseModel] = CronRun if action == "run" else CronJob
        return self._request("POST", f"/v1/cron/jobs/{job_id}/{action}", model)

    def cron_runs(self, job_id: int) -> CronRunList:
        result: CronRunList = self._request("GET", f"/v1/cron/jobs/{job_id}/runs", CronRunList)
        return result

    def webhooks(self) -> WebhookList:
        result: WebhookList = self._request("GET", "/v1/webhooks", WebhookList)
        return result

    def webhook_add(self, spec: dict[str, Any]) -> WebhookInfo:
        result: WebhookInfo = self._request("POST", "/v1/webhooks", WebhookInfo, json=spec)
        return result

    def webhook_remove(self, name: str) -> WebhookRemoved:
        result: WebhookRemoved = self._request(
            "DELETE", f"/v1/webhooks/{quote(name, safe='')}", WebhookRemoved
        )
        return result

    def webhook_rotate(self, name: str, secret: str) -> WebhookInfo:
        result: WebhookInfo = self._request(
            "POST",
            f"/v1/webhooks/{quote(name, safe='')}/rotate",
            WebhookInfo,
            json={"secret": secret},
        )
        return result

    def webhook_job(self, job: str) -> WebhookJob:
        result: WebhookJob = self._request(
            "GET", f"/v1/webhooks/jobs/{quote(job, safe='')}", WebhookJob
        )
        return result

    def steer(self, to: str, text: str) -> SteerQueued:
        result: SteerQueued = self._request(
            "POST", "/v1/steer", SteerQueued, json={"to": to, "text": text}
        )
        return result

    # --- the kill switch (legion/gateway/llm/inflight.py) ---------------------------

    def pause(self, agent: str | None, reason: str = "") -> PauseState:
        """Pause `agent`'s LLM calls (None: the whole fleet)."""
        body = {"all": True} if agent is None else {"agent": agent}
        result: PauseState = self._request(
            "POST", "/v1/pause", PauseState, json={**body, "reason": reason}
        )
        return result

    def resume(self, agent: str | None) -> PauseState:
        body = {"all": True} if agent is None else {"agent": agent}
        result: PauseState = self._request("POST", "/v1/resume", PauseState, json=body)
        return result

    def paused(self) -> PauseState:
        result: PauseState = self._request("GET", "/v1/pause", PauseState)
        return result

    def browsers(self) -> BrowserList:
        result: BrowserList = self._request("GET", "/v1/browsers", BrowserList)
        return result

    def browser_handoff(self, name: str) -> Handoff:
        result: Handoff = self._request(
            "POST", f"/v1/browsers/{quote(name, safe='')}/handoff", Handoff, timeout=120
        )
        return result

    def browser_done(self, name: str, note: str = "") -> BrowserInfo:
        result: BrowserInfo = self._request(
            "POST", f"/v1/browsers/{quote(name, safe='')}/done", BrowserInfo, json={"note": note}
        )
        return result

    def browser_stop(self, name: str) -> BrowserInfo:
        result: BrowserInfo = self._request(
            "POST", f"/v1/browsers/{quote(name, safe='')}/stop", BrowserInfo, timeout=60
        )
        return result

    def running(self) -> bool:
        try:
            self.status()
        except HostNotRunning:
            return False
        return True

    def events(self, on_open: Callable[[], None] | None = None) -> Iterator[Any]:
        """Typed host events as they happen (blocks; stop with Ctrl-C). `on_open` runs once
        the host has subscribed this stream: every later event will be delivered."""
        self._check()
        try:
            with self._http.stream("GET", "/v1/events", timeout=None) as response:
                if on_open is not None:
                    on_open()
                for line in response.iter_lines():
                    if line:
                        yield parse_event(line)
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise self._unreachable(exc) from exc


def _api_error(response: httpx.Response) -> ApiError:
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
    return ApiError(body)
