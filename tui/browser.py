"""The agents' browsers as the TUI knows them, and what the operator does with them.

* `BrowserBoard` (plain Python, no widgets): folds `GET /v1/browsers` and the events
  `browser_state`, `browser_action`, `browser_handoff` into one `BrowserView` per agent, and
  says what a batch changed and who newly waits for a human.
* `BrowserDesk`, owned by the app: reads the list when the host connects and after every
  hand-off event (the list is the truth; events make the panel live in between), raises a
  notification when an agent asks for a human, and runs the hand-off, resume and stop calls
  through the `HostClient` in workers. A worker hands its result back with `call_later`, so
  the board changes in the app's message order, never from inside a host call.

Everything a page or an agent chose (URL, title, the reason it asks for a human, an error)
is agent-controlled: it is shown through `line()` (controls made visible, cut to a length),
and only ever as `Text`/`Content`, never as markup. The hand-off link carries a token: it is
held here in memory only, until it expires or the hand-off ends, and is never logged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from legion.api.hostclient import ApiError, HostClient, HostNotRunning
from legion.textsafe import safe_text
from legion.tuikeys import BY_ID
from legion.wire.browser import BrowserList, Handoff

if TYPE_CHECKING:
    from tui.app import LegionApp
    from tui.screens.browser import BrowserScreen

RELOAD_S = 0.3  # hand-off events arriving together cause one read of the list
REASON_SHOWN = 300  # characters of an agent's reason in a notification


def line(text: str | None, limit: int) -> str:
    """Agent-controlled text on one line: every control visible, at most `limit` characters."""
    shown = safe_text(text or "")
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def stamp(at: float | None) -> str:
    return datetime.fromtimestamp(at).strftime("%H:%M:%S") if at else "-"


@dataclass
class BrowserView:
    agent: str
    enabled: bool = True
    state: str = "stopped"  # stopped, starting, running, failed
    reason: str = ""
    url: str = ""
    title: str = ""
    last_action: str | None = None
    last_action_at: float | None = None
    last_ok: bool | None = None  # only events say it; None after a fresh start of the TUI
    last_error: str | None = None
    waiting: bool = False
    human_reason: str = ""
    human_since: float | None = None
    handoff_expires_at: float | None = None  # a VNC link is open (maybe made elsewhere)
    link: Handoff | None = None  # the link this TUI asked for (it holds a token)
    seq: int = 0  # BrowserBoard.seq when an event or a link last changed this view


@dataclass
class BoardChange:
    agents: set[str] = field(default_factory=set)
    asked: list[BrowserView] = field(default_factory=list)  # newly waiting for a human
    expired: list[tuple[str, str]] = field(default_factory=list)  # (agent, reason) unanswered
    failed: list[BrowserView] = field(default_factory=list)
    reload: bool = False


class BrowserBoard:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.views: dict[str, BrowserView] = {}
        self.running = 0
        self.max_running: int | None = None
        self.loaded = False
        self.seq = 0  # counts what changed a view (events, links): a list read before loses

    def view(self, agent: str) -> BrowserView:
        if agent not in self.views:
            self.views[agent] = BrowserView(agent)
        return self.views[agent]

    def waiting(self) -> list[BrowserView]:
        return [v for v in self.views.values() if v.waiting]

    def touch(self, view: BrowserView) -> BrowserView:
        self.seq += 1
        view.seq = self.seq
        return view

    def load(self, listing: BrowserList, since: int | None = None) -> BoardChange:
        """Take the host's list, asked for when `seq` was `since`. A view that an event or a
        link changed meanwhile keeps what it knows (the list is older; another read is
        asked for). The first list also reports who already waits."""
        change = BoardChange()
        first = not self.loaded
        self.loaded = True
        self.running, self.max_running = listing.running, listing.max_running
        names = {b.agent for b in listing.browsers}
        for gone in set(self.views) - names:
            del self.views[gone]
            change.agents.add(gone)
        for info in listing.browsers:
            view = self.view(info.agent)
            view.enabled = info.enabled
            if since is not None and view.seq > since:
                change.reload = True
                continue
            was_waiting = view.waiting
            view.state, view.reason = info.state, info.reason
            view.url, view.title = info.url, info.title
            view.last_action, view.last_action_at = info.last_action, info.last_action_at
            view.waiting, view.human_reason = info.waiting_for_human, info.human_reason
            if not view.waiting:
                view.human_since = None
            view.handoff_expires_at = info.handoff_expires_at
            if view.handoff_expires_at is None:
                view.link = None  # every session of this agent has ended
            self.drop_expired(view)
            if view.waiting and first and not was_waiting:
                change.asked.append(view)
            change.agents.add(info.agent)
        return change

    def drop_expired(self, view: BrowserView) -> None:
        if view.link is not None and view.link.expires_at <= self.clock():
            view.link = None

    def took_link(self, handoff: Handoff) -> None:
        view = self.touch(self.view(handoff.agent))
        view.link = handoff
        view.handoff_expires_at = max(view.handoff_expires_at or 0.0, handoff.expires_at)

    def apply(self, events: list[Any]) -> BoardChange:
        change = BoardChange()
        for event in events:
            kind = getattr(event, "type", "")
            if kind == "browser_state":
                self._on_state(event, change)
            elif kind == "browser_action":
                view = self.touch(self.view(event.agent))
                view.last_action, view.last_action_at = event.action, event.at
                view.last_ok, view.last_error = event.ok, event.error
                view.url, view.title = event.url, event.title
                change.agents.add(event.agent)
            elif kind == "browser_handoff":
                self._on_handoff(event, change)
        return change

    def _on_state(self, e: Any, change: BoardChange) -> None:
        view = self.touch(self.view(e.agent))
        view.state, view.reason = e.state, e.reason
        if e.state in ("stopped", "failed"):  # a teardown ends the hand-off and the links
            view.waiting, view.human_since = False, None
            view.link, view.handoff_expires_at = None, None
            change.reload = True
        if e.state == "failed":
            change.failed.append(view)
        change.agents.add(e.agent)

    def _on_handoff(self, e: Any, change: BoardChange) -> None:
        view = self.touch(self.view(e.agent))
        change.agents.add(e.agent)
        change.reload = True
        if e.url:
            view.url = e.url
        if e.state == "requested":
            if not view.waiting:  # an agent asking again and again raises one notice
                view.waiting, view.human_since = True, e.at
                change.asked.append(view)
            view.human_reason = e.reason
        elif e.state == "done":
            view.waiting, view.human_since, view.human_reason = False, None, ""
            view.link, view.handoff_expires_at = None, None
        elif e.state == "expired" and e.reason:  # the agent's request went unanswered
            if view.waiting:
                change.expired.append((e.agent, e.reason))
            view.waiting, view.human_since, view.human_reason = False, None, ""
        elif e.state == "expired":  # a VNC link expired (the list says whether others live)
            self.drop_expired(view)


def key_of(app: LegionApp, binding_id: str) -> str:
    """The key the operator presses for `binding_id`, after `[tui.keys]` remapping."""
    from tui.screens.help import show_keys

    return show_keys(app.key_overrides.get(binding_id, BY_ID[binding_id].key))


class BrowserDesk:
    def __init__(self, app: LegionApp) -> None:
        self.app = app
        self.board = BrowserBoard(app.clock)
        self.select: str | None = None  # an agent the panel should select when shown
        self._reload_pending = False

    # --- reading and following ------------------------------------------------------

    def load(self) -> None:
        if not self.app.is_running:
            return

        since = self.board.seq

        async def run() -> None:
            client = await self.app.client_ready()
            listing = await client.browsers()
            self.app.call_later(self._loaded, listing, since)

        self.app.run_worker(
            run(), name="browser: List", group="load-browsers", exclusive=True, exit_on_error=False
        )

    def _loaded(self, listing: BrowserList, since: int) -> None:
        change = self.board.load(listing, since)
        self._show(change)
        self._reload_later(change)

    def apply(self, events: list[Any]) -> None:
        """A batch of host events (from the app's bridge)."""
        change = self.board.apply(events)
        if change.agents:
            self._show(change)
        self._reload_later(change)

    def _reload_later(self, change: BoardChange) -> None:
        if change.reload and not self._reload_pending:
            self._reload_pending = True

            def fire() -> None:
                self._reload_pending = False
                self.load()

            self.app.set_timer(RELOAD_S, fire)

    def _show(self, change: BoardChange) -> None:
        for view in change.asked:
            self.app.notify(
                f"{line(view.human_reason, REASON_SHOWN)}\n{key_of(self.app, 'show-browser')}: "
                f"the browser panel; {key_of(self.app, 'browser-handoff')} hands off, "
                f"{key_of(self.app, 'browser-done')} resumes the agent",
                title=f"{view.agent} asks for a human in its browser",
                severity="warning",
                timeout=60,
                markup=False,
            )
        for agent, reason in change.expired:
            self.app.notify(
                f"nobody took over in time; the agent goes on without it ({line(reason, 120)})",
                title=f"{agent}'s request for a human expired",
                severity="warning",
                timeout=15,
                markup=False,
            )
        for view in change.failed:
            self.app.notify(
                line(view.reason, 400),
                title=f"the browser of {view.agent} failed",
                severity="error",
                timeout=15,
                markup=False,
            )
        screen = self.screen()
        if screen is not None:
            screen.show(change.agents)

    def screen(self) -> BrowserScreen | None:
        """The browser panel, when it is mounted (else it reads the board when it is)."""
        from tui.screens.browser import BrowserScreen

        try:
            screen = self.app.get_screen("browser")
        except KeyError:  # the app is closing
            return None
        return screen if isinstance(screen, BrowserScreen) and screen.is_mounted else None

    # --- what the operator does ---------------------------------------------------------

    def handoff(self, agent: str) -> None:
        """Ask the host for a VNC link to `agent`'s browser and show it in the panel."""

        async def run() -> None:
            try:
                client: HostClient = await self.app.client_ready()
                handoff = await client.browser_handoff(agent)
            except ApiError as exc:
                self.app.call_later(self._failed, f"browser: Hand off {agent}", exc)
                return
            except HostNotRunning as exc:
                self.app.call_later(self._failed, f"browser: Hand off {agent}", exc)
                return
            self.app.call_later(self._took_link, handoff)

        self.app.notify(
            f"asking the host for a VNC link to {agent}'s browser (it starts when stopped)...",
            timeout=4,
            markup=False,
        )
        self.app.run_worker(run(), name=f"browser: Hand off {agent}", exit_on_error=False)

    def _failed(self, title: str, exc: Exception) -> None:
        detail = f"{exc} [{exc.code}, HTTP {exc.status}]" if isinstance(exc, ApiError) else str(exc)
        self.app.notify(detail, title=title, severity="error", timeout=15, markup=False)

    def _took_link(self, handoff: Handoff) -> None:
        self.board.took_link(handoff)
        self.select = handoff.agent  # the panel selects it when it (re)appears
        screen = self.screen()
        if screen is not None and self.app.screen is screen:
            screen.show({handoff.agent})
        else:
            self.app.action_show("browser")
        self.app.notify(
            f"the link is in the browser panel, valid until {stamp(handoff.expires_at)}; "
            f"{key_of(self.app, 'browser-copy')} copies it",
            title=f"hand-off of {handoff.agent}",
            timeout=8,
            markup=False,
        )

    def resume(self, agent: str) -> None:
        """Ask for a note for the agent (optional), then end the hand-off."""
        from tui.screens.dialogs import Field

        def then(values: dict[str, str]) -> None:
            note = values.get("note", "").strip()

            async def call(client: HostClient) -> str:
                info = await client.browser_done(agent, note)
                told = f' with your note "{line(note, 80)}"' if note else ""
                return f"{agent} resumes{told}; its browser is {info.state}"

            self.app.act(f"browser: Resume {agent}", f"browser-{agent}", call)

        self.app.form_then(
            f"browser: Resume {agent}",
            [Field("note", "note for the agent (optional)", "e.g. logged in as ops")],
            then,
        )

    def stop(self, agent: str) -> None:
        async def call(client: HostClient) -> str:
            info = await client.browser_stop(agent)
            return f"the browser of {agent} is {info.state} (its next action starts it again)"

        self.app.confirm_then(
            f"Stop the browser of {agent}? A hand-off ends; its next action starts it again.",
            f"browser: Stop {agent}",
            f"browser-{agent}",
            call,
        )

    def copy_link(self, agent: str) -> None:
        view = self.board.views.get(agent)
        if view is not None:
            self.board.drop_expired(view)
        if view is None or view.link is None:
            self.app.notify(
                f"no hand-off link for {agent} yet: {key_of(self.app, 'browser-handoff')} "
                "makes one",
                severity="warning",
                markup=False,
            )
            return
        self.app.copy_to_clipboard(view.link.link)
        self.app.notify(
            "copied the link (OSC 52; if your terminal refuses it, select the link instead)",
            timeout=5,
            markup=False,
        )
