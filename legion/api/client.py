"""A client of the host's control socket, for the CLI (and the TUI's socket transport).

The errors (HostNotRunning, ControlSocketGone, NoPermission, and HostError, which ApiError
extends) live in `legion.api.reach`, importable without httpx or pydantic; they are
re-exported here."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from legion.api.reach import (
    ControlSocketGone,
    HostError,
    HostNotRunning,
    NoPermission,
    bad_response,
    not_running,
    socket_present,
)
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
    WebhookJob,
    WebhookList,
    WebhookRemoved,
    WebhookSecret,
)
from legion.wire.browser import BrowserInfo, BrowserList, Handoff
from legion.wire.db import DbStats, PruneResult
from legion.wire.dispatch import PauseState
from legion.wire.errors import ErrorBody
from legion.wire.events import parse_event
from legion.wire.mcp import McpList
from legion.wire.skills import SkillInfo, SkillList, SkillText

__all__ = [
    "ApiError",
    "ControlClient",
    "ControlSocketGone",
    "HostError",
    "HostNotRunning",
    "NoPermission",
    "not_running",
]

if TYPE_CHECKING:
    from legion.api.remote import Remote


class ApiError(HostError):
    """A typed error the host answered with, and its parsed body."""

    def __init__(self, body: ErrorBody) -> None:
        super().__init__(body.error.status, body.error.code, body.error.message, body.error.detail)
        self.body = body


_socket_present = socket_present


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

    @contextmanager
    def _reaching(self, url: str) -> Iterator[None]:
        """Every way a request to the control socket fails, as the errors `host_errors`
        prints: no host (or a stale socket), no permission, a timeout, or an answer that is
        not the host's (not HTTP, not the JSON of the route: another program serves the
        socket). A typed error the host answered (`HostError`) passes through."""
        try:
            yield
        except (httpx.ConnectError, FileNotFoundError) as exc:
            raise self._unreachable(exc) from exc
        except httpx.TimeoutException:
            raise HostError(504, "timeout", f"the host did not answer {url} in time") from None
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            if self._remote is not None:
                raise self._remote.lost(exc) from exc  # the ssh bridge broke
            if isinstance(exc, httpx.ReadError):
                raise bad_response(self.paths, url, f"a broken answer ({exc})") from None
            if "without sending a response" in str(exc):
                raise not_running(self.paths) from None  # it stopped mid-request
            raise bad_response(self.paths, url, f"something that is not HTTP ({exc})") from None
        except httpx.HTTPError as exc:
            raise bad_response(self.paths, url, f"a broken answer ({exc})") from None
        except ValueError as exc:  # JSON, or a pydantic ValidationError of the answer
            raise bad_response(
                self.paths, url, f"JSON that is not this route's answer ({str(exc)[:300]})"
            ) from None

    def _request(self, method: str, url: str, model: type[BaseModel] | None, **kw: Any) -> Any:
        self._check()
        with self._reaching(url):
            response = self._http.request(method, url, **kw)
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

    def db_stats(self) -> DbStats:
        result: DbStats = self._request("GET", "/v1/db/stats", DbStats, timeout=300)
        return result

    def db_prune(self, dry_run: bool = False) -> PruneResult:
        result: PruneResult = self._request(
            "POST", "/v1/db/prune", PruneResult, json={"dry_run": dry_run}, timeout=3600
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
        with (
            self._reaching(url),
            self._http.stream(
                "GET", url, params=params, timeout=httpx.Timeout(30.0, read=None)
            ) as response,
        ):
            if response.status_code >= 400:
                response.read()
                raise _api_error(response)
            for raw in response.iter_lines():
                if not raw:
                    continue
                record = json.loads(raw)
                if record == {}:
                    continue  # a keep-alive
                if not isinstance(record, dict) or not isinstance(record.get("line"), str):
                    raise ValueError(f"not a log line: {raw[:100]!r}")
                yield record["line"]

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

    def webhook_add(self, spec: dict[str, Any]) -> WebhookSecret:
        result: WebhookSecret = self._request("POST", "/v1/webhooks", WebhookSecret, json=spec)
        return result

    def webhook_remove(self, name: str) -> WebhookRemoved:
        result: WebhookRemoved = self._request(
            "DELETE", f"/v1/webhooks/{quote(name, safe='')}", WebhookRemoved
        )
        return result

    def webhook_rotate(self, name: str, stripe_secret: str | None = None) -> WebhookSecret:
        """A new secret: generated (in the answer, once), or Stripe's for a stripe hook."""
        result: WebhookSecret = self._request(
            "POST",
            f"/v1/webhooks/{quote(name, safe='')}/rotate",
            WebhookSecret,
            json={"secret": stripe_secret} if stripe_secret is not None else {},
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
        with (
            self._reaching("/v1/events"),
            self._http.stream("GET", "/v1/events", timeout=None) as response,
        ):
            if response.status_code >= 400:
                response.read()
                raise _api_error(response)
            if on_open is not None:
                on_open()
            for line in response.iter_lines():
                if line:
                    yield parse_event(line)


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
