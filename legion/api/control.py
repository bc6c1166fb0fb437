"""Routes of the operator's control socket (`run/control.sock`, mode 0600).

The principal here is `operator`. Operator actions pass through the same
policies as agent actions, so they are audited the same way.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
import weakref
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, NoReturn

from legion import __version__
from legion.api.agent import build_shared_routes, unknown_agent
from legion.api.http import Call, Router, StreamResponse
from legion.api.operator import build_operator_routes
from legion.automation.routes import add_control_routes as add_automation_routes
from legion.browser.routes import add_control_routes as add_browser_routes
from legion.errors import BadRequest, ConfigError, LegionError, NotFound
from legion.fleet import volume
from legion.fsutil import UnsafeEntry
from legion.paths import MAX_SOCKET_PATH
from legion.wire.api import (
    AgentInfo,
    AgentList,
    AgentStatus,
    HostStatus,
    PurgeResult,
    ReloadResult,
    StopResponse,
)
from legion.wire.db import DbStats, PruneRequest, PruneResult
from legion.wire.fields import AgentAction, AgentName
from legion.wire.rules import name_problem

if TYPE_CHECKING:
    from pathlib import Path

    from legion.config import Config
    from legion.fleet.backend import LogStream
    from legion.host import Host

# The most log lines one request may ask for by `tail` (use `since` to go further back).
MAX_LOG_TAIL = 1_000_000
# A quiet log stream sends `{}` this often, so a reader that left is noticed (the write
# fails) and the stream's thread and Docker connection are freed.
LOG_IDLE_PROBE_S = 5.0
# A line longer than this is sent in pieces.
MAX_LOG_LINE_BYTES = 64 * 1024


def build_control_router(host: Host) -> Router:
    router = Router("legion control socket")
    build_shared_routes(router, host)
    build_operator_routes(router, host)

    @router.route("GET", "/v1/status", response=HostStatus)
    async def status(call: Call) -> HostStatus:
        """Host pid, uptime, home and the configured agents."""
        return host.status()

    @router.route("POST", "/v1/stop", response=StopResponse)
    async def stop(call: Call) -> StopResponse:
        """Stop the host cleanly (the daemon exits 0)."""
        host.audit.append(call.principal, "host.stop", "host", "allow")
        # On disk before the host starts stopping: the reply then needs no further wait,
        # and goes out before the shutdown closes this connection.
        await host.store.flush()
        host.request_stop("stop requested over the control socket")
        return StopResponse(stopping=True)

    @router.route(
        "GET",
        "/v1/agents",
        response=AgentList,
        links={
            "ActOnAgent": {
                "operationId": "agent_action",
                "parameters": {"name": "$response.body#/agents/0/name"},
            }
        },
    )
    async def agents(call: Call) -> AgentList:
        """Every configured agent with its container state."""
        return host_agents(host)

    @router.route(
        "POST",
        "/v1/agents/{name}/{action}",
        response=AgentInfo,
        params={"name": AgentName, "action": AgentAction},
    )
    async def agent_action(call: Call) -> AgentInfo:
        """Start, stop or restart an agent's container (`action`: start|stop|restart)."""
        name, action = call.params["name"], call.params["action"]
        operations = {
            "start": host.fleet.start,
            "stop": host.fleet.stop,
            "restart": host.fleet.restart,
        }
        if action not in operations:
            raise LegionError(
                f"unknown action {action!r}; use start, stop or restart",
                code="unknown_action",
                status=404,
            )
        if name not in host.config.agents:
            host.audit.append(
                call.principal, f"agent.{action}", name, "deny", reason="unknown_agent"
            )
            raise unknown_agent(host, name)
        host.audit.append(call.principal, f"agent.{action}", name, "allow")
        await operations[action](name)
        return next(a for a in host_agents(host).agents if a.name == name)

    @router.route(
        "DELETE", "/v1/agents/{name}/state", response=PurgeResult, params={"name": AgentName}
    )
    async def purge(call: Call) -> PurgeResult:
        """Delete a removed agent's state: its volume, socket folder, bootstrap files and
        their versions, browser profile, the skills installed for it, inbox and
        subscriptions (`legion agents purge`). A path that is not a real directory is
        refused (409 `unsafe_path`, audited). A name with no state at all is 404
        `nothing_to_purge` (nothing changed, nothing audited)."""
        name = call.params["name"]
        problem = name_problem(name)
        if problem is not None:
            raise BadRequest(problem, code="invalid_name")
        if name in host.config.agents:
            raise LegionError(
                f"{name} is still configured; remove it from legion.toml first",
                code="agent_configured",
                status=409,
            )
        try:
            removed = await asyncio.to_thread(volume.remove_state, host.paths, name)
        except UnsafeEntry as exc:
            host.audit.append(
                "host", "agent.volume_refused", name, "deny", reason=str(exc), path=exc.path
            )
            raise
        volume_removed = str(host.paths.agent_data(name)) in removed
        inbox_deleted = host.inboxes.purge(name)
        if not removed and not inbox_deleted:
            raise NotFound(
                f"{name} has no state to delete (no volume, socket folder, bootstrap files or "
                "inbox items)",
                code="nothing_to_purge",
                agent=name,
            )
        host.audit.append(
            call.principal,
            "agent.purge",
            name,
            "allow",
            volume_removed=volume_removed,
            removed=removed,
        )
        return PurgeResult(
            agent=name,
            inbox_items_deleted=inbox_deleted,
            volume_removed=volume_removed,
            removed=removed,
        )

    @router.route("POST", "/v1/config/reload", response=ReloadResult)
    async def reload(call: Call) -> ReloadResult:
        """Re-read legion.toml and apply it; a file that fails validation changes nothing."""
        return await reload_config(host, call.principal)

    @router.route("GET", "/v1/db/stats", response=DbStats)
    async def db_stats(call: Call) -> DbStats:
        """host.db: sizes per table, the audit log and the ledger, and what the next
        retention pass will do (`legion db stats`)."""
        return await host.retention.stats()

    @router.route("POST", "/v1/db/prune", body=PruneRequest, response=PruneResult)
    async def db_prune(call: Call) -> PruneResult:
        """Run a retention pass now: roll up old ledger rows, archive and prune old audit
        records, give free pages back (`legion db prune`; `dry_run`: only the plan)."""
        body: PruneRequest = call.body
        result = await host.retention.prune(dry_run=body.dry_run)
        if not body.dry_run:
            host.audit.append(
                call.principal,
                "db.prune",
                "host.db",
                "allow",
                archived=[a.file for a in result.archived],
                audit_records_deleted=result.audit_records_deleted,
                ledger_rows_rolled_up=result.ledger_rows_rolled_up,
                pages_vacuumed=result.pages_vacuumed,
            )
        return result

    @router.route("GET", "/v1/agents/{name}/logs")
    async def agent_logs(call: Call) -> StreamResponse:
        """An agent's container output, NDJSON `{"line": ...}` (`tail`, `since`, `follow`)."""
        return await open_agent_logs(host, call)

    @router.route("GET", "/v1/events")
    async def events(call: Call) -> StreamResponse:
        """A stream of typed host events, one JSON object per line (NDJSON)."""

        # Subscribed before the headers go out: a client that has the headers misses nothing.
        sub = host.bus.open()

        async def lines() -> AsyncIterator[bytes]:
            try:
                while True:
                    event = await sub.get()
                    # Masked by the control router's wrapper (legion.api.masking).
                    yield event.model_dump_json().encode() + b"\n"
            finally:
                host.bus.close(sub)

        async def abandon() -> None:
            host.bus.close(sub)

        return StreamResponse(lines(), on_abandon=abandon)

    add_automation_routes(router, host)  # cron, webhooks, steer (legion/automation/routes.py)
    add_browser_routes(router, host)  # /v1/browsers/... (legion/browser/routes.py)
    from legion.api.control_extend import build_extend_routes

    build_extend_routes(router, host)  # MCP, skills (issue 14)
    return router


