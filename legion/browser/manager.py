"""`Browsers`: every agent's browser, owned by the host.

A browser starts on an agent's first action (`ensure`), is stopped after
`[browser] idle_timeout_s` without one (never while a human hand-off is pending or a VNC
link is open), and at most `max_running` run at once: a start beyond that stops the
least recently used idle browser, or is refused (429 `browsers_busy`) when none is idle.

An action is sent to the container over its control socket; the reply carries the page's
URL and title, and the requests the host's proxy refused meanwhile (`blocked`), so the
agent learns why a page did not load. `$CRED{name}` in `type` is substituted here, only
when the origin of the field's frame is a host the credential is bound to (and the
container checks that origin again right before it fills the field).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import BaseModel

from legion.browser import files, human
from legion.browser.channel import BrowserFault, BrowserLost, Channel
from legion.browser.credentials import with_credentials
from legion.browser.human import Human
from legion.browser.runtime import BrowserSpec, DockerBrowsers
from legion.errors import LegionError, NotFound
from legion.gateway.connect_proxy import ConnectProxy, Resolver
from legion.gateway.egress import CRED_RE
from legion.wire.browser import BrowserInfo, BrowserList, BrowserResult, HumanState, TabInfo
from legion.wire.events import BrowserActed, BrowserStateChanged

if TYPE_CHECKING:
    from legion.browser.vnc import Handoffs
    from legion.host import Host

log = logging.getLogger("legion.browser")

REFUSALS_KEPT = 50
STOP_GRACE_S = 10.0
RESULT_FIELDS = set(BrowserResult.model_fields) - {"action", "blocked", "tabs"}


def _refused_page(url: str, blocked: list[str]) -> str | None:
    """The refusal of the page at `url` itself, when the proxy refused it (the browser then
    shows the host's 403 page instead of the site)."""
    try:
        split = urlsplit(url)
        port = split.port or (443 if split.scheme == "https" else 80)
    except ValueError:
        return None
    if not split.hostname:
        return None
    from legion.gateway.netcheck import normalize_host

    prefix = f"{normalize_host(split.hostname)}:{port}: "
    return next((m[len(prefix) :] for m in blocked if m.startswith(prefix)), None)


class NoBrowserRuntime(LegionError):
    status = 409
    code = "no_browser_runtime"


class BrowsersBusy(LegionError):
    status = 429
    code = "browsers_busy"


@dataclass
class Slot:
    agent: str
    state: str = "stopped"
    reason: str = ""
    channel: Channel | None = None
    proxy: ConnectProxy | None = None
    container_id: str | None = None
    last_used: float = 0.0
    busy: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    url: str = ""
    title: str = ""
    last_action: str | None = None
    last_action_at: float | None = None
    human: Human | None = None
    refused: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=REFUSALS_KEPT))


