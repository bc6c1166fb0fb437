"""Routes of the operator's control socket (`run/control.sock`, mode 0600).

The principal here is `operator`. Operator actions pass through the same
policies as agent actions, so they are audited the same way.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from legion import __version__
from legion.api.agent import build_shared_routes
from legion.api.http import Call, Router, StreamResponse
from legion.api.operator import build_operator_routes
from legion.errors import LegionError
from legion.wire.api import (
    AgentInfo,
    AgentList,
    AgentStatus,
    HostStatus,
    PurgeResult,
    ReloadResult,
    StopResponse,
)

if TYPE_CHECKING:
    from legion.host import Host


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
        host.request_stop("stop requested over the control socket")
        return StopResponse(stopping=True)

    @router.route("GET", "/v1/agents", response=AgentList)
    async def agents(call: Call) -> AgentList:
        """Every configured agent with its container state."""
        return host_agents(host)

    @router.route("POST", "/v1/agents/{name}/{action}", response=AgentInfo)
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
        host.audit.append(call.principal, f"agent.{action}", name, "allow")
        await operations[action](name)
        return next(a for a in host_agents(host).agents if a.name == name)

    @router.route("DELETE", "/v1/agents/{name}/state", response=PurgeResult)
    async def purge(call: Call) -> PurgeResult:
        """Delete a removed agent's inbox and subscriptions (`legion agents rm --purge`)."""
        name = call.params["name"]
        if name in host.config.agents:
            raise LegionError(
                f"{name} is still configured; remove it from legion.toml first",
                code="agent_configured",
                status=409,
            )
        host.audit.append(call.principal, "agent.purge", name, "allow")
        return PurgeResult(agent=name, inbox_items_deleted=host.inboxes.purge(name))

    @router.route("POST", "/v1/config/reload", response=ReloadResult)
    async def reload(call: Call) -> ReloadResult:
        """Re-read legion.toml and apply it (agents, teams, models, egress, runtime)."""
        from legion.config import load_config

        result = await host.apply_config(load_config(host.paths.config))
        return ReloadResult(**result)

    @router.route("GET", "/v1/events")
    async def events(call: Call) -> StreamResponse:
        """A stream of typed host events, one JSON object per line (NDJSON)."""

        # Subscribed before the headers go out: a client that has the headers misses nothing.
        sub = host.bus.open()

        async def lines() -> AsyncIterator[bytes]:
            try:
                while True:
                    event = await sub.get()
                    yield host.redactor.redact_bytes(event.model_dump_json().encode()) + b"\n"
            finally:
                host.bus.close(sub)

        async def abandon() -> None:
            host.bus.close(sub)

        return StreamResponse(lines(), on_abandon=abandon)

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
                last_seen=host.last_seen.get(name),
                inbox_depth=host.inboxes.depth(name),
            )
        )
    backend = host.fleet.backend
    return AgentList(runtime=backend.name if backend is not None else None, agents=out)


def host_status(host: Host) -> HostStatus:
    now = time.time()
    agents = [
        AgentStatus(
            name=name,
            role=cfg.role,
            team=cfg.team,
            model=cfg.model,
            socket=str(host.paths.agent_socket(name)),
            inbox_depth=host.inboxes.depth(name),
            last_heartbeat=host.last_seen.get(name),
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
