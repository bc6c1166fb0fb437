"""The fleet supervisor: keeps each configured agent's container running.

Agents start (at host start, on the operator's word, and on every restart) with bounded
concurrency, `[runtime] start_concurrency` containers at once; the starts and stops of one
agent never overlap (a lock per agent).

The host watches its containers through the engine's event stream (one stream for the
whole fleet: start, die, oom, health, destroy), with one listing of this home's containers
every `[runtime] status_resync_s` as a safety net for an event the stream lost, and again
whenever the stream comes back after it broke. Heartbeat silence is read from the host's
own `last_seen` (no engine call). A dead, unhealthy or silent agent is restarted with
exponential backoff (1 s, 2 s, 4 s ... at most 60 s), at most `[runtime]
restart_max_per_hour` times in any hour; after that it is `failed`, with the reason, until
the operator starts it again. Every state change is evented and audited. When an agent
restarts, the items it had taken from its inbox but not acked are made visible again at
once, so the new container handles them.
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
from legion.fleet.backend import (
    AgentSpec,
    BackendUnavailable,
    ContainerStatus,
    RuntimeBackend,
    StatusFeed,
)
from legion.fleet.identity import AgentFiles
from legion.fsutil import UnsafeEntry
from legion.wire.events import AgentStateChanged

if TYPE_CHECKING:
    from legion.host import Host

log = logging.getLogger("legion.fleet")

BACKOFF_MAX_S = 60.0
HOUR_S = 3600.0
# Reconnecting to a broken event stream: 1 s, 2 s, 4 s ... at most this.
FEED_BACKOFF_MAX_S = 30.0


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
    # The observation count when its container was started (see Fleet.resync).
    launch_seq: int = 0


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
        self._locks: dict[str, asyncio.Lock] = {}
        self._slots: asyncio.Semaphore | None = None
        self._slots_size = 0
        # What the engine last said of each container (by container id), and when (the
        # observation count `_seq`, which orders events against listings).
        self.observed: dict[str, ContainerStatus] = {}
        self._observed_seq: dict[str, int] = {}
        self._seq = 0
        self._feed: StatusFeed | None = None
        self.feed_up = False
        self.resyncs = 0  # listings done (for `legion status` and tests)
        self.ticks = 0  # supervision rounds done
        self._checks: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()

    def run_of(self, agent: str) -> AgentRun:
        return self.runs.setdefault(agent, AgentRun())

    def _lock_of(self, agent: str) -> asyncio.Lock:
        """The lock that keeps one agent's starts and stops in order (never held across
        agents: 100 agents start in parallel, bounded by `_start_slots`)."""
        lock = self._locks.get(agent)
        if lock is None:
            lock = self._locks[agent] = asyncio.Lock()
        return lock

    def _start_slots(self) -> asyncio.Semaphore:
        """At most `[runtime] start_concurrency` container starts at once (a reloaded value
        applies to the starts that begin after it)."""
        size = self.host.config.runtime.start_concurrency
        if self._slots is None or size != self._slots_size:
            self._slots, self._slots_size = asyncio.Semaphore(size), size
        return self._slots

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
        """Start the agent's container (its lock is held by the caller); waits for one of
        the start slots, so a fleet starts `start_concurrency` containers at a time."""
        assert self.backend is not None
        run = self.run_of(agent)
        self._set(agent, "starting", reason)
        async with self._start_slots():
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
            except Exception as exc:
                if not isinstance(exc, BackendUnavailable):
                    # An engine error the backend did not foresee: this agent waits and
                    # retries; the host and the other agents go on.
                    log.exception("starting the container of %s failed", agent)
                run.failures += 1
                run.next_attempt = self.monotonic() + min(BACKOFF_MAX_S, 2 ** (run.failures - 1))
                self._set(agent, "unavailable", str(exc) or type(exc).__name__)
                return
        run.started_at = self.monotonic()
        run.container_id = status.container_id
        self._seq += 1
        run.launch_seq = self._seq
        self._set(agent, "running", reason)

    async def _launch_in_order(self, agent: str, reason: str) -> None:
        async with self._lock_of(agent):
            if self.run_of(agent).desired:
                await self._launch(agent, reason)

    async def start(self, agent: str) -> AgentRun:
        """Start (or, from `failed`, start afresh) an agent's container."""
        self._require(agent)
        async with self._lock_of(agent):
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
        async with self._lock_of(agent):
            run = self.run_of(agent)
            run.desired = True
            await self._launch(agent, reason)
            return run

    async def stop(self, agent: str) -> AgentRun:
        self._require(agent)
        assert self.backend is not None
        async with self._lock_of(agent):
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
        """Start every autostart agent, `start_concurrency` at a time. The engine's event
        stream is opened first, so no start or death of these containers goes unseen."""
        if self.backend is None:
            return
        # A host that died (kill -9, power loss) left its containers: the ones of agents
        # still configured are replaced as they start; the others go now.
        for agent in await self.backend.remove_others(set(self.host.config.agents)):
            self.host.audit.append("host", "agent.orphan_removed", agent, "allow")
            log.info(
                "removed a container left by an earlier host", extra={"fields": {"agent": agent}}
            )
        self._feed = await self._open_feed()
        agents = [a for a, cfg in sorted(self.host.config.agents.items()) if cfg.autostart]
        for agent in agents:
            self.run_of(agent).desired = True
        await asyncio.gather(*(self._launch_in_order(a, "host start") for a in agents))

    async def forget(self, agent: str) -> None:
        """The agent left the config: stop its container and drop its state."""
        if self.backend is not None:
            async with self._lock_of(agent):
                await self.backend.stop(agent)
        run = self.runs.pop(agent, None)
        self._locks.pop(agent, None)
        if run is not None and run.container_id:
            self.observed.pop(run.container_id, None)
            self._observed_seq.pop(run.container_id, None)

    # --- what the engine says -------------------------------------------------------------

    def observe(self, agent: str, status: ContainerStatus) -> None:
        """Record what the engine reported of one container; check its agent at once when
        it is the agent's current container and something is wrong."""
        cid = status.container_id
        if not cid:
            return
        self._seq += 1
        self.observed[cid] = status
        self._observed_seq[cid] = self._seq
        run = self.runs.get(agent)
        if run is not None and run.container_id == cid and self._due(agent):
            self._check_soon(agent)

    async def resync(self) -> None:
        """The safety net: one listing of this home's containers corrects what the event
        stream missed. A change the stream reported after the listing was asked for wins
        over the listing (it is newer); a container that is not listed is `missing`, unless
        it was started after the listing was asked for."""
        assert self.backend is not None
        mark = self._seq
        try:
            listing = await self.backend.statuses()
        except BackendUnavailable as exc:
            log.warning("cannot list the agents' containers: %s", exc)
            return
        self.resyncs += 1
        listed = set()
        for status in listing.values():
            cid = status.container_id
            if not cid:
                continue
            listed.add(cid)
            if self._observed_seq.get(cid, -1) <= mark:
                self._seq += 1
                self.observed[cid] = status
                self._observed_seq[cid] = self._seq
        current = set()
        for agent, run in self.runs.items():
            cid = run.container_id
            if not cid:
                continue
            current.add(cid)
            if (
                cid not in listed
                and run.launch_seq <= mark
                and self._observed_seq.get(cid, -1) <= mark
                and not self._lock_of(agent).locked()
            ):
                self._seq += 1
                self.observed[cid] = ContainerStatus("missing", container_id=cid)
                self._observed_seq[cid] = self._seq
        for cid in [c for c in self.observed if c not in current]:
            del self.observed[cid]
            self._observed_seq.pop(cid, None)
        for agent in list(self.runs):
            if self._due(agent):
                self._check_soon(agent)

    async def _open_feed(self) -> StatusFeed | None:
        assert self.backend is not None
        try:
            return await self.backend.watch()
        except BackendUnavailable as exc:
            log.warning("cannot follow the engine's container events (retrying): %s", exc)
            return None

    async def _follow_forever(self) -> None:
        """Feed the engine's container events to `observe`; when the stream breaks (the
        engine restarted), open it again with backoff and list the containers, since
        whatever happened meanwhile was not reported."""
        loop = asyncio.get_running_loop()
        backoff = 1.0
        while True:
            feed, self._feed = self._feed or await self._open_feed(), None
            if feed is None:
                await asyncio.sleep(backoff)
                backoff = min(FEED_BACKOFF_MAX_S, backoff * 2)
                continue
            self.feed_up = True
            opened = loop.time()
            try:
                await self.resync()
                async for change in feed:
                    self.observe(change.agent, change.status)
                log.warning("the engine's event stream ended; following it again")
            except Exception:
                log.exception("following the engine's events failed; following them again")
            finally:
                self.feed_up = False
                await feed.aclose()
            if loop.time() - opened > FEED_BACKOFF_MAX_S:
                backoff = 1.0  # it had been working: this is a new outage
            await asyncio.sleep(backoff)
            backoff = min(FEED_BACKOFF_MAX_S, backoff * 2)

    # --- supervision ------------------------------------------------------------------

    def _trouble(self, agent: str, run: AgentRun, now: float) -> str:
        """Why a running agent needs a restart ('' when it does not): its container is
        gone, dead or unhealthy as the engine last said, or it fell silent."""
        status = self.observed.get(run.container_id) if run.container_id else None
        if status is not None and status.state != "running":
            code = f" with code {status.exit_code}" if status.exit_code is not None else ""
            error = f" ({status.error})" if status.error else ""
            return f"container {status.state}{code}{error}"
        if status is not None and status.health == "unhealthy":
            return "container unhealthy (its health check failed)"
        timeout = self.host.config.runtime.heartbeat_timeout_s
        seen = self.host.last_seen.get(agent)
        started = run.started_at or now
        if now - started > timeout and (seen is None or self.host.clock() - seen > timeout):
            return f"no heartbeat or inbox poll for {timeout:.0f}s"
        return ""

    def _due(self, agent: str) -> bool:
        """Whether `check(agent)` has something to do now (no engine call)."""
        run = self.runs.get(agent)
        if run is None or not run.desired or run.state == "failed":
            return False
        now = self.monotonic()
        if run.state in ("unavailable", "restarting"):
            return now >= run.next_attempt
        if run.state != "running":
            return False
        if self._trouble(agent, run, now):
            return True
        return bool(run.failures and run.started_at and now - run.started_at > 60)

    async def check(self, agent: str) -> None:
        """One supervision step for one agent (the loop calls it; tests may too). It reads
        what the engine last reported and the agent's last heartbeat; it calls the engine
        only to restart or stop."""
        assert self.backend is not None
        run = self.run_of(agent)
        if not run.desired or run.state == "failed":
            return
        now = self.monotonic()
        if run.state in ("unavailable", "restarting"):
            if now >= run.next_attempt:
                await self._relaunch(agent, run.reason or "retry")
            return
        if run.state != "running":
            return  # starting or stopped: whoever holds its lock is on it
        reason = self._trouble(agent, run, now)
        if not reason:
            if run.failures and run.started_at and now - run.started_at > 60:
                run.failures = 0  # a minute of health forgives past crashes
            return
        while run.restarts and now - run.restarts[0] > HOUR_S:
            run.restarts.popleft()
        limit = self.host.config.runtime.restart_max_per_hour
        if len(run.restarts) >= limit:
            async with self._lock_of(agent):
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
        async with self._lock_of(agent):
            # The operator may have started or stopped it while this waited for the lock.
            if run.desired and run.state in ("unavailable", "restarting"):
                run.restarts.append(self.monotonic())
                await self._launch(agent, f"restart after: {reason}")

    def _check_soon(self, agent: str) -> None:
        """Run `check(agent)` in a task of its own (the fleet owns it), so one agent's
        restart never holds up another's; a request while one runs makes it check again."""
        if agent in self._checks:
            self._again.add(agent)
            return
        self._checks[agent] = asyncio.create_task(self._checking(agent), name=f"check-{agent}")

    async def _checking(self, agent: str) -> None:
        try:
            while True:
                self._again.discard(agent)
                try:
                    await self.check(agent)
                except Exception:
                    log.exception("supervising %s failed; retrying next round", agent)
                if agent not in self._again:
                    return
        finally:
            self._checks.pop(agent, None)

    async def _tick_forever(self) -> None:
        """Each interval: start the checks that are due (backoff over, heartbeat silence;
        no engine call), and list the containers every `status_resync_s`."""
        loop = asyncio.get_running_loop()
        last_resync = loop.time()
        while True:
            await asyncio.sleep(self.interval_s)
            self.ticks += 1
            for agent in list(self.host.config.agents):
                if agent not in self._checks and self._due(agent):
                    self._check_soon(agent)
            if loop.time() - last_resync >= self.host.config.runtime.status_resync_s:
                last_resync = loop.time()
                try:
                    await self.resync()
                except Exception:
                    log.exception("listing the agents' containers failed; retrying later")

    async def supervise_forever(self) -> None:
        if self.backend is None:
            return
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._follow_forever(), name="fleet-events")
                group.create_task(self._tick_forever(), name="fleet-tick")
        finally:
            checks = list(self._checks.values())
            for task in checks:
                task.cancel()
            await asyncio.gather(*checks, return_exceptions=True)

    async def close(self) -> None:
        """Stop every container this host started (in parallel, a few seconds at most)."""
        if self.backend is None:
            return
        if self._feed is not None:
            feed, self._feed = self._feed, None
            await feed.aclose()
        running = [a for a, r in self.runs.items() if r.state not in ("stopped", "failed")]
        await asyncio.gather(
            *(self.backend.stop(a, timeout_s=3) for a in running), return_exceptions=True
        )
        await self.backend.close()
