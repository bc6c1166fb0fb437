"""The built-in tools of an agent, assembled into one registry.

Workspace files and shell commands run inside the container
(`agent_container.tools_workspace`); everything else goes through the host socket
(`agent_container.tools_mesh`). The registry itself is `agent_container.registry`.
"""

from __future__ import annotations

from agent_container.client import MeshClient
from agent_container.registry import Hooks, Registry, Tool
from agent_container.tools_browser import browser_tools
from agent_container.tools_cron import cron_tools
from agent_container.tools_mesh import mesh_tools
from agent_container.tools_workspace import (
    COMMAND_TIMEOUT_MAX_S,
    COMMAND_TIMEOUT_S,
    OUTPUT_CAP,
    run_command,
    workspace_tools,
)
from agent_container.workspace import Workspace

__all__ = [
    "COMMAND_TIMEOUT_MAX_S",
    "COMMAND_TIMEOUT_S",
    "OUTPUT_CAP",
    "Hooks",
    "Registry",
    "Tool",
    "builtin_tools",
    "run_command",
]


def builtin_tools(mesh: MeshClient, workspace: Workspace, hooks: Hooks | None = None) -> Registry:
    """Every built-in tool, bound to this agent's socket and workspace."""
    registry = Registry()
    for tool in [
        *workspace_tools(workspace),
        *mesh_tools(mesh, hooks or Hooks()),
        *cron_tools(mesh),
        *browser_tools(mesh, workspace),
    ]:
        registry.add(tool)
    return registry