class Browsers:
    def __init__(
        self,
        host: Host,
        *,
        runtime: DockerBrowsers | None = None,
        resolver: Resolver | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self._runtime = runtime
        self.resolver = resolver
        self.monotonic = monotonic
        self.slots: dict[str, Slot] = {}
        self._cap = asyncio.Lock()
        self._swept = False
        from legion.browser.vnc import Handoffs

        self.handoffs: Handoffs = Handoffs(host, self)

    @property
    def config(self) -> Any:
        return self.host.config.browser

    # --- runtime ---------------------------------------------------------------------

    def runtime(self) -> DockerBrowsers:
        if self._runtime is None:
            from legion.fleet.docker_backend import DockerBackend

            backend = self.host.fleet.backend
            if not isinstance(backend, DockerBackend):
                raise NoBrowserRuntime(
                    "the browser runs in a Docker container, and this host runs no container "
                    "runtime ([runtime] backend = docker is needed)"
                )
            self._runtime = DockerBrowsers(backend.home_label)
        return self._runtime

    def slot(self, agent: str) -> Slot:
        if agent not in self.host.config.agents:
            raise NotFound(f"no agent named {agent!r}", code="unknown_agent", agent=agent)
        return self.slots.setdefault(agent, Slot(agent))

    def _set(self, slot: Slot, state: str, reason: str = "") -> None:
        slot.state, slot.reason = state, reason
        self.host.bus.publish(
            BrowserStateChanged(
                at=self.host.clock(),
                agent=slot.agent,
                state=state,
                reason=reason,
            )
        )

    # --- start and stop ------------------------------------------------------------

    async def ensure(self, agent: str) -> Slot:
        """The agent's running browser, started when it has none."""
        slot = self.slot(agent)
        async with slot.lock:
            if slot.state == "running" and slot.channel is not None and slot.channel.attached:
                slot.last_used = self.monotonic()
                return slot
            if slot.state == "running":
                await self._teardown(slot, "the browser stopped answering")
            runtime = self.runtime()
            async with self._cap:
                await self._make_room(agent)
                self._set(slot, "starting", "first use" if slot.last_action is None else "next use")
            started = self.monotonic()
            try:
                await self._start(slot, runtime)
            except BaseException as exc:
                reason = exc.message if isinstance(exc, LegionError) else str(exc)
                await self._teardown(slot, reason, state="failed")
                self.host.audit.append("host", "browser.start", agent, "deny", reason=reason)
                if isinstance(exc, LegionError | asyncio.CancelledError):
                    raise
                raise NoBrowserRuntime(f"the browser of {agent} did not start: {exc}") from None
            slot.last_used = self.monotonic()
            seconds = round(slot.last_used - started, 3)
            self.host.audit.append("host", "browser.start", agent, "allow", seconds=seconds)
            self._set(slot, "running", f"started in {seconds:.1f}s")
        return slot

    async def _make_room(self, agent: str) -> None:
        live = [
            s
            for s in self.slots.values()
            if s.agent != agent and s.state in ("starting", "running")
        ]
        while len(live) >= self.config.max_running:
            idle = [
                s
                for s in live
                if s.state == "running"
                and s.busy == 0
                and s.human is None
                and not s.lock.locked()
                and not self.handoffs.open_for(s.agent)
            ]
            if not idle:
                raise BrowsersBusy(
                    f"all {self.config.max_running} browsers are in use ([browser] "
                    "max_running); retry in a moment, or the operator can raise the cap",
                    max_running=self.config.max_running,
                )
            victim = min(idle, key=lambda s: s.last_used)
            async with victim.lock:
                await self._teardown(victim, f"stopped to make room for {agent}'s browser")
            live.remove(victim)

    async def _start(self, slot: Slot, runtime: DockerBrowsers) -> None:
        if not self._swept:
            self._swept = True
            for gone in await runtime.sweep():
                self.host.audit.append("host", "browser.orphan_removed", gone, "allow")
        agent = slot.agent
        paths = self.host.paths
        owner = self.host.fleet.owner()
        profile = await asyncio.to_thread(files.prepare_profile, paths, agent, owner)
        folder = await asyncio.to_thread(files.fresh_socket_dir, paths, agent, owner)
        slot.channel = Channel(folder / "control.sock")
        await slot.channel.listen(owner)

        def refused(message: str) -> None:
            slot.refused.append((self.monotonic(), message))

        slot.proxy = ConnectProxy(
            principal=agent,
            config=lambda: self.host.config.egress,
            permissions=self.host.permissions,
            audit=self.host.audit,
            action="browser.egress",
            resolver=self.resolver,
            max_tunnels=self.config.max_tunnels,
            on_refused=refused,
        )
        await slot.proxy.listen(folder / "proxy.sock", owner)
        cfg = self.config
        runtime_cfg = self.host.config.runtime
        uid, gid = owner or (os.getuid(), os.getgid())
        spec = BrowserSpec(
            agent=agent,
            image=cfg.image,
            uid=uid,
            gid=gid,
            profile_dir=profile,
            socket_dir=folder,
            memory_mb=cfg.memory_mb,
            cpus=cfg.cpus,
            pids=cfg.pids,
            shm_mb=cfg.shm_mb,
            runtime=runtime_cfg.container_runtime or None,
            env={
                "LEGION_BROWSER_ENGINE": cfg.engine,
                "LEGION_BROWSER_EXECUTABLE": cfg.executable or "",
                "LEGION_BROWSER_VIEWPORT": f"{cfg.viewport_width}x{cfg.viewport_height}",
                "LEGION_BROWSER_TIMEOUT_S": str(cfg.action_timeout_s),
                "LEGION_BROWSER_SNAPSHOT_MAX": str(cfg.snapshot_max_chars),
                "LEGION_BROWSER_EXTRACT_MAX": str(cfg.extract_max_chars),
            },
        )
        from legion.fleet.backend import BackendUnavailable

        try:
            slot.container_id = await runtime.start(spec)
        except BackendUnavailable as exc:
            raise NoBrowserRuntime(str(exc)) from None
        deadline = self.monotonic() + cfg.start_timeout_s
        while True:
            try:
                await slot.channel.wait_attached(1.0)
                return
            except TimeoutError:
                pass
            if not await runtime.running(agent) or self.monotonic() > deadline:
                output = (await runtime.logs(agent, 20)).strip()[-1500:]
                raise NoBrowserRuntime(
                    f"the browser of {agent} did not connect within {cfg.start_timeout_s:g}s"
                    + (f"; its last output: {output}" if output else ""),
                )

    async def _teardown(self, slot: Slot, reason: str, state: str = "stopped") -> None:
        channel, proxy, slot.channel, slot.proxy = slot.channel, slot.proxy, None, None
        await self.handoffs.close_agent(slot.agent, "the browser stopped")
        if channel is not None:
            await channel.close()
        if proxy is not None:
            await proxy.close()
        if self._runtime is not None and slot.container_id is not None:
            with contextlib.suppress(Exception):
                # The browser closes on its own once its control socket is gone (cookies
                # written); SIGKILL only after STOP_GRACE_S.
                await self._runtime.stop(slot.agent, STOP_GRACE_S)
        was = slot.state
        slot.container_id = None
        if slot.human is not None:
            slot.human.note = f"the browser stopped: {reason}"
            slot.human.done.set()
        if was != state or reason != slot.reason:
            if was in ("running", "starting"):
                self.host.audit.append("host", "browser.stop", slot.agent, "allow", reason=reason)
            self._set(slot, state, reason)

    async def stop(self, agent: str, reason: str) -> Slot:
        slot = self.slot(agent)
        async with slot.lock:
            await self._teardown(slot, reason)
        return slot

    async def reconcile(self) -> None:
        """After a config reload: stop the browsers of agents that were removed or lost
        `can_use_browser` (their next actions are refused anyway)."""
        for agent, slot in list(self.slots.items()):
            cfg = self.host.config.agents.get(agent)
            if cfg is not None and cfg.permissions.can_use_browser:
                continue
            if slot.state in ("running", "starting"):
                reason = "the agent was removed" if cfg is None else "can_use_browser was revoked"
                async with slot.lock:
                    await self._teardown(slot, reason)
            if cfg is None:
                self.slots.pop(agent, None)

    async def reap_forever(self, interval_s: float = 2.0) -> None:
        """Stop idle browsers, and notice the ones that went away."""
        while True:
            await asyncio.sleep(interval_s)
            now = self.monotonic()
            for slot in list(self.slots.values()):
                if slot.state != "running" or slot.lock.locked() or slot.busy:
                    continue
                try:
                    if slot.channel is None or not slot.channel.attached:
                        await self.stop(slot.agent, "the browser exited")
                    elif (
                        slot.human is None
                        and not self.handoffs.open_for(slot.agent)
                        and now - slot.last_used > self.config.idle_timeout_s
                    ):
                        idle = now - slot.last_used
                        await self.stop(slot.agent, f"idle for {idle:.0f}s")
                except Exception:
                    log.exception("stopping the browser of %s failed", slot.agent)

    async def close(self) -> None:
        await self.handoffs.close()
        slots = [s for s in self.slots.values() if s.state in ("running", "starting")]
        await asyncio.gather(
            *(self._teardown(s, "host shutdown") for s in slots), return_exceptions=True
        )
        if self._runtime is not None:
            await self._runtime.close()

    # --- actions ---------------------------------------------------------------------

    async def call(self, slot: Slot, action: str, args: dict[str, Any]) -> dict[str, Any]:
        """One command to the browser; a lost browser is torn down (next use restarts it)."""
        assert slot.channel is not None
        try:
            outcome = await slot.channel.call(action, args, self.config.action_timeout_s + 15)
        except BrowserLost as exc:
            async with slot.lock:
                await self._teardown(slot, exc.message)
            raise
        if not outcome.ok:
            assert outcome.error is not None
            raise BrowserFault(outcome.error.message, code=outcome.error.code)
        return outcome.result or {}

    async def act(self, agent: str, request: BaseModel) -> BrowserResult:
        args = request.model_dump()
        action = str(args.pop("action"))
        if action == "navigate" and urlsplit(args["url"]).scheme.lower() not in ("http", "https"):
            raise LegionError(
                "only http:// and https:// URLs can be opened", code="invalid_url", status=400
            )
        slot = await self.ensure(agent)
        slot.busy += 1
        mark = self.monotonic()
        try:
            if action == "type" and CRED_RE.search(args["text"]):
                args = await with_credentials(self, slot, args)
            try:
                result = await self.call(slot, action, args)
            except BrowserFault as exc:
                blocked = [m for t, m in slot.refused if t >= mark]
                if blocked:
                    exc.message += " (the host refused: " + "; ".join(blocked) + ")"
                    exc.args = (exc.message,)
                    exc.detail["blocked"] = blocked
                self._acted(slot, action, ok=False, error=exc.code)
                raise
        finally:
            slot.busy -= 1
            slot.last_used = self.monotonic()
        result = self._capped(result)
        slot.url, slot.title = str(result.get("url", "")), str(result.get("title", ""))
        blocked = [m for t, m in slot.refused if t >= mark]
        landed = _refused_page(slot.url, blocked)
        if landed is not None:  # the page shown is the host's refusal, not the site
            self._acted(slot, action, ok=False, error="navigation_failed")
            raise BrowserFault(
                f"{slot.url} was not loaded: the host refused: {landed}",
                code="navigation_failed",
                blocked=blocked,
            )
        self._acted(slot, action, ok=True)
        out = BrowserResult(
            action=action,
            blocked=blocked,
            **{k: v for k, v in result.items() if k in RESULT_FIELDS},
        )
        if "tabs" in result:
            out.tabs = [TabInfo.model_validate(t) for t in result["tabs"]]
        return out

    def _capped(self, result: dict[str, Any]) -> dict[str, Any]:
        """The container's answer held to the host's own limits (a browser that was taken
        over may send anything its socket carries)."""
        out = dict(result)
        for key, limit in (
            ("snapshot", self.config.snapshot_max_chars),
            ("text", self.config.extract_max_chars),
            ("url", 8192),
            ("title", 500),
            ("note", 2000),
        ):
            value = out.get(key)
            if isinstance(value, str) and len(value) > limit:
                out[key] = value[:limit]
                if key in ("snapshot", "text"):
                    out["truncated"] = True
        return out

    def _acted(self, slot: Slot, action: str, *, ok: bool, error: str | None = None) -> None:
        slot.last_action, slot.last_action_at = action, self.host.clock()
        self.host.bus.publish(
            BrowserActed(
                at=slot.last_action_at,
                agent=slot.agent,
                action=action,
                url=slot.url,
                title=slot.title,
                ok=ok,
                error=error,
            )
        )

    # --- the human hand-off (legion/browser/human.py) --------------------------------

    async def request_human(self, agent: str, reason: str) -> HumanState:
        return await human.request(self, agent, reason)

    async def wait_human(self, agent: str, wait_s: float) -> HumanState:
        return await human.wait(self, agent, wait_s)

    async def done(self, agent: str, note: str, actor: str = "operator") -> BrowserInfo:
        return await human.done(self, agent, note, actor)

    # --- what the operator sees --------------------------------------------------------

    def info(self, agent: str) -> BrowserInfo:
        cfg = self.host.config.agents[agent]
        slot = self.slots.get(agent) or Slot(agent)
        session = self.handoffs.open_for(agent)
        return BrowserInfo(
            agent=agent,
            enabled=cfg.permissions.can_use_browser,
            state=slot.state,
            reason=slot.reason,
            url=slot.url,
            title=slot.title,
            last_action=slot.last_action,
            last_action_at=slot.last_action_at,
            waiting_for_human=slot.human is not None,
            human_reason=slot.human.reason if slot.human else "",
            handoff_expires_at=session.expires_at if session else None,
            container_id=slot.container_id,
        )

    def list(self) -> BrowserList:
        infos = [self.info(a) for a in sorted(self.host.config.agents)]
        running = sum(1 for s in self.slots.values() if s.state in ("running", "starting"))
        return BrowserList(browsers=infos, running=running, max_running=self.config.max_running)
