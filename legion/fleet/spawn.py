"""Ephemeral sub-agents (`spawn_agent`): started by an agent with `can_spawn`, for one task.

A sub-agent is an agent like the configured ones, in a hardened container of its own,
with a config that exists only in the host's memory (`host.config.agents`, never
legion.toml; a config reload keeps it):

* its team and, by default, its tools (local MCP servers) are the parent's; it runs in
  `task` mode, with the parent's step limit and loop detection;
* its permission matrix is `[agents.PARENT.spawn.permissions]` (default: the parent's
  own), bounded by the parent's: every decision must pass both (`Permissions.bounds`), so
  it can never do what its parent may not; it never has `can_spawn` nor
  `can_manage_cron`;
* its budget is carved out of the parent's (legion.gateway.llm.carve): reserved when it
  starts, what it does not spend returned when it ends;
* it ends when it answers its task (the answer goes to the parent's inbox as a
  `task_result`, like any reply to a message), when its TTL runs out, when the operator
  stops it (`legion agents stop NAME`), when its parent leaves the config, or when the
  host stops. Its container, socket, inbox, volume and in-memory config are removed; the
  parent always hears how it ended (a `task_result` with status `failed` when it did not
  answer).

A host restart does not resume sub-agents (their containers were removed with the old
host's): at the next start every sub-agent that was running is recorded as ended, its
carve closed, and its parent told, through the same `task_result`. Everything is audited
(`agent.spawn`, `agent.spawn_refused`, `agent.reaped`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from legion.errors import Forbidden, LegionError
from legion.fleet import skills, volume
from legion.fsutil import UnsafeEntry, remove_tree_nofollow
from legion.gateway.llm.inflight import paused_error
from legion.mesh.permissions import Perm
from legion.paths import MAX_SOCKET_PATH
from legion.wire.events import AgentReply, AgentStateChanged
from legion.wire.spawn import SpawnRequest, SpawnResult

if TYPE_CHECKING:
    from legion.events import Subscription
    from legion.host import Host

log = logging.getLogger("legion.fleet.spawn")

CHECK_EVERY_S = 1.0
DDL = """
CREATE TABLE IF NOT EXISTS spawns (
    child TEXT PRIMARY KEY,
    parent TEXT NOT NULL,
    role TEXT NOT NULL,
    item_id INTEGER NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    ended_at REAL,
    reason TEXT
);
"""


class SpawnRefused(LegionError):
    status = 409
    code = "spawn_refused"


@dataclass
class Child:
    name: str
    parent: str
    role: str
    item_id: int
    model: str
    budget: float
    ttl_s: float
    created_at: float
    expires_at: float


class Spawner:
    """The host's sub-agents (see the module docstring)."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.children: dict[str, Child] = {}
        # The bus is followed only while sub-agents live: a subscriber makes every hot-path
        # event (one per streamed token) get built and queued, so an idle one costs the fleet.
        self._events: Subscription | None = None
        self._spawned = asyncio.Event()
        with host.store.tx() as conn:
            conn.execute(DDL)
            conn.execute(  # the history of ended sub-agents: kept 70 days
                "DELETE FROM spawns WHERE ended_at IS NOT NULL AND ended_at < ?",
                (host.clock() - 70 * 86400,),
            )

    def parent_of(self, agent: str) -> str | None:
        child = self.children.get(agent)
        return child.parent if child else None

    # --- spawning ----------------------------------------------------------------------------

    def _refuse(self, parent: str, message: str, *, status: int = 409, code: str = "") -> None:
        self.host.audit.append(parent, "agent.spawn_refused", parent, "deny", reason=message)
        raise SpawnRefused(message, status=status, code=code or "spawn_refused")

    def _name(self, parent: str) -> str:
        for _ in range(20):
            name = f"{parent[:24]}-{secrets.token_hex(3)}"
            if name not in self.host.config.agents:
                return name
        raise LegionError("could not pick a free sub-agent name; retry", code="spawn_failed")

    async def spawn(self, parent: str, body: SpawnRequest) -> SpawnResult:
        """Start a sub-agent of `parent` (the route checked `can_spawn`)."""
        host = self.host
        if parent in self.children:
            raise Forbidden(
                f"{parent} is a sub-agent; sub-agents cannot spawn", code="permission_denied"
            )
        cfg = host.config.agents[parent]
        limits = cfg.spawn
        pause = host.gateway.inflight.paused(parent)
        if pause is not None:  # its child's calls would be refused: do not start one
            error = paused_error(parent, pause)
            self._refuse(parent, error.message, status=error.status, code=error.code)
        if host.fleet.backend is None:
            self._refuse(parent, "this host runs no agent containers; sub-agents need a runtime")
        live = sum(1 for c in self.children.values() if c.parent == parent)
        if live >= limits.max_concurrent:
            self._refuse(
                parent,
                f"{parent} has {live} sub-agents running, its limit "
                f"([agents.{parent}.spawn] max_concurrent = {limits.max_concurrent}); wait "
                "for one to report back",
                status=429,
                code="spawn_limit",
            )
        ttl = body.ttl_s if body.ttl_s is not None else limits.default_ttl_s
        if ttl > limits.max_ttl_s:
            self._refuse(
                parent,
                f"ttl_s {ttl:g} is over the limit of {limits.max_ttl_s:g}s; ask for less",
                status=422,
            )
        budget = body.budget_usd if body.budget_usd is not None else limits.default_budget_usd
        if budget > limits.max_budget_usd:
            self._refuse(
                parent,
                f"budget_usd {budget:g} is over the limit of ${limits.max_budget_usd:g}; ask "
                "for less",
                status=422,
            )
        model = body.model or cfg.model or host.config.llm.default_model
        if not model or model not in host.config.llm.models:
            self._refuse(parent, f"model {model!r} is not configured", status=422)
        assert model is not None
        if not host.permissions.allows(parent, Perm.LLM, model):
            self._refuse(
                parent,
                f"{parent} may not use model {model!r}, so its sub-agent may not",
                status=403,
            )
        name = self._name(parent)
        if len(os.fsencode(host.paths.agent_socket(name))) > MAX_SOCKET_PATH:
            self._refuse(
                parent, "the sub-agent's socket path would be too long; use a shorter LEGION_HOME"
            )
        # From here to the first await: the carve and the child's registration are atomic,
        # so concurrent spawns can neither overspend nor pass max_concurrent.
        from legion.gateway.llm.budget import BudgetExceeded

        try:
            host.budgets.carve.open_for(name, parent, budget)
        except BudgetExceeded as exc:
            host.audit.append(parent, "agent.spawn_refused", parent, "deny", reason=exc.message)
            raise
        now = host.clock()
        child = Child(name, parent, body.role, 0, model, budget, ttl, now, now + ttl)
        self.children[name] = child
        self._listen()
        try:
            host.config.agents[name] = self._config(parent, body.role, model)
            host.permissions.bounds[name] = parent
            payload = {"task": body.task, "role": body.role, "spawned_by": parent}
            child.item_id = host.inboxes.send(parent, name, payload)
            with host.store.tx() as conn:
                conn.execute(
                    "INSERT INTO spawns(child, parent, role, item_id, created_at, expires_at)"
                    " VALUES (?,?,?,?,?,?)",
                    (name, parent, body.role[:200], child.item_id, now, child.expires_at),
                )
            host.audit.append(
                parent,
                "agent.spawn",
                name,
                "allow",
                role=body.role[:200],
                model=model,
                ttl_s=ttl,
                budget_usd=budget,
                item_id=child.item_id,
            )
            await host.open_agent_socket(name)
            run = await host.fleet.start_ephemeral(name, f"spawned by {parent}")
            if run.state != "running":
                raise SpawnRefused(
                    f"the sub-agent's container did not start: {run.reason}", status=503
                )
        except BaseException as exc:
            await self.reap(name, f"it did not start: {exc}", notify=False)
            raise
        return SpawnResult(
            agent=name,
            parent=parent,
            item_id=child.item_id,
            model=model,
            ttl_s=ttl,
            expires_at=child.expires_at,
            budget_usd=budget,
        )

    def _config(self, parent: str, role: str, model: str) -> Any:
        from legion.config import AgentConfig, BudgetConfig

        cfg = self.host.config.agents[parent]
        perms = (cfg.spawn.permissions or cfg.permissions).model_copy(
            update={"can_spawn": False, "can_manage_cron": False}
        )
        return AgentConfig(
            role=role,
            mode="task",
            system_prompt=(
                f"You are a sub-agent that {parent} started for one task. Work it through "
                "with your tools, then call finish_task: your output goes back to "
                f"{parent}. You cannot ask questions; make reasonable assumptions and say "
                "which ones you made."
            ),
            max_tool_rounds=cfg.max_tool_rounds,
            max_task_steps=cfg.max_task_steps,
            autostart=False,
            resources=cfg.resources,
            model=model,
            team=cfg.team,
            embedding_model=cfg.embedding_model,
            budget=BudgetConfig(),  # its limit is its carve
            permissions=perms,
            loop_detection=cfg.loop_detection,
            mcp=cfg.mcp,
        )

    # --- ending ------------------------------------------------------------------------------

    async def reap(self, name: str, reason: str, *, notify: bool = True) -> None:
        """End a sub-agent: container, socket, inbox, volume and config go; its carve closes
        (the unspent part back to the parent); the parent is told unless `notify` is off."""
        host = self.host
        child = self.children.pop(name, None)
        if child is None:
            return
        with contextlib.suppress(Exception):
            await host.fleet.forget(name)
        with contextlib.suppress(Exception):
            await host.http.unlisten(host.paths.agent_socket(name))
        with contextlib.suppress(Exception):
            await host.mcp_proxies.close(name)
        spent = host.budgets.carve.close(name, reason)
        if notify and child.item_id:
            self._tell_parent(child.name, child.parent, child.item_id, reason)
        host.inboxes.purge(name)
        host.mcp_reports.pop(name, None)
        host.last_seen.pop(name, None)
        host.last_poll.pop(name, None)
        with host.store.tx() as conn:
            conn.execute(
                "UPDATE spawns SET ended_at = ?, reason = ? WHERE child = ?",
                (host.clock(), reason[:500], name),
            )
        await asyncio.to_thread(self._remove_files, name)
        # Last: until here the name stays reserved (no configured agent or new child takes it).
        host.config.agents.pop(name, None)
        host.permissions.bounds.pop(name, None)
        host.audit.append(
            "host",
            "agent.reaped",
            name,
            "allow",
            parent=child.parent,
            reason=reason[:500],
            spent_usd=round(spent, 6),
            returned_usd=round(max(0.0, child.budget - spent), 6),
        )
        host.bus.publish(
            AgentStateChanged(at=host.clock(), agent=name, state="stopped", reason=reason[:300])
        )
        log.info("sub-agent ended", extra={"fields": {"agent": name, "reason": reason}})

    def _tell_parent(self, child: str, parent: str, item_id: int, reason: str) -> None:
        """A `task_result` (status failed) in the parent's inbox, routed like a reply."""
        if parent not in self.host.config.agents:
            return
        text = f"sub-agent {child} ended without a result: {reason}"
        payload = {
            "reply_to": item_id,
            "text": text,
            "kind": "task_result",
            "result": {"status": "failed", "output": text, "blackboard_writes": []},
        }
        try:
            self.host.inboxes.send(child, parent, payload)
        except LegionError as exc:  # a full inbox: the audit record says so
            self.host.audit.append(child, "reply.refused", parent, "deny", reason=exc.code)

    def _remove_files(self, name: str) -> None:
        """The sub-agent's volume, identity files and skills store, never following links."""
        paths = self.host.paths
        try:
            volume.remove(paths, name)
        except (UnsafeEntry, OSError) as exc:
            self.host.audit.append("host", "agent.volume_refused", name, "deny", reason=str(exc))
        try:
            skills.remove_agent_store(paths, name)
        except (UnsafeEntry, OSError) as exc:
            log.warning("could not remove a sub-agent's skills folder: %s", exc)
        for folder in (paths.agent_identity(name), paths.agent_socket_dir(name)):
            if not os.path.lexists(folder):
                continue
            try:
                fd = os.open(folder.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                try:
                    remove_tree_nofollow(fd, name, shown=str(folder))
                finally:
                    os.close(fd)
            except (UnsafeEntry, OSError) as exc:
                log.warning("could not remove %s of a sub-agent: %s", folder, exc)

    # --- the host's tasks --------------------------------------------------------------------

    async def recover(self) -> None:
        """At start: sub-agents a previous host left (it crashed or was killed) are ended:
        carves closed, parents told, files removed."""
        rows = list(
            self.host.store.execute(
                "SELECT child, parent, role, item_id, created_at, expires_at FROM spawns"
                " WHERE ended_at IS NULL"
            )
        )
        for child, parent, role, item_id, created, expires in rows:
            self.children[child] = Child(
                child, parent, role, item_id, "", 0.0, 0.0, created, expires
            )
            await self.reap(child, "the host restarted (sub-agents are not resumed)")
        for child in list(self.host.budgets.carve.open):  # a carve without its spawn row
            self.host.budgets.carve.close(child, "the host restarted")

    def _listen(self) -> None:
        """Follow the bus from now on (before the child can answer), and wake the watcher."""
        if self._events is None:
            self._events = self.host.bus.open()
        self._spawned.set()

    def _unlisten(self) -> None:
        if self._events is not None:
            self.host.bus.close(self._events)
            self._events = None

    async def watch_forever(self) -> None:
        """Reap sub-agents whose TTL ran out, that the operator stopped, that failed, or
        whose parent is gone; and those that answered their task."""
        waiter: asyncio.Task[Any] | None = None
        try:
            while True:
                if not self.children:
                    if waiter is not None:
                        waiter.cancel()
                        waiter = None
                    self._unlisten()
                    self._spawned.clear()
                    await self._spawned.wait()
                    continue
                if self._events is None:
                    self._listen()
                assert self._events is not None
                if waiter is None:
                    waiter = asyncio.ensure_future(self._events.get())
                done, _ = await asyncio.wait({waiter}, timeout=CHECK_EVERY_S)
                if waiter in done:
                    event = waiter.result()
                    waiter = None
                    if isinstance(event, AgentReply):
                        child = self.children.get(event.agent)
                        if child is not None and event.in_reply_to == child.item_id:
                            # The reply's answer goes out once its fsync is done (group
                            # commit); wait for the same fsync, so the answer is written
                            # before the reap closes the child's socket.
                            with contextlib.suppress(LegionError):
                                await self.host.store.flush()
                            await self.reap(child.name, "it reported its result", notify=False)
                    continue
                try:
                    await self.check()
                except Exception:
                    log.exception("checking sub-agents failed; retrying")
        finally:
            if waiter is not None:
                waiter.cancel()
            self._unlisten()

    async def check(self) -> None:
        """One round of the TTL and state checks (the watch loop calls it; tests may too)."""
        now = self.host.clock()
        for child in list(self.children.values()):
            run = self.host.fleet.runs.get(child.name)
            if now >= child.expires_at:
                await self.reap(
                    child.name, f"its time to live of {child.ttl_s:g}s ran out before it finished"
                )
            elif child.parent not in self.host.config.agents:
                await self.reap(
                    child.name, f"its parent {child.parent} left the config", notify=False
                )
            elif run is not None and not run.desired:
                await self.reap(child.name, "the operator stopped it")
            elif run is not None and run.state == "failed":
                await self.reap(child.name, f"it failed: {run.reason}")