def host_agents(host: Host) -> AgentList:
    import time as _time

    now = _time.monotonic()
    out = []
    for name, cfg in sorted(host.config.agents.items()):
        run = host.fleet.runs.get(name)
        out.append(
            AgentInfo(
                name=name,
                state=run.state if run else "stopped",
                reason=run.reason if run else "",
                role=cfg.role,
                team=cfg.team,
                model=cfg.model or host.config.llm.default_model,
                mode=cfg.mode,
                container_id=run.container_id if run else None,
                restarts_last_hour=sum(1 for t in run.restarts if now - t < 3600) if run else 0,
                last_seen=host.seen_at(name),
                inbox_depth=host.inboxes.depth(name),
                paused=host.gateway.inflight.paused(name) is not None,
                parent=host.spawner.parent_of(name),
            )
        )
    backend = host.fleet.backend
    return AgentList(runtime=backend.name if backend is not None else None, agents=out)


def host_status(host: Host) -> HostStatus:
    now = time.time()
    counts = host.automation.cron.counts()
    agents = [
        AgentStatus(
            name=name,
            role=cfg.role,
            team=cfg.team,
            model=cfg.model,
            socket=str(host.paths.agent_socket(name)),
            inbox_depth=host.inboxes.depth(name),
            last_heartbeat=host.seen_at(name),
            **host.automation.status_fields(name, counts),
            paused=host.gateway.inflight.paused(name) is not None,
        )
        for name, cfg in sorted(host.config.agents.items())
    ]
    return HostStatus(
        pid=os.getpid(),
        version=__version__,
        home=str(host.paths.home),
        started_at=host.started_at,
        uptime_s=now - host.started_at,
        agents=agents,
    )


