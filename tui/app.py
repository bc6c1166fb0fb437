"""`LegionApp`: the operator's TUI, a client of one `HostClient` (attached or embedded).

Threading of state (Harlequin's invariant): host calls run in workers that post messages;
the `@on` handlers here own `FleetState` and tell the screens what changed. One bridge
worker turns the host's typed events into `HostEvents` messages, a batch per loop tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from textual import on, work
from textual.app import App
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.worker import Worker, WorkerState

from legion.api.hostclient import ApiError, HostClient, HostNotRunning
from legion.setup import Applied
from tui.browser import BrowserDesk
from tui.collector import Collector
from tui.commands import PROVIDERS, agent_fields, draft_of, parse_value
from tui.keys import bindings, keymap
from tui.messages import ActionDone, Connected, ConnectFailed, HostEvents, HostGone, Loaded
from tui.screens.audit import AuditScreen
from tui.screens.blackboard import BlackboardScreen
from tui.screens.browser import BrowserScreen
from tui.screens.costs import CostsScreen
from tui.screens.dialogs import ConfirmScreen, Field, FormScreen, TextScreen
from tui.screens.fleet import FleetScreen
from tui.screens.help import HelpScreen
from tui.screens.setup import SetupScreen
from tui.state import FleetState
from tui.widgets.header import LegionHeader
from tui.widgets.sidebar import FleetSidebar

Connector = Callable[[], AbstractAsyncContextManager[HostClient]]
HostCall = Callable[[HostClient], Awaitable[str]]

SCREENS_BY_NAME: dict[str, type[Screen[None]]] = {
    "fleet": FleetScreen,
    "blackboard": BlackboardScreen,
    "audit": AuditScreen,
    "costs": CostsScreen,
    "browser": BrowserScreen,
}


class NotConnected(Exception):
    """No host: the connection failed, or the host has stopped."""


class LegionApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "legion"
    BINDINGS = bindings("app")
    COMMANDS = App.COMMANDS | PROVIDERS

    def __init__(
        self,
        connector: Connector,
        *,
        home: str,
        keys: dict[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        refresh_s: float = 2.0,
        first_run: bool = False,
        tune_collector: bool = False,
    ) -> None:
        super().__init__()
        # The process's garbage collector, tuned for painting (tui/collector.py): only when
        # the app is the process (`legion`), never in a test's process.
        self.collector = Collector() if tune_collector else None
        self.first_run = first_run  # no legion.toml: the setup screen opens once connected
        self.connector = connector
        self.home = home
        self.key_overrides = dict(keys or {})
        self.clock = clock
        self.refresh_s = refresh_s
        self.state = FleetState()
        self.browser = BrowserDesk(self)  # the agents' browsers (tui/browser.py)
        self.client: HostClient | None = None
        self.connected = asyncio.Event()
        self.subscribed = asyncio.Event()  # the event stream is open: nothing later is missed
        self.loaded = asyncio.Event()  # agents and costs were read once
        self._leaving = asyncio.Event()
        self._keeper: asyncio.Task[None] | None = None
        self._headers: list[LegionHeader] = []
        self._debounced: set[str] = set()
        self.connect_error = ""

    # --- life -----------------------------------------------------------------------------

    def make_header(self) -> LegionHeader:
        header = LegionHeader(self.clock, self.home)
        self._headers.append(header)
        if self.client is not None:
            header.show_mode(self.client.mode, self.client.label)
        return header

    def on_mount(self) -> None:
        self.set_keymap(keymap(self.key_overrides))
        for name, screen in SCREENS_BY_NAME.items():
            self.install_screen(screen(), name)
        self.push_screen("fleet")
        self._keeper = asyncio.create_task(self._keep(), name="host-client")
        self.set_interval(self.refresh_s, self.load_agents)
        if self.collector is not None:  # the TUI's own process (tui/collector.py)
            self.collector.tune()
            self.call_after_refresh(self.collector.freeze_start)

    async def _keep(self) -> None:
        """Own the HostClient for the app's life (an embedded host lives inside it)."""
        try:
            async with self.connector() as client:
                self.client = client
                self.connected.set()
                self.post_message(Connected())
                waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._leaving.wait())]
                if client.stop_requested is not None:
                    waits.append(asyncio.ensure_future(client.stop_requested()))
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for wait in waits:
                        wait.cancel()
                if not self._leaving.is_set():  # `legion stop` asked the embedded host to stop
                    self.call_later(self._stopped_from_outside)
                    await self._leaving.wait()
        except Exception as exc:  # shown to the operator; the app stays up to say so
            render = getattr(exc, "render", None)
            self.connect_error = render() if callable(render) else str(exc)
            self.post_message(ConnectFailed(self.connect_error))
        finally:
            self.client = None

    async def _stopped_from_outside(self) -> None:
        self.notify("the embedded host was asked to stop (legion stop); leaving", markup=False)
        await self._leave()

    async def shutdown_host(self) -> None:
        """Close the client: an attached daemon keeps running; an embedded host stops its
        fleet cleanly. Idempotent."""
        self._leaving.set()
        if self._keeper is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper

    async def on_unmount(self) -> None:
        await self.shutdown_host()  # however the app ends (quit, a test, a crash)
        if self.collector is not None:
            self.collector.restore()

    async def client_ready(self) -> HostClient:
        await self.connected.wait()
        if self.client is None:
            raise NotConnected(self.connect_error or "the host is gone")
        return self.client

    @on(Connected)
    def on_connected(self) -> None:
        assert self.client is not None
        for header in self._headers:
            header.show_mode(self.client.mode, self.client.label)
        self._bridge()
        self.load_agents()
        self.load_costs()
        self.browser.load()
        if self.first_run and not self.client.paths.config.exists():
            self.first_run = False
            self.push_screen(SetupScreen(), self._set_up)

    def _set_up(self, applied: Applied | None) -> None:
        """The setup screen wrote legion.toml: the host applies it (its agents start)."""
        if applied is None:
            self.notify(
                "no legion.toml yet: `legion setup` (or the file itself) sets one up later",
                markup=False,
            )
            return

        async def call(client: HostClient) -> str:
            result = await client.config_reload()
            started = f"; started {', '.join(result.added)}" if result.added else ""
            return f"wrote {applied.config}{started}. Enter on an agent opens its pane"

        self.act("setup: Start", "config", call)

    @on(ConnectFailed)
    def on_connect_failed(self, message: ConnectFailed) -> None:
        for header in self._headers:
            header.show_down("no host: " + message.error.splitlines()[0][:100])
        self.notify(
            message.error,
            title="could not open the host",
            severity="error",
            timeout=30,
            markup=False,
        )

    # --- the event bridge --------------------------------------------------------------------

    @work(group="events", exit_on_error=False)
    async def _bridge(self) -> None:
        """Host events to the screen, with never more than one batch waiting in the app's
        queue: an event that finds none waiting goes at once; while the app applies a batch,
        what arrives joins the next one. So a token is not held back when the app is idle,
        and a key the operator types waits behind at most one batch, however far a flood of
        tokens runs ahead of the painting (the queue cannot grow)."""
        client = await self.client_ready()
        pending: list[Any] = []
        posted = False

        def flush() -> None:
            nonlocal posted
            if posted or not pending:
                return
            batch = pending.copy()
            pending.clear()
            posted = True
            self.post_message(HostEvents(batch, applied=applied))

        def applied() -> None:
            nonlocal posted
            posted = False
            flush()

        try:
            async with client.subscribe() as events:
                self.subscribed.set()
                async for event in events:
                    pending.append(event)
                    flush()
        finally:
            self.post_message(HostGone())

    @on(HostEvents)
    async def on_host_events(self, message: HostEvents) -> None:
        try:
            await self._apply_events(message.events)
        finally:
            if message.applied is not None:
                message.applied()

    async def _apply_events(self, events: list[Any]) -> None:
        change = self.state.apply(events)
        self.browser.apply(events)
        fleet = self._live_fleet()
        if fleet is None:
            return  # the state is kept; the widgets are going away
        try:
            await fleet.apply(change)
        except NoMatches:
            if self.is_running and not self._leaving.is_set():
                raise
            return
        if change.costs:
            self._if_mounted(CostsScreen, lambda s: s.show())
        if change.blackboard:
            self._debounce(
                "blackboard",
                lambda: self._if_mounted(BlackboardScreen, lambda s: s.action_refresh()),
            )
        if change.audit:
            self._debounce(
                "audit", lambda: self._if_mounted(AuditScreen, lambda s: s.action_refresh())
            )

    @on(HostGone)
    def on_host_gone(self) -> None:
        if self._leaving.is_set():
            return
        for header in self._headers:
            header.show_down("the host stopped (its event stream ended)")

    def _debounce(self, name: str, callback: Callable[[], None], delay: float = 0.3) -> None:
        if name not in self._debounced:

            def fire() -> None:
                self._debounced.discard(name)
                callback()

            self._debounced.add(name)
            self.set_timer(delay, fire)

    def _if_mounted(self, kind: type[Any], act: Callable[[Any], Any]) -> None:
        for name, screen_type in SCREENS_BY_NAME.items():
            if screen_type is kind:
                try:
                    screen = self.get_screen(name)
                except KeyError:  # the app is closing: its screens are gone
                    return
                if screen.is_mounted:
                    act(screen)

    @property
    def fleet(self) -> FleetScreen:
        screen = self.get_screen("fleet")
        assert isinstance(screen, FleetScreen)
        return screen

    @on(Worker.StateChanged)
    def on_worker_failed(self, event: Worker.StateChanged) -> None:
        """A host call that raised: say so (the worker's own message names what failed)."""
        if event.state == WorkerState.ERROR and not self._leaving.is_set():
            error = event.worker.error
            if isinstance(error, ApiError | HostNotRunning | NotConnected | OSError):
                self.notify(f"{event.worker.name}: {error}", severity="error", markup=False)
            elif error is not None:
                self.notify(
                    f"{event.worker.name}: {type(error).__name__}: {error}",
                    severity="error",
                    markup=False,
                )

    # --- loads (exclusive: a newer read replaces an older one) -------------------------

    @work(exclusive=True, group="load-agents", exit_on_error=False)
    async def load_agents(self) -> None:
        client = self.client
        if client is None:
            return
        agents = await client.agents()
        self.post_message(Loaded("agents", (agents, await client.status())))

    @work(exclusive=True, group="load-costs", exit_on_error=False)
    async def load_costs(self) -> None:
        client = await self.client_ready()
        self.post_message(Loaded("costs", await client.costs()))

    @on(Loaded)
    def on_loaded(self, message: Loaded) -> None:
        if message.kind == "agents":
            agents, status = message.data
            changed = self.state.load_agents(agents) | self.state.load_status(status)
            fleet = self._live_fleet()
            with contextlib.suppress(NoMatches):
                if fleet is not None:
                    fleet.query_one(FleetSidebar).sync(self.state.agents, changed)
                    for pane in fleet.panes.values():
                        pane.show_title()
        elif message.kind == "costs":
            self.state.load_costs(message.data)
            fleet = self._live_fleet()
            with contextlib.suppress(NoMatches):
                if fleet is not None:
                    fleet.query_one(FleetSidebar).sync(self.state.agents)
            self._if_mounted(CostsScreen, lambda s: s.show())
            self.loaded.set()

    def _live_fleet(self) -> FleetScreen | None:
        """The fleet screen, unless the app is closing (its screens are going away)."""
        if self._leaving.is_set() or not self.is_running:
            return None
        try:
            return self.fleet
        except KeyError:
            return None

    # --- actions (not exclusive: a second one must not drop the first) ----------------------

    def act(self, title: str, group: str, call: HostCall, *, show: bool = False) -> None:
        """Run `call` on the host in a worker; its outcome comes back as `ActionDone`."""

        async def run() -> None:
            try:
                client = await self.client_ready()
                detail, ok = await call(client), True
            except ApiError as exc:
                detail, ok = f"{exc} [{exc.code}, HTTP {exc.status}]", False
            except (HostNotRunning, NotConnected) as exc:
                detail, ok = f"the host is not reachable: {exc}", False
            self.post_message(ActionDone(title, ok, detail, show))

        self.run_worker(run(), group=group, exit_on_error=False)

    @on(ActionDone)
    def on_action_done(self, message: ActionDone) -> None:
        if message.ok and message.show:
            self.push_screen(TextScreen(message.title, message.detail))
        else:
            self.notify(
                message.detail or "done",
                title=message.title,
                severity="information" if message.ok else "error",
                timeout=6 if message.ok else 15,
                markup=False,
            )
        self.load_agents()
        if message.title.startswith("blackboard"):
            self._if_mounted(BlackboardScreen, lambda s: s.action_refresh())

    def confirm_then(self, question: str, title: str, group: str, call: HostCall) -> None:
        def answered(yes: bool | None) -> None:
            if yes:
                self.act(title, group, call)

        self.push_screen(ConfirmScreen(question), answered)

    def form_then(
        self, title: str, fields: list[Field], then: Callable[[dict[str, str]], None]
    ) -> None:
        def answered(values: dict[str, str] | None) -> None:
            if values is not None:
                then(values)

        self.push_screen(FormScreen(title, fields), answered)

    # --- what keys and commands do ---------------------------------------------------------------

    def action_show(self, name: str) -> None:
        if name in SCREENS_BY_NAME and self.screen is not self.get_screen(name):
            while len(self.screen_stack) > 2:
                self.pop_screen()
            self.switch_screen(name)

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    async def action_quit(self) -> None:
        busy = self.state.busy()
        if self.client is not None and self.client.mode == "embedded" and busy:

            def answered(yes: bool | None) -> None:
                if yes:
                    self.call_later(self._leave)

            self.push_screen(
                ConfirmScreen(
                    f"{', '.join(busy)} {'is' if len(busy) == 1 else 'are'} busy. Quitting stops "
                    "the embedded host and its fleet now. Quit?"
                ),
                answered,
            )
            return
        await self._leave()

    async def _leave(self) -> None:
        if self.client is not None and self.client.mode == "embedded":
            self.notify("stopping the embedded host and its fleet...", markup=False)
        await self.shutdown_host()
        self.exit(0)

    async def open_pane(self, agent: str) -> None:
        self.action_show("fleet")
        await self.fleet.open_agent(agent)

    def steer(self, agent: str, text: str) -> None:
        """Send `text` as a steer: into the running turn of `agent`, or its next turn."""
        item = self.state.said(agent, text, steer=True)
        fleet = self._live_fleet()
        pane = fleet.panes.get(agent) if fleet is not None else None
        if pane is not None:
            self.call_later(pane.show_item, "new", item)

        async def call(client: HostClient) -> str:
            queued = await client.steer(agent, text)
            return f"steer queued for {agent} (item {queued.item_id})"

        self.act(f"agent: Steer {agent}", f"steer-{agent}", call)

    def pause(self, agent: str | None) -> None:
        """The kill switch: `agent`'s LLM calls (None: the fleet's) cut now, refused after."""

        async def call(client: HostClient) -> str:
            state = await client.pause(agent, reason="from the TUI")
            who = "the whole fleet" if agent is None else agent
            cut = f"; {state.cut} call(s) in flight cut" if state.cut else ""
            return f"paused {who}{cut}"

        title = "fleet: Pause all" if agent is None else f"agent: Pause {agent}"
        self.act(title, "pause", call)

    def resume(self, agent: str | None) -> None:
        async def call(client: HostClient) -> str:
            state = await client.resume(agent)
            still = f"; still paused: {', '.join(state.paused)}" if state.paused else ""
            return f"resumed {'the whole fleet' if agent is None else agent}{still}"

        title = "fleet: Resume all" if agent is None else f"agent: Resume {agent}"
        self.act(title, "pause", call)

    def chat(self, agent: str, text: str) -> None:
        item = self.state.said(agent, text)
        fleet = self._live_fleet()
        pane = fleet.panes.get(agent) if fleet is not None else None
        if pane is not None:
            self.call_later(pane.show_item, "new", item)

        async def send(client: HostClient) -> str:
            queued = await client.send(agent, text)
            return f"queued for {agent} (item {queued.item_id})"

        async def run() -> None:
            try:
                client = await self.client_ready()
                await send(client)
            except ApiError as exc:
                self.post_message(
                    ActionDone(f"agent: Chat with {agent}", False, f"{exc} [{exc.code}]")
                )

        self.run_worker(run(), group=f"chat-{agent}", exit_on_error=False)

    def agent_action(self, agent: str, action: str) -> None:
        async def call(client: HostClient) -> str:
            info = await client.agent_action(agent, action)  # type: ignore[arg-type]
            return f"{info.name}: {info.state}" + (f" ({info.reason})" if info.reason else "")

        self.act(f"agent: {action.capitalize()} {agent}", f"agent-{agent}", call)

    def add_agent_form(self) -> None:
        def then(values: dict[str, str]) -> None:
            try:
                draft = draft_of(values)
            except ValueError:
                self.notify("the daily budget must be a number", severity="error", markup=False)
                return

            async def call(client: HostClient) -> str:
                result = await client.add_agent(draft)
                return f"added {draft.name}" + (
                    f"; started {', '.join(result.added)}" if result.added else ""
                )

            self.act("agent: Add", "agent-add", call)

        self.form_then("agent: Add", agent_fields(), then)

    def remove_agent(self, agent: str) -> None:
        async def call(client: HostClient) -> str:
            await client.remove_agent(agent)
            return f"removed {agent} from legion.toml (its data stays)"

        self.confirm_then(
            f"Remove {agent} from legion.toml and stop it?",
            f"agent: Remove {agent}",
            f"agent-{agent}",
            call,
        )

    def bb_get_form(self) -> None:
        def then(values: dict[str, str]) -> None:
            key = values["key"].strip()

            async def call(client: HostClient) -> str:
                import json

                entry = await client.bb_get(key)
                value = json.dumps(entry.value, indent=2, ensure_ascii=False, default=str)
                return f"{entry.key}  v{entry.version} by {entry.writer}\n\n{value}"

            self.act("blackboard: Get", f"bb-{key}", call, show=True)

        self.form_then("blackboard: Get", [Field("key", "key", "e.g. notes/plan")], then)

    def bb_set_form(self) -> None:
        def then(values: dict[str, str]) -> None:
            key, ttl_text = values["key"].strip(), values["ttl"].strip()
            try:
                ttl = float(ttl_text) if ttl_text else None
            except ValueError:
                self.notify("the TTL must be a number of seconds", severity="error", markup=False)
                return
            value = parse_value(values["value"])

            async def call(client: HostClient) -> str:
                entry = await client.bb_put(key, value, ttl_s=ttl)
                return f"{entry.key} is at version {entry.version}"

            self.act("blackboard: Set", f"bb-{key}", call)

        self.form_then(
            "blackboard: Set",
            [
                Field("key", "key", "e.g. notes/plan"),
                Field("value", "value (JSON, or plain text)"),
                Field("ttl", "expire after seconds (empty: never)"),
            ],
            then,
        )

    def bb_delete_form(self) -> None:
        def then(values: dict[str, str]) -> None:
            key = values["key"].strip()

            async def call(client: HostClient) -> str:
                result = await client.bb_delete(key)
                return f"deleted {key}" if result.deleted else f"{key} did not exist"

            self.confirm_then(
                f"Delete blackboard key {key!r}?", "blackboard: Delete", f"bb-{key}", call
            )

        self.form_then("blackboard: Delete", [Field("key", "key")], then)

    def audit_verify(self) -> None:
        async def verify(client: HostClient) -> str:
            v = await client.audit_verify()
            if v.ok:
                return f"audit log ok: {v.checked} records, head {v.head_hash}"
            return (
                f"audit log BROKEN at seq {v.bad_seq}: {v.reason} "
                f"({v.checked} records before it are intact)"
            )

        self.act("audit: Verify", "audit-verify", verify, show=True)

    def config_check(self) -> None:
        async def call(client: HostClient) -> str:
            check = await client.config_check()
            if check.ok:
                return f"{check.file}: ok ({len(check.agents)} agents)"
            return f"{check.file}: {len(check.problems)} problem(s)\n\n" + "\n".join(check.problems)

        self.act("config: Check", "config", call, show=True)

    def config_reload(self) -> None:
        async def call(client: HostClient) -> str:
            r = await client.config_reload()
            parts = [
                f"added {', '.join(r.added)}" if r.added else "",
                f"removed {', '.join(r.removed)}" if r.removed else "",
            ]
            if r.restart_needed:
                parts.append("[host] changes need a restart")
            return "applied" + (": " + "; ".join(p for p in parts if p) if any(parts) else "")

        self.act("config: Reload", "config", call)

    def vault_list(self) -> None:
        async def call(client: HostClient) -> str:
            entries = (await client.vault_list()).entries
            if not entries:
                return "the vault is empty (add keys with `legion vault set`)"
            return "\n".join(
                f"{e.name:<24} {e.tier:<7} {', '.join(e.bound_hosts) or '-'}" for e in entries
            )

        self.act("vault: List", "vault", call, show=True)
