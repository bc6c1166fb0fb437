"""The egress proxy of agents' local MCP servers: one socket of its own per agent.

A stdio MCP server with `egress = true` ([agents.NAME.mcp.SERVER]) gets `HTTP_PROXY` and
`HTTPS_PROXY` pointing at a forwarder inside the agent's container
(`agent_container.mcp_proxy`), which relays bytes to this socket. Here, on the host, a
`ConnectProxy` (the one the browser uses) serves it for that agent alone: the same
address policy as `/egress/http` (the agent's `egress_hosts`, the address checks,
`[egress] allow`), every destination audited (`mcp.egress`). No credential is ever added
to this traffic (HTTPS tunnels are opaque to the host): a server that needs one is a
remote server, connected by the host.

The socket lives in `run/egress/NAME/proxy.sock`, a folder of the host's (0755, outside
the agent's socket folder), mounted read-only into the container at
`/run/legion-egress`: the agent can connect to the socket (the host hands it to the
agent's uid) but can neither replace nor remove it. It is open while the agent is
configured with such a server (sub-agents inherit their parent's servers).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from legion.errors import LegionError
from legion.gateway.connect_proxy import ConnectProxy

if TYPE_CHECKING:
    from legion.host import Host

log = logging.getLogger("legion.gateway.mcp_proxy")

FOLDER = "egress"
SOCKET = "proxy.sock"
MOUNT = "/run/legion-egress"


def wants_proxy(host: Host, agent: str) -> bool:
    cfg = host.config.agents.get(agent)
    return cfg is not None and any(server.egress for server in cfg.mcp.values())


class McpProxies:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.proxies: dict[str, ConnectProxy] = {}

    def folder(self, agent: str) -> Path:
        return self.host.paths.run / FOLDER / agent

    def dir_of(self, agent: str) -> Path | None:
        """The folder to mount for `agent`, when its proxy is open."""
        return self.folder(agent) if agent in self.proxies else None

    def _prepare(self, agent: str) -> Path:
        """`run/egress/NAME/`, the host's own: created 0755; anything else there (it is never
        the agent's, but be strict) is refused."""
        folder = self.folder(agent)
        for part in (folder.parent, folder):
            with contextlib.suppress(FileExistsError):
                part.mkdir(mode=0o755)
            info = part.lstat()
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
                raise LegionError(
                    f"{part} is not a folder of the host's; move it aside", code="bad_path"
                )
            os.chmod(part, 0o755)
        return folder

    async def open(self, agent: str) -> None:
        """Serve `agent`'s proxy socket if it runs a local MCP server with egress."""
        if agent in self.proxies or not wants_proxy(self.host, agent):
            return
        host = self.host
        proxy = ConnectProxy(
            principal=agent,
            config=lambda: host.config.egress,
            permissions=host.permissions,
            audit=host.audit,
            action="mcp.egress",
            resolver=lambda name: host.egress.resolver(name),  # follows config reloads
        )
        try:
            folder = self._prepare(agent)
            await proxy.listen(folder / SOCKET, host.fleet.owner())
        except (LegionError, OSError) as exc:
            log.error("cannot serve the MCP egress proxy of %s: %s", agent, exc)
            host.audit.append(
                "host", "socket.unavailable", f"{agent}/mcp-egress", "deny", error=str(exc)
            )
            return
        self.proxies[agent] = proxy

    async def close(self, agent: str) -> None:
        proxy = self.proxies.pop(agent, None)
        if proxy is not None:
            await proxy.close()

    async def sync(self) -> None:
        """Open the proxies the config wants, close the others (after a reload)."""
        for agent in list(self.proxies):
            if not wants_proxy(self.host, agent):
                await self.close(agent)
        for agent in list(self.host.config.agents):
            await self.open(agent)

    async def close_all(self) -> None:
        for agent in list(self.proxies):
            await self.close(agent)
