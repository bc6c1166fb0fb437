"""Routes of the operator's control socket (`run/control.sock`, mode 0600).

The principal here is `operator`. Operator actions pass through the same
policies as agent actions, so they are audited the same way.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from legion import __version__
from legion.api_agent import build_blackboard_routes
from legion.http import Call, Policy, Response, Router, StreamResponse
from legion.permissions import Perm
from legion.wire.api import (
    AgentStatus,
    HostStatus,
    MessageQueued,
    OperatorMessage,
    StopResponse,
)

if TYPE_CHECKING:
    from legion.host import Host


def build_control_router(host: Host) -> Router:
    router = Router("legion control socket")
    build_blackboard_routes(router, host)

    @router.route("GET", "/v1/openapi.json")
    async def openapi(call: Call) -> Response:
        """This socket's OpenAPI document."""
        return Response(200, json.dumps(router.openapi()).encode())

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

    @router.route(
        "POST",
        "/v1/messages",
        body=OperatorMessage,
        response=MessageQueued,
        policy=Policy(Perm.MESSAGE.value, "to", "message"),
    )
    async def send_message(call: Call) -> MessageQueued:
        """Put a message from the operator in an agent's inbox."""
        body: OperatorMessage = call.body
        return MessageQueued(to=body.to, item_id=host.send(call.principal, body.to, body.payload))

    @router.route("GET", "/v1/events")
    async def events(call: Call) -> StreamResponse:
        """A stream of typed host events, one JSON object per line (NDJSON)."""

        async def lines() -> AsyncIterator[bytes]:
            async with host.bus.subscribe() as sub:
                yield b""  # headers go out before the first event
                while True:
                    event = await sub.get()
                    yield host.redactor.redact_bytes(event.model_dump_json().encode()) + b"\n"

        return StreamResponse(lines())

    return router


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