# --- config reload --------------------------------------------------------------------

# Reloads of one host run one at a time (the control route and SIGHUP may race).
_reload_locks: weakref.WeakKeyDictionary[Host, asyncio.Lock] = weakref.WeakKeyDictionary()

# Keys the running host cannot apply: they take effect when it restarts.
_HOST_RESTART = ("host", "runtime.backend", "runtime.agent_uid", "automation")
# Keys that shape every agent's container: running agents get them at their next start.
_CONTAINER_KEYS = (
    "runtime.image",
    "runtime.container_runtime",
    "runtime.memory_mb",
    "runtime.cpus",
    "runtime.pids",
)


class ConfigInvalid(LegionError):
    status = 422
    code = "config_invalid"


def _under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def config_changes(old: Config, new: Config) -> list[str]:
    """The dotted keys whose value differs between two configs (leaves; lists whole)."""
    out: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b), key=str):
                path = f"{prefix}.{key}" if prefix else str(key)
                if key not in a or key not in b:
                    out.append(path)
                else:
                    walk(a[key], b[key], path)
        elif a != b:
            out.append(prefix)

    walk(old.model_dump(), new.model_dump(), "")
    return out


async def reload_config(host: Host, actor: str = "operator") -> ReloadResult:
    """Re-read legion.toml and apply it, all or nothing: a file that is missing, unreadable
    or invalid changes nothing and raises ConfigInvalid (with every problem)."""
    path = host.paths.config
    lock = _reload_locks.setdefault(host, asyncio.Lock())
    async with lock:
        try:
            # Read and validated off the loop: a large file must not stall the host.
            new = await asyncio.to_thread(_read_config, path)
        except FileNotFoundError:
            problems = [
                f"{path}: no such file; restore it (an empty file is a config with no "
                "agents), or create one with `legion config init`"
            ]
            _refused(host, actor, path, problems)
        except (OSError, UnicodeDecodeError) as exc:
            _refused(host, actor, path, [f"{path}: cannot read: {exc}"])
        except ConfigError as exc:
            _refused(host, actor, path, exc.problems)
        too_long = [
            f"{path}: agents.{name}: its socket {host.paths.agent_socket(name)} would be "
            f"{size} bytes, over the {MAX_SOCKET_PATH} a Unix socket allows; use a shorter "
            "name (or a shorter LEGION_HOME)"
            for name in sorted(set(new.agents) - set(host.config.agents))
            if (size := len(os.fsencode(host.paths.agent_socket(name)))) > MAX_SOCKET_PATH
        ]
        if too_long:
            _refused(host, actor, path, too_long)
        children = set(host.spawner.children)  # sub-agents are not in legion.toml
        changed = [
            key
            for key in config_changes(host.config, new)
            if not any(_under(key, f"agents.{name}") for name in children)
        ]
        running = {
            name
            for name, run in host.fleet.runs.items()
            if run.state in ("running", "starting") and name in new.agents
        }
        agents_to_restart: set[str] = set()
        for key in changed:
            if any(_under(key, k) for k in _CONTAINER_KEYS):
                agents_to_restart |= running
            for name in running:
                if _under(key, f"agents.{name}.resources"):
                    agents_to_restart.add(name)
        applied = await host.apply_config(new)
        gone = {f"agents.{a}" for a in applied["added"] + applied["removed"]}
        return ReloadResult(
            file=str(path),
            added=applied["added"],
            removed=applied["removed"],
            changed=[k for k in changed if k not in gone],
            restart_needed=[k for k in changed if any(_under(k, p) for p in _HOST_RESTART)],
            agents_to_restart=sorted(agents_to_restart),
        )


