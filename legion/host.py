"""The host: one object owning the store, the bus and every socket, as a lifespan.

    async with Host.running(config, paths) as host:
        await host.wait_stopped()

The TUI and the daemon enter the same context. Components start in order and
stop in reverse; every background task is owned by the host's task group.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from legion.api.agent import build_agent_router, require_agent
from legion.api.control import build_control_router, host_status
from legion.api.http import Call, HttpServer, Listener, Route, Router
from legion.api.limits import Rate
from legion.api.masking import mask_routes
from legion.automation.scheduler import Automation
from legion.browser.manager import Browsers
from legion.config import Config
from legion.errors import InboxFull, LegionError
from legion.events import EventBus
from legion.fleet.backend import RuntimeBackend
from legion.fleet.spawn import Spawner
from legion.fleet.supervisor import Fleet
from legion.gateway.egress import EgressProxy
from legion.gateway.llm import passthrough
from legion.gateway.llm.budget import Budgets
from legion.gateway.llm.gateway import Gateway
from legion.gateway.llm.health import ModelHealth
from legion.gateway.llm.runtime import LiteLLM
from legion.gateway.mcp_proxy import McpProxies
from legion.gateway.mcp_remote import RemoteMcp
from legion.gateway.redact import RedactingFilter, Redactor
from legion.gateway.vault import Vault
from legion.mesh.audit import AuditLog, AuditRecord
from legion.mesh.blackboard import COLLECT_BATCH, Blackboard, literal_prefix, sql_glob
from legion.mesh.inbox import Inboxes
from legion.mesh.permissions import Guard, Perm, Permissions
from legion.paths import Paths
from legion.retention import Retention, archive_dir
from legion.store import Store
from legion.wire.agent import (
    BudgetLeft,
    LoopDetection,
    ReplyAccepted,
    ReplyRequest,
    SelfStatus,
)
from legion.wire.api import HostStatus
from legion.wire.events import AgentReply, AuditAppended, HostStarted, HostStopping
from legion.wire.mcp import McpList, McpStdioSpec

if TYPE_CHECKING:
    from legion.api.sockpath import Moved

log = logging.getLogger("legion.host")

# Agent routes whose responses are masked, and against what (see `Host._agent_router`).
LLM_ROUTES = frozenset({("POST", "/v1/chat/completions"), ("POST", "/v1/embeddings")})
# /v1/self masks its operator-authored part itself (`self_status`): it also carries what the
# agent wrote (its cron job names), which must come back as written (no oracle).
CONFIG_ROUTES = frozenset({("GET", "/v1/whoami")})
MAX_COLLECT_BATCHES = 100  # per interval; what is left waits for the next one


class Host:
    def __init__(self, config: Config, paths: Paths, *, clock: Callable[[], float] = time.time):
        self.config = config
        self.paths = paths
        self.clock = clock
        self.started_at = clock()
        self.bus = EventBus()
        paths.home.mkdir(parents=True, exist_ok=True)
        os.chmod(paths.home, 0o700)  # credentials, ledger and audit live here
        paths.run.mkdir(parents=True, exist_ok=True)
        os.chmod(paths.run, 0o700)
        self.store = Store(paths.host_db, durability=config.host.durability)
        self.vault = Vault(paths.vault_db, paths.vault_key, clock=clock)
        # Redaction is scoped by who reads and what produced the text (docs/vault.md):
        # the operator's views (control socket, events, audit, logs) mask every vault value;
        # the LLM path masks the provider keys it uses; egress masks the agent's own
        # credentials (legion.gateway.egress)
        # Nothing an agent wrote is matched against the vault on its way back to an agent.
        self.redactor = Redactor(self.vault.values)
        self.provider_redactor = Redactor(self._provider_keys)
        audit_key, audit_key_created = self.vault.audit_key()
        self.audit = AuditLog(
            self.store,
            clock=clock,
            on_append=self._audit_event,
            redact=self.redactor.redact,
            key=audit_key,
            anchor_path=paths.audit_anchor,
            # an anchor must be there unless this is a new log (new key or new host.db)
            expect_anchor=not (audit_key_created or self.store.created),
        )
        self.permissions = Permissions(config)
        self.guard = Guard(self.permissions, self.audit)
        self.blackboard = Blackboard(self.store, config.host.blackboard, self.bus, clock=clock)
        self.inboxes = Inboxes(
            self.store,
            self.bus,
            max_items=config.host.inbox_max_items,
            visibility_timeout_s=config.host.visibility_timeout_s,
            clock=clock,
        )
        self.budgets = Budgets(self.store, config, clock=clock)
        self.retention = Retention(
            self.store, self.audit, config, archive_dir(paths.home), clock=clock
        )
        self.health = ModelHealth()
        self.litellm = LiteLLM()
        self.gateway = Gateway(
            config,
            vault=self.vault,
            budgets=self.budgets,
            guard=self.guard,
            audit=self.audit,
            bus=self.bus,
            redactor=self.provider_redactor,
            litellm=self.litellm,
            health=self.health,
            clock=clock,
        )
        self.egress = self._make_egress()
        self.mcp = RemoteMcp(config, self.vault, self.audit, clock=clock)
        self.mcp_proxies = McpProxies(self)
        self.mcp_reports: dict[str, McpList] = {}  # what each runtime says of its servers
        # No server-wide redaction hook: masking is per route (`_control_router`,
        # `_agent_router`), so an agent's own input is never matched against the vault.
        self.http = HttpServer(
            max_body_bytes=config.host.max_body_bytes,
            authorize=self._authorize,
            on_limit=self._limit_reached,
            log_interval_s=config.limits.log_interval_s,
            durable=self.store.flush,  # every answer waits for the fsync covering it
        )
        self.last_seen: dict[str, float] = {}
        self.last_poll: dict[str, float] = {}  # when each agent last polled its inbox
        # Inbox polls each agent has parked now: a parked poll is a live connection of
        # the agent's that the host would see drop (polls are disconnect-aware), so it
        # proves the agent lives as well as a heartbeat (the agent sends none meanwhile).
        self.polls_parked: dict[str, int] = {}
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.fleet = Fleet(self, None)
        self.spawner = Spawner(self)
        self.gateway.inflight.parent_of = self.spawner.parent_of
        self.browsers = Browsers(self)
        self.stop_reason = ""
        self.automation = Automation(self)

    # --- lifespan ---------------------------------------------------------------

    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls,
        config: Config,
        paths: Paths,
        *,
        clock: Callable[[], float] = time.time,
        preload_llm: bool = False,
        runtime: RuntimeBackend | None = None,
    ) -> AsyncIterator[Host]:
        """Start everything, yield the host, stop everything in reverse.

        `preload_llm` (the daemon sets it) warms the LLM path in worker threads right
        away: the import of LiteLLM when a configured model needs it (models on the direct
        path never load it), the direct path's TLS context when a model uses that path;
        otherwise the first call that needs either starts it.
        `runtime` is where agent containers run (the daemon passes the configured backend);
        without one the host serves the agent sockets and starts no containers.
        """
        host = cls(config, paths, clock=clock)
        host.fleet = Fleet(host, runtime)
        # Every log line, whoever handles it, passes the redactor first.
        log_filter = RedactingFilter(host.redactor)
        handlers = list(logging.getLogger().handlers)
        for handler in handlers:
            handler.addFilter(log_filter)
        try:
            weak = host.vault.weak()
            if weak:
                log.warning(
                    "credentials stored before the value rule are too weak to mask safely; "
                    "replace them with `legion vault set NAME` (see docs/vault.md)",
                    extra={"fields": {"names": weak}},
                )
            recovered = host.inboxes.recover()
            if recovered:
                log.info(
                    "inbox items made visible again after restart",
                    extra={"fields": {"count": recovered}},
                )
            control = Listener(
                paths.control_socket,
                "operator",
                host._control_router(),
                limits=config.limits.control,
                shared_budget=False,
            )
            host._moved_aside("operator", await host.http.listen(control))
            for name in config.agents:
                await host.open_agent_socket(name)
            await host.mcp.apply()
            await host.spawner.recover()
            # The host owns its background tasks: created here, cancelled and awaited below.
            host._tasks.add(asyncio.create_task(host._collect_forever(), name="bb-collector"))
            host._tasks.add(asyncio.create_task(host.audit.anchor_forever(), name="audit-anchor"))
            host._tasks.add(asyncio.create_task(host.retention.run_forever(), name="retention"))
            await host.automation.start(host._tasks)  # cron, wake checks, webhooks, lanes
            models = config.llm.models.values()
            if preload_llm and any(not passthrough.applies(m) for m in models):
                host.litellm.start()  # a model needs LiteLLM: import it now, off the loop
            if preload_llm and any(
                passthrough.applies(m) and (m.api_base or "").lower().startswith("https:")
                for m in models
            ):
                host.gateway.passthrough.prepare()  # the direct path's TLS context, off the loop
            await host.fleet.start_all()
            host._tasks.add(asyncio.create_task(host.fleet.supervise_forever(), name="fleet"))
            host._tasks.add(asyncio.create_task(host.spawner.watch_forever(), name="spawner"))
            host._tasks.add(asyncio.create_task(host.browsers.reap_forever(), name="browsers"))
            host._tasks.add(
                asyncio.create_task(host.browsers.handoffs.expire_forever(), name="vnc-expiry")
            )
            host.bus.publish(HostStarted(at=host.clock(), pid=os.getpid()))
            # Everything built at start-up lives as long as the host: keep it out of the
            # cyclic GC's scans, whose full passes would otherwise add milliseconds to tails.
            gc.collect()
            gc.freeze()
            yield host
        finally:
            host.bus.publish(HostStopping(at=host.clock(), reason=host.stop_reason or "shutdown"))
            for task in host._tasks:
                task.cancel()
            await asyncio.gather(*host._tasks, return_exceptions=True)
            host._tasks.clear()
            await host.browsers.close()
            await host.fleet.close()
            await host.automation.close()
            await host.mcp.close()
            await host.mcp_proxies.close_all()
            await host.http.close()
            await host.litellm.close()
            await host.gateway.close()
            for reservation in list(host.budgets.open.values()):
                # A call cut short by shutdown: its worst case stays booked (see Budgets).
                log.warning(
                    "unsettled reservation at shutdown",
                    extra={"fields": {"agent": reservation.agent, "usd": reservation.amount}},
                )
            host.audit.close()  # sign and anchor the last records
            host.vault.close()
            host.store.close()
            for handler in handlers:
                handler.removeFilter(log_filter)

    async def open_agent_socket(self, name: str) -> None:
        """Serve `name`'s socket, whatever its folder holds: what an agent left at the
        socket path is moved aside (logged, audited), never followed, and never stops the
        host from starting; a socket that cannot be served is logged and audited."""
        owner = self.fleet.owner() if self.fleet.backend is not None else None
        limits = self.config.limits
        rates = limits.rates
        listener = Listener(
            self.paths.agent_socket(name),
            name,
            self._agent_router(name),
            # Root: the folder (the agent's, 0700) is the fence, the socket needs no chown.
            mode=0o666 if owner is not None else 0o600,
            owner=owner,
            limits=limits.agent,
            rates={
                bucket: Rate(getattr(rates, bucket).per_s, getattr(rates, bucket).burst)
                for bucket in type(rates).model_fields
            },
            per_turn=limits.requests_per_turn,
            trusted_root=self.paths.run,
        )
        try:
            self._moved_aside(name, await self.http.listen(listener))
        except (LegionError, OSError) as exc:
            log.error(
                "cannot serve an agent socket; the agent cannot reach the host",
                extra={"fields": {"agent": name, "error": str(exc)}},
            )
            self.audit.append("host", "socket.unavailable", name, "deny", error=str(exc))
        await self.mcp_proxies.open(name)  # its local MCP servers' egress, if any

    async def ensure_agent_socket(self, name: str) -> None:
        """Before an agent (re)starts: its socket is still the one the host bound, or it
        is bound afresh (an agent may have removed or replaced it before it exited)."""
        if not self.http.is_serving(self.paths.agent_socket(name)):
            await self.open_agent_socket(name)

    def _moved_aside(self, principal: str, moved: list[Moved]) -> None:
        for item in moved:
            self.audit.append(
                "host",
                "socket.moved_aside",
                principal,
                "deny",
                path=item.path,
                kind=item.kind,
                moved_to=item.moved_to,
            )

    def _limit_reached(self, principal: str, kind: str, count: int, fields: dict[str, Any]) -> None:
        """A socket limit was hit (reported at most once per interval, with the count)."""
        if kind == "protocol_error":
            return  # malformed requests are logged (throttled), not audited
        self.audit.append(principal, f"limit.{kind}", principal, "deny", count=count, **fields)

    async def reopen_control_socket(self) -> None:
        """Serve run/control.sock afresh (it was deleted or replaced under the running host);
        connections already open on the old one carry on."""
        await self.http.unlisten(self.paths.control_socket)
        await self.http.listen(
            Listener(self.paths.control_socket, "operator", self._control_router())
        )

    # --- redaction by route (docs/vault.md, "Redaction") -----------------------------

    def _provider_keys(self) -> list[str]:
        """The values of the credentials the configured models use: what the LLM path
        handles, so what it masks in provider responses and errors."""
        names = {m.credential for m in self.config.llm.models.values() if m.credential}
        return self.vault.values(names=names) if names else []

    def _granted_values(self, agent: str) -> list[str]:
        """The credentials `agent` may substitute (what its egress and browser mask)."""
        cfg = self.config.agents.get(agent)
        return self.vault.granted_values(cfg.permissions.allowed_credentials) if cfg else []

    def _control_router(self) -> Router:
        """The operator's socket: every response masked, and every request body, so a vault
        value the operator pastes never becomes state an agent can read."""
        return mask_routes(build_control_router(self), self.redactor, inbound=True)

    def _agent_router(self, name: str) -> Router:
        """An agent's socket: the LLM routes mask provider keys; the routes that show
        operator-authored config mask every vault value; the rest return what was written."""
        router = build_agent_router(self, name)
        # The browser types the agent's credentials into pages: like egress, it masks them
        # (and only them) in what it hands back (a bound site may echo one in its text).
        browser = {
            (r.method, r.template) for r in router.routes if r.template.startswith("/v1/browser/")
        }
        mask_routes(router, Redactor(functools.partial(self._granted_values, name)), only=browser)
        mask_routes(router, self.provider_redactor, only=LLM_ROUTES)
        mask_routes(router, self.redactor, only=CONFIG_ROUTES)
        return router

    async def apply_config(self, new: Config) -> dict[str, list[str]]:
        """Apply a changed legion.toml: agents, teams, models, egress and runtime take effect
        now; [host] settings need a restart (reported, not applied)."""
        # Sub-agents are not in legion.toml: they stay (a configured agent of the same name
        # ends the sub-agent first).
        for name in sorted(set(self.spawner.children) & set(new.agents)):
            await self.spawner.reap(name, "a configured agent took its name")
        spawned = {n: c for n, c in self.config.agents.items() if n in self.spawner.children}
        old_agents = set(self.config.agents) - set(spawned)
        new_agents = set(new.agents)
        restart_needed = [
            s for s in ("host", "limits") if getattr(new, s) != getattr(self.config, s)
        ]
        for name in sorted(old_agents - new_agents):
            await self.fleet.forget(name)
            await self.http.unlisten(self.paths.agent_socket(name))
        # Components share this Config object: swapping its sections updates them all.
        self.config.agents = {**new.agents, **spawned}
        self.config.teams = new.teams
        self.config.llm = new.llm
        self.config.runtime = new.runtime
        self.config.egress = new.egress
        self.config.retention = new.retention
        self.config.images = new.images
        self.config.mcp = new.mcp
        self.config.browser = new.browser
        self.egress = self._make_egress()
        await self.mcp.apply()
        await self.mcp_proxies.sync()
        await self.browsers.reconcile()
        for name in sorted(new_agents - old_agents):
            await self.open_agent_socket(name)
            if self.fleet.backend is not None and new.agents[name].autostart:
                await self.fleet.start(name)
        self.audit.append(
            "operator",
            "config.reload",
            "legion.toml",
            "allow",
            added=sorted(new_agents - old_agents),
            removed=sorted(old_agents - new_agents),
        )
        return {
            "added": sorted(new_agents - old_agents),
            "removed": sorted(old_agents - new_agents),
            "restart_needed": restart_needed,
        }

    def _make_egress(self) -> EgressProxy:
        return EgressProxy(
            config=self.config.egress,
            vault=self.vault,
            audit=self.audit,
            permissions=self.permissions,
        )

    def request_stop(self, reason: str) -> None:
        self.stop_reason = reason
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def _collect_forever(self) -> None:
        interval = self.config.host.blackboard.collect_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                # Batches in short transactions, the loop free between them.
                for _ in range(MAX_COLLECT_BATCHES):
                    if self.blackboard.collect() < COLLECT_BATCH:
                        break
                    await asyncio.sleep(0)
            except Exception:
                log.exception("blackboard collection failed; retrying next interval")

    # --- policy -----------------------------------------------------------------

    def _authorize(self, call: Call, route: Route) -> None:
        assert route.policy is not None
        self.guard.check(
            call.principal,
            Perm(route.policy.permission),
            route.target_of(call),
            route.policy.action,
        )

    def readable_by(self, principal: str) -> Callable[[str], bool]:
        if principal == "operator":
            return lambda key: True
        patterns = self.permissions.patterns(principal, Perm.BB_READ)
        from legion.mesh.globs import any_match

        return lambda key: any_match(patterns, key)

    def readable_globs(self, principal: str) -> list[str] | None:
        """SQLite GLOBs covering every key `principal` may read (None: anything), so a
        listing filters inside SQLite first."""
        if principal == "operator":
            return None
        patterns = self.permissions.patterns(principal, Perm.BB_READ)
        return [g for g in map(sql_glob, patterns) if g is not None]

    def readable_prefixes(self, principal: str) -> list[str] | None:
        """What every key `principal` may read starts with (None: anything), so a listing
        scans only those ranges."""
        if principal == "operator":
            return None
        return [literal_prefix(p) for p in self.permissions.patterns(principal, Perm.BB_READ)]

    def _audit_event(self, record: AuditRecord) -> None:
        self.bus.emit(
            lambda: AuditAppended(
                at=record.ts,
                seq=record.seq,
                actor=record.actor,
                action=record.action,
                target=record.target,
                decision=record.decision,
            )
        )

    # --- operations used by several routes -------------------------------------------

    def send(self, sender: str, to: str, payload: Any) -> int:
        require_agent(self, to)
        return self.inboxes.send(sender, to, payload)

    def self_status(self, agent: str) -> SelfStatus:
        """The agent's own view: the operator-authored configuration with every vault value
        masked (an operator may paste one into a system prompt), then what the agent itself
        set up (its schedules), as written."""
        status = self._configured_self(agent)
        masked = SelfStatus.model_validate(self.redactor.redact_obj(status.model_dump()))
        masked.schedules = self.automation.cron.summary(agent)
        return masked

    def _configured_self(self, agent: str) -> SelfStatus:
        cfg = self.config.agents[agent]
        left = self.budgets.remaining(agent)
        fleet = [
            a
            for a in sorted(self.config.agents)
            if a != agent and self.permissions.allows(agent, Perm.MESSAGE, a)
        ]
        return SelfStatus(
            agent=agent,
            role=cfg.role,
            team=cfg.team,
            model=cfg.model or self.config.llm.default_model,
            mode=cfg.mode,
            system_prompt=cfg.system_prompt,
            max_tool_rounds=cfg.max_tool_rounds,
            max_task_steps=cfg.max_task_steps,
            permissions=cfg.permissions.model_dump() | {"allowed_models": cfg.allowed_models},
            budget_left=BudgetLeft(
                daily_usd=left["daily"],
                monthly_usd=left["monthly"],
                fleet_daily_usd=left["fleet_daily"],
            ),
            fleet=fleet,
            embedding_model=cfg.embedding_model or self.config.llm.embedding_model,
            loop_detection=LoopDetection(**cfg.loop_detection.model_dump()),
            parent=self.spawner.parent_of(agent),
            expires_at=child.expires_at if (child := self.spawner.children.get(agent)) else None,
            mcp_stdio=[
                McpStdioSpec(name=name, **server.model_dump()) for name, server in cfg.mcp.items()
            ],
            mcp_remote=[
                name
                for name in sorted(self.config.mcp)
                if self.permissions.allows(agent, Perm.MCP, name)
            ],
        )

    def reply(self, agent: str, body: ReplyRequest) -> ReplyAccepted:
        """Publish an agent's answer. An agent that sent it a direct message also gets the
        answer in its inbox (it chose to message this agent); a topic item's publisher does
        not (a subscriber must not be able to write into a publisher's inbox)."""
        origin = (
            None if body.in_reply_to is None else self.inboxes.sender_of(agent, body.in_reply_to)
        )
        asker = origin[0] if origin else None
        self.automation.on_reply(agent, body, origin)  # cron run / webhook job results
        direct = origin is not None and origin[1] == "message"
        delivered = None
        if direct and asker in self.config.agents and asker != agent:
            payload = {
                "reply_to": body.in_reply_to,
                "text": body.text,
                "kind": body.kind,
                "result": body.result,
                "error": None if body.error is None else body.error.model_dump(),
            }
            try:
                self.inboxes.send(agent, asker, payload)
                delivered = asker
            except InboxFull:  # the answer still goes out as an event; nothing half-done
                self.audit.append(agent, "reply.refused", asker, "deny", reason="inbox_full")
        failed: dict[str, Any] = {} if body.error is None else {"error": body.error.code}
        self.audit.append(
            agent,
            "reply",
            asker or "operator",
            "allow",
            in_reply_to=body.in_reply_to,
            kind=body.kind,
            **failed,
        )
        self.bus.publish(
            AgentReply(
                at=self.clock(),
                agent=agent,
                in_reply_to=body.in_reply_to,
                to=asker,
                text=body.text,
                kind=body.kind,
                result=body.result,
                error=body.error,
            )
        )
        return ReplyAccepted(in_reply_to=body.in_reply_to, delivered_to=delivered)

    def touch(self, agent: str) -> float:
        now = self.clock()
        self.last_seen[agent] = now
        return now

    def seen_at(self, agent: str) -> float | None:
        """When `agent` was last known alive: now while it has an inbox poll parked,
        else its last request that counts (heartbeat, poll)."""
        if self.polls_parked.get(agent):
            return self.clock()
        return self.last_seen.get(agent)

    def status(self) -> HostStatus:
        return host_status(self)
