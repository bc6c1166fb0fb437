"""The fleet supervisor: keeps each configured agent's container running.

The host watches every container (exit, heartbeat silence). A dead or silent agent is
restarted with exponential backoff (1 s, 2 s, 4 s ... at most 60 s), at most
`[runtime] restart_max_per_hour` times in any hour; after that it is `failed`, with the
reason, until the operator starts it again. Every state change is evented and audited.
When an agent restarts, the items it had taken from its inbox but not acked are made
visible again at once, so the new container handles them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from legion.errors import LegionError, NotFound
from legion.fleet import skills, volume
from legion.fleet.backend import AgentSpec, BackendUnavailable, RuntimeBackend
from legion.fleet.identity import AgentFiles
from legion.fsutil import UnsafeEntry
from legion.wire.events import AgentStateChanged

if TYPE_CHECKING:
    from legion.host import Host

log = logging.getLogger("legion.fleet")

BACKOFF_MAX_S = 60.0
HOUR_S = 3600.0


@dataclass
class AgentRun:
    """What the supervisor knows about one agent."""

    state: str = "stopped"
    reason: str = ""
    desired: bool = False
    failures: int = 0
    next_attempt: float = 0.0
    started_at: float | None = None
    container_id: str | None = None
    restarts: deque[float] = field(default_factory=deque)


class Fleet:
    def __init__(
        self,
        host: Host,
        backend: RuntimeBackend | None,
        *,
        interval_s: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.backend = backend
        self.interval_s = interval_s
        self.monotonic = monotonic
        self.runs: dict[str, AgentRun] = {}
        self._lock = asyncio.Lock()

    def run_of(self, agent: str) -> AgentRun:
        return self.runs.setdefault(agent, AgentRun())

    # --- the container's world -------------------------------------------------------

    def owner(self) -> tuple[int, int] | None:
        """The uid:gid agents run as, when the host can hand files to it (running as root)."""
        if os.geteuid() != 0:
            return None
        uid = self.host.config.runtime.agent_uid
        return uid, uid

    def spec(self, agent: str) -> AgentSpec:
        cfg = self.host.config.agents[agent]
        runtime = self.host.config.runtime
        paths = self.host.paths
        owner = self.owner() or (os.getuid(), os.getgid())
        return AgentSpec(
            name=agent,
            image=runtime.image,
            data_dir=paths.agent_data(agent),
            socket_dir=paths.agent_socket_dir(agent),
            uid=owner[0],
            gid=owner[1],
            memory_mb=cfg.resources.memory_mb or runtime.memory_mb,
            cpus=cfg.resources.cpus or runtime.cpus,
            pids=cfg.resources.pids or runtime.pids,
            runtime=runtime.container_runtime or None,
            identity_dir=AgentFiles.of(paths, agent).ensure(),
            env={"LEGION_AGENT": agent},
            fleet_skills_dir=skills.ensure_store(paths),
            skills_dir=skills.ensure_store(paths, agent),
            egress_dir=self.host.mcp_proxies.dir_of(agent),
        )

    async def prepare_volume(self, agent: str) -> bool:
        """Make the agent's volume ready (see `legion.fleet.volume.prepare`); True if it is.

        A planted entry (a link, FIFO, file or foreign folder where the host expects its
        own directory) is refused and audited, and the agent is `failed` with the reason
        until the operator starts it again; an I/O error leaves it `unavailable`, retried
        with backoff. Either way only this agent stays down (invariant 9), and a container
        it still has (a silent one being restarted) is stopped.
        """
        assert self.backend is not None
        try:
            volume.prepare(self.host.paths, agent, self.owner())
        except UnsafeEntry as exc:
            self.host.audit.append(
                "host", "agent.volume_refused", agent, "deny", reason=str(exc), path=exc.path
            )
            log.error(
                "agent volume refused",
                extra={"fields": {"agent": agent, "path": exc.path, "found": exc.found}},
            )
            await self.backend.stop(agent)
            self._set(agent, "failed", str(exc))
            return False
        except OSError as exc:
            run = self.run_of(agent)
            run.failures += 1
            run.next_attempt = self.monotonic() + min(BACKOFF_MAX_S, 2 ** (run.failures - 1))
            where = self.host.paths.agent_data(agent)
            await self.backend.stop(agent)
            self._set(agent, "unavailable", f"cannot prepare the volume {where}: {exc.strerror}")
            return False
        return True

    # --- state --------------------------------------------------------------------

    def _set(self, agent: str, state: str, reason: str = "") -> None:
        run = self.run_of(agent)
        if run.state == state and run.reason == reason:
            return
        run.state, run.reason = state, reason
        now = self.monotonic()
        recent = sum(1 for t in run.restarts if now - t < HOUR_S)
        self.host.audit.append("host", f"agent.{state}", agent, "allow", reason=reason)
        self.host.bus.publish(
            AgentStateChanged(
                at=self.host.clock(),
                agent=agent,
                state=state,
                reason=reason,
                restarts_last_hour=recent,
            )
        )
        log.info(
            "agent state", extra={"fields": {"agent": agent, "state": state, "reason": reason}}
        )

    def _require(self, agent: str) -> None:
        if agent not in self.host.config.agents:
            raise NotFound(f"no agent named {agent!r}", code="unknown_agent", agent=agent)
        if self.backend is None:
            raise LegionError(
                "this host runs no agent containers ([runtime] backend = none, or no backend "
                "was given); start agent runtimes yourself",
                code="no_runtime",
                status=409,
            )

    async def _launch(self, agent: str, reason: str) -> None:
        assert self.backend is not None
        run = self.run_of(agent)
        self._set(agent, "starting", reason)
        if not await self.prepare_volume(agent):
            return
        await self.host.ensure_agent_socket(agent)
        # Polls parked by the container being replaced get nothing more; what it had
        # taken is visible to the new one at once.
        self.host.inboxes.drop_parked(agent)
        self.host.inboxes.release(agent)
        self.host.last_seen.pop(agent, None)
        try:
            status = await self.backend.start(self.spec(agent))
        except BackendUnavailable as exc:
            run.failures += 1
            run.next_attempt = self.monotonic() + min(BACKOFF_MAX_S, 2 ** (run.failures - 1))
            self._set(agent, "unavailable", str(exc))
            return
        run.started_at = self.monotonic()
        run.container_id = status.container_id
        self._set(agent, "running", reason)

    async def start(self, agent: str) -> AgentRun:
        """Start (or, from `failed`, start afresh) an agent's container."""
        self._require(agent)
        async with self._lock:
            run = self.run_of(agent)
            run.desired = True
            run.failures = 0
            run.restarts.clear()
            await self._launch(agent, "started by the operator")
            return run

    async def start_ephemeral(self, agent: str, reason: str) -> AgentRun:
        """Start a sub-agent's container (legion.fleet.spawn): like `start`, with its reason;
        supervised like any agent until the spawner ends it with `forget`."""
        self._require(agent)
        async with self._lock:
            run = self.run_of(agent)
            run.desired = True
            await self._launch(agent, reason)
            return run

    async def stop(self, agent: str) -> AgentRun:
        self._require(agent)
        assert self.backend is not None
        async with self._lock:
            run = self.run_of(agent)
            run.desired = False
            await self.backend.stop(agent)
            self.host.inboxes.drop_parked(agent)  # no item for a poll of a stopped container
            self._set(agent, "stopped", "stopped by the operator")
            return run

    async def restart(self, agent: str) -> AgentRun:
        await self.stop(agent)
        return await self.start(agent)

    async def start_all(self) -> None:
        if self.backend is None:
            return
        # A host that died (kill -9, power loss) left its containers: the ones of agents
        # still configured are replaced as they start; the others go now.
        for agent in await self.backend.remove_others(set(self.host.config.agents)):
            self.host.audit.append("host", "agent.orphan_removed", agent, "allow")
            log.info(
                "removed a container left by an earlier host", extra={"fields": {"agent": agent}}
            )
        for agent, cfg in sorted(self.host.config.agents.items()):
            if cfg.autostart:
                run = self.run_of(agent)
                run.desired = True
                async with self._lock:
                    await self._launch(agent, "host start")

    async def forget(self, agent: str) -> None:
        """The agent left the config: stop its container and drop its state."""
        if self.backend is not None:
            await self.backend.stop(agent)
        self.runs.pop(agent, None)

    # --- supervision ------------------------------------------------------------------

    async def check(self, agent: str) -> None:
        """One supervision step for one agent (the loop calls it; tests may too)."""
        assert self.backend is not None
        run = self.run_of(agent)
        if not run.desired or run.state == "failed":
            return
        now = self.monotonic()
        reason = ""
        if run.state in ("unavailable", "restarting"):
            if now >= run.next_attempt:
                await self._relaunch(agent, run.reason or "retry")
            return
        status = await self.backend.status(agent)
        if status.state != "running":
            code = f" with code {status.exit_code}" if status.exit_code is not None else ""
            reason = f"container {status.state}{code}"
        else:
            timeout = self.host.config.runtime.heartbeat_timeout_s
            seen = self.host.last_seen.get(agent)
            started = run.started_at or now
            if now - started > timeout and (seen is None or self.host.clock() - seen > timeout):
                reason = f"no heartbeat or inbox poll for {timeout:.0f}s"
        if not reason:
            if run.failures and run.started_at and now - run.started_at > 60:
                run.failures = 0  # a minute of health forgives past crashes
            return
        while run.restarts and now - run.restarts[0] > HOUR_S:
            run.restarts.popleft()
        limit = self.host.config.runtime.restart_max_per_hour
        if len(run.restarts) >= limit:
            await self.backend.stop(agent)
            self._set(
                agent,
                "failed",
                f"{reason}; restarted {len(run.restarts)} times in the "
                "last hour, giving up until `legion agents start`",
            )
            return
        run.failures += 1
        run.next_attempt = now + min(BACKOFF_MAX_S, 2 ** (run.failures - 1))
        self._set(agent, "restarting", reason)

    async def _relaunch(self, agent: str, reason: str) -> None:
        run = self.run_of(agent)
        run.restarts.append(self.monotonic())
        async with self._lock:
            if run.desired:
                await self._launch(agent, f"restart after: {reason}")

    async def supervise_forever(self) -> None:
        if self.backend is None:
            return
        while True:
            await asyncio.sleep(self.interval_s)
            for agent in list(self.host.config.agents):
                try:
                    await self.check(agent)
                except Exception:
                    log.exception("supervising %s failed; retrying next round", agent)

    async def close(self) -> None:
        """Stop every container this host started (in parallel, a few seconds at most)."""
        if self.backend is None:
            return
        running = [a for a, r in self.runs.items() if r.state not in ("stopped", "failed")]
        await asyncio.gather(
            *(self.backend.stop(a, timeout_s=3) for a in running), return_exceptions=True
        )
        await self.backend.close()