def _read_config(path: Path) -> Config:
    from legion.config import parse_config

    return parse_config(path.read_text(encoding="utf-8"), str(path))


def _refused(host: Host, actor: str, path: Any, problems: list[str]) -> NoReturn:
    host.audit.append(
        actor, "config.reload", "legion.toml", "deny", reason="config_invalid", problems=problems
    )
    raise ConfigInvalid(
        f"{path} was not applied ({len(problems)} problem(s); the host keeps its current "
        "config): " + " | ".join(problems),
        file=str(path),
        problems=problems,
    )


# --- agent logs ------------------------------------------------------------------------


def _query_number(call: Call, name: str) -> float | None:
    raw = call.request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise LegionError(
            f"{name}={raw!r} is not a non-negative number", code="invalid_query", status=422
        )
    return value


async def open_agent_logs(host: Host, call: Call) -> StreamResponse:
    from legion.fleet.backend import BackendUnavailable, NoContainer, TooManyLogStreams

    name = call.params["name"]
    if name not in host.config.agents:
        raise unknown_agent(host, name)
    backend = host.fleet.backend
    if backend is None:
        raise LegionError(
            "this host runs no agent containers ([runtime] backend = none), so there are no "
            "container logs; the agent runtime's own output is wherever you started it",
            code="no_runtime",
            status=409,
        )
    raw_tail = call.request.query.get("tail", "all")
    tail = None if raw_tail == "all" else _query_number(call, "tail")
    if tail is not None and (tail != int(tail) or tail > MAX_LOG_TAIL):
        raise LegionError(
            f"tail={raw_tail!r}: use a whole number of lines up to {MAX_LOG_TAIL}, or all",
            code="invalid_query",
            status=422,
        )
    since = _query_number(call, "since")
    follow = call.request.query.get("follow", "false").lower()
    if follow not in ("true", "false", "1", "0"):
        raise LegionError(f"follow={follow!r}: use true or false", code="invalid_query", status=422)
    try:
        stream = await backend.open_logs(
            name,
            tail=None if tail is None else int(tail),
            since=since,
            follow=follow in ("true", "1"),
        )
    except NoContainer:
        run = host.fleet.runs.get(name)
        state = run.state if run else "stopped"
        raise NotFound(
            f"{name} has no container ({state}); start it with `legion agents start {name}`",
            code="no_container",
            agent=name,
        ) from None
    except TooManyLogStreams as exc:
        raise LegionError(str(exc), code="too_many_log_streams", status=429) from None
    except BackendUnavailable as exc:
        raise LegionError(str(exc), code="runtime_unavailable", status=503) from None
    host.audit.append(call.principal, "agent.logs", name, "allow", follow=follow in ("true", "1"))
    return StreamResponse(log_lines(stream), on_abandon=stream.aclose)


def _line(data: bytes) -> bytes:
    return json.dumps({"line": data.decode(errors="replace")}, ensure_ascii=False).encode() + b"\n"


async def log_lines(stream: LogStream, idle_s: float = LOG_IDLE_PROBE_S) -> AsyncIterator[bytes]:
    """A container's output as NDJSON: `{"line": "..."}` per line it wrote (without the
    newline), and `{}` after `idle_s` of quiet (readers skip it)."""
    pending = b""
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(anext(stream), idle_s)
            except TimeoutError:
                yield b"{}\n"
                continue
            except StopAsyncIteration:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            while len(pending) > MAX_LOG_LINE_BYTES:
                lines.append(pending[:MAX_LOG_LINE_BYTES])
                pending = pending[MAX_LOG_LINE_BYTES:]
            if lines:
                yield b"".join(_line(line) for line in lines)
        if pending:
            yield _line(pending)
    finally:
        await stream.aclose()
