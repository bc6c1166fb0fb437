"""Control-socket routes of the extension features: MCP servers, skills, sub-agents.

Registered by `legion.api.control.build_control_router`; the principal is `operator`,
every action audited like the operator's others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from legion.api.http import Call, Router
from legion.errors import NotFound
from legion.mesh.permissions import Perm
from legion.wire.fields import AgentName
from legion.wire.mcp import McpList, McpServerInfo

if TYPE_CHECKING:
    from legion.host import Host


def build_extend_routes(router: Router, host: Host) -> None:
    @router.route("GET", "/v1/mcp", response=McpList, query={"agent": AgentName})
    async def mcp_list(call: Call) -> McpList:
        """Every MCP server: remote ones (connected by the host) with the agents allowed to
        use them, and each agent's local ones as its runtime last reported them."""
        return mcp_overview(host, call.request.query.get("agent") or None)

    from legion.api.skills_routes import build_skill_routes

    build_skill_routes(router, host)


def mcp_overview(host: Host, agent: str | None) -> McpList:
    if agent is not None and agent not in host.config.agents:
        raise NotFound(
            f"no agent named {agent!r}; `legion agents ls` lists them",
            code="unknown_agent",
            agent=agent,
        )
    agents = [agent] if agent else sorted(host.config.agents)
    servers: list[McpServerInfo] = []
    for info in host.mcp.info():
        info.agents = [
            a for a in sorted(host.config.agents) if host.permissions.allows(a, Perm.MCP, info.name)
        ]
        if agent is None or agent in info.agents:
            servers.append(info)
    for name in agents:
        report = host.mcp_reports.get(name)
        reported = {s.name: s for s in report.servers} if report else {}
        run = host.fleet.runs.get(name)
        running = run is not None and run.state in ("running", "starting")
        for server in host.config.agents[name].mcp:
            if server in reported and running:
                servers.append(reported[server])
                continue
            servers.append(
                McpServerInfo(
                    name=server,
                    kind="stdio",
                    agent=name,
                    state="starting" if running else "stopped",
                    reason="not reported by the agent's runtime yet"
                    if running
                    else f"{name} is not running",
                )
            )
    return McpList(servers=servers)
