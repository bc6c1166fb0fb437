"""What the TUI knows about the fleet, folded from host read-outs and typed events.

Plain Python (no widgets): the fleet screen applies each batch of events here, then asks
the widgets to show what changed. Each agent keeps a bounded transcript of this session
(what the operator said, what the agent streamed and replied, its tool calls, its
notices), so a pane opened later shows the conversation so far.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal

from legion.wire.api import AgentInfo, AgentList, HostStatus
from legion.wire.ops import CostReport

MAX_TRANSCRIPT = 400  # items per agent
MAX_TICKER = 500
MAX_REPLY_TEXT = 200_000  # characters of one reply kept in the transcript

Activity = Literal["starting", "idle", "thinking", "tool", "paused", "failed", "stopped", "queued"]


@dataclass
class Item:
    """One entry of an agent's transcript."""

    kind: Literal["user", "steer", "reply", "tool", "note"]
    text: str = ""
    done: bool = True
    call_id: str = ""
    name: str = ""
    arguments: str = ""
    result: str | None = None
    level: str = "info"


@dataclass
class AgentView:
    name: str
    state: str = "stopped"  # the container's: stopped, starting, running, restarting, failed...
    reason: str = ""
    activity: Activity = "idle"
    doing: str = ""
    model: str | None = None
    role: str | None = None
    queue: int = 0  # items waiting in its lane
    in_progress: int = 0  # items its runtime took and has not acked
    steers: int = 0  # steer messages waiting
    paused: bool = False  # its LLM calls are paused (the kill switch)
    cron_jobs: int = 0
    cron_failed: int = 0
    last_cron: str = ""  # the latest cron run that went wrong, shown when idle
    wake: str = ""  # wake checks: "wake 3/41" (dispatched of checks)
    today_usd: float = 0.0
    month_usd: float = 0.0
    daily_cap: float | None = None
    monthly_cap: float | None = None
    refused: str = ""  # the last budget refusal, shown until the next successful call
    transcript: deque[Item] = field(default_factory=lambda: deque(maxlen=MAX_TRANSCRIPT))

    def set_paused(self, paused: bool) -> None:
        self.paused = paused
        if not paused and self.refused.startswith("paused"):
            self.refused = ""  # the refusal was the pause's

    @property
    def shown_activity(self) -> Activity:
        """What the sidebar says: a failed or stopped container first, then a pause."""
        if self.paused and self.activity not in ("failed", "stopped", "starting"):
            return "paused"
        return self.activity

    def automation(self) -> str:
        """One line on cron jobs and wake checks (empty without either)."""
        parts = []
        if self.cron_jobs:
            failed = f" ({self.cron_failed} failed)" if self.cron_failed else ""
            parts.append(f"cron {self.cron_jobs}{failed}")
        if self.wake:
            parts.append(self.wake)
        return " · ".join(parts)

    @property
    def budget_share(self) -> float | None:
        """Today's spend as a share of the daily cap (None without a cap)."""
        if not self.daily_cap:
            return None
        return self.today_usd / self.daily_cap

    def current_reply(self) -> Item | None:
        if self.transcript and self.transcript[-1].kind == "reply" and not self.transcript[-1].done:
            return self.transcript[-1]
        return None


@dataclass
class Tick:
    """One line of the events ticker."""

    at: float
    level: Literal["info", "warning", "error"]
    text: str


@dataclass
class Change:
    """What one batch changed, so the screen touches only those widgets."""

    agents: set[str] = field(default_factory=set)
    items: list[tuple[str, str, Item]] = field(default_factory=list)  # (agent, op, item)
    ticks: list[Tick] = field(default_factory=list)
    costs: bool = False
    blackboard: bool = False
    audit: bool = False
    host_stopping: bool = False


def _activity_of(state: str) -> Activity:
    return {
        "starting": "starting",
        "restarting": "starting",
        "failed": "failed",
        "unavailable": "failed",
        "stopped": "stopped",
    }.get(state, "idle")  # type: ignore[return-value]


class FleetState:
    def __init__(self) -> None:
        self.agents: dict[str, AgentView] = {}
        self.fleet_today = 0.0
        self.fleet_month = 0.0
        self.fleet_cap: float | None = None
        self.runtime: str | None = None
        self.ticker: deque[Tick] = deque(maxlen=MAX_TICKER)
        self.lagged = 0
        self.status_loaded = False  # lane depths come from the status once it was read
        self.fleet_paused = False

    def view(self, name: str) -> AgentView:
        if name not in self.agents:
            self.agents[name] = AgentView(name)
        return self.agents[name]

    # --- read-outs -------------------------------------------------------------------

    def load_agents(self, listing: AgentList) -> set[str]:
        """Take the host's agent list; returns the names whose row changed."""
        self.runtime = listing.runtime
        changed: set[str] = set()
        names = {a.name for a in listing.agents}
        for gone in set(self.agents) - names:
            del self.agents[gone]
            changed.add(gone)
        for info in listing.agents:
            if self._load_agent(info):
                changed.add(info.name)
        return changed

    def _load_agent(self, info: AgentInfo) -> bool:
        view = self.view(info.name)
        before = (view.state, view.reason, view.queue, view.model, view.activity, view.paused)
        view.model, view.role = info.model, info.role
        view.set_paused(info.paused)
        if not self.status_loaded:
            view.queue = info.inbox_depth
        if view.state != info.state or view.reason != info.reason:
            view.state, view.reason = info.state, info.reason
            if info.state != "running" or view.activity in ("starting", "failed", "stopped"):
                view.activity = _activity_of(info.state)
        if self.runtime is None and view.state == "stopped" and view.activity == "stopped":
            view.activity = "idle"  # no runtime backend: agents run outside the host
        return before != (
            view.state,
            view.reason,
            view.queue,
            view.model,
            view.activity,
            view.paused,
        )

    def load_status(self, status: HostStatus) -> set[str]:
        """Take the host's status (lanes, cron, wake checks); returns the rows that changed."""
        self.status_loaded = True
        changed: set[str] = set()
        for agent in status.agents:
            if agent.name not in self.agents:
                continue
            view = self.agents[agent.name]
            wake = (
                f"wake {agent.wake.dispatched}/{agent.wake.checks}"
                if agent.wake is not None
                else ""
            )
            now = (
                agent.queue_depth,
                agent.in_progress,
                agent.steers_waiting,
                agent.cron_jobs,
                agent.cron_failed,
                wake,
                agent.paused,
            )
            before = (
                view.queue,
                view.in_progress,
                view.steers,
                view.cron_jobs,
                view.cron_failed,
                view.wake,
                view.paused,
            )
            if now != before:
                (
                    view.queue,
                    view.in_progress,
                    view.steers,
                    view.cron_jobs,
                    view.cron_failed,
                    view.wake,
                    _,
                ) = now
                view.set_paused(agent.paused)
                changed.add(agent.name)
        return changed

    def load_costs(self, report: CostReport) -> None:
        self.fleet_today, self.fleet_month = report.fleet_today_usd, report.fleet_month_usd
        self.fleet_cap = report.fleet_daily_cap_usd
        for spend in report.agents:
            view = self.view(spend.agent)
            view.today_usd, view.month_usd = spend.today_usd, spend.month_usd
            view.daily_cap, view.monthly_cap = spend.daily_cap_usd, spend.monthly_cap_usd

    # --- the operator ---------------------------------------------------------------

    def said(self, agent: str, text: str, *, steer: bool = False) -> Item:
        item = Item("steer" if steer else "user", text)
        self.view(agent).transcript.append(item)
        return item

    # --- events -------------------------------------------------------------------------

    def apply(self, events: list[Any]) -> Change:
        change = Change()
        for event in events:
            handler = getattr(self, "_on_" + event.type, None)
            if handler is not None:
                handler(event, change)
        self.ticker.extend(change.ticks)
        return change

    def _tick(self, change: Change, at: float, level: Any, text: str) -> None:
        change.ticks.append(Tick(at, level, text))

    def _on_token_delta(self, e: Any, change: Change) -> None:
        view = self.view(e.agent)
        item = view.current_reply()
        if item is None:
            item = Item("reply", "", done=False)
            view.transcript.append(item)
            change.items.append((e.agent, "new", item))
        if len(item.text) < MAX_REPLY_TEXT:  # bounded memory, whatever a model streams
            item.text += e.text[: MAX_REPLY_TEXT - len(item.text)]
        change.items.append((e.agent, "token:" + e.text, item))
        if view.activity != "thinking":
            view.activity, view.doing = "thinking", "writing a reply"
            change.agents.add(e.agent)

    def _close_reply(self, agent: str, change: Change) -> None:
        item = self.view(agent).current_reply()
        if item is not None:
            item.done = True
            change.items.append((agent, "done", item))

    def _on_tool_call_started(self, e: Any, change: Change) -> None:
        view = self.view(e.agent)
        self._close_reply(e.agent, change)
        item = Item("tool", call_id=e.call_id, name=e.name, arguments=e.arguments, done=False)
        view.transcript.append(item)
        change.items.append((e.agent, "new", item))
        view.activity, view.doing = "tool", f"running {e.name}"
        change.agents.add(e.agent)

    def _on_tool_call_finished(self, e: Any, change: Change) -> None:
        view = self.view(e.agent)
        for item in reversed(view.transcript):
            if item.kind == "tool" and item.call_id == e.call_id:
                item.result, item.done = e.result, True
                change.items.append((e.agent, "update", item))
                break
        view.activity, view.doing = "thinking", f"read the result of {e.name}"
        change.agents.add(e.agent)

    def _on_agent_reply(self, e: Any, change: Change) -> None:
        view = self.view(e.agent)
        streamed = view.current_reply()
        self._close_reply(e.agent, change)
        same = streamed is not None and (
            streamed.text.strip() == e.text.strip()
            or (len(streamed.text) >= MAX_REPLY_TEXT and e.text.startswith(streamed.text))
        )
        if not same:
            last = next((i for i in reversed(view.transcript) if i.kind == "reply"), None)
            if e.in_reply_to is None or last is None or last.text.strip() != e.text.strip():
                item = Item("reply", e.text)
                view.transcript.append(item)
                change.items.append((e.agent, "new", item))
        view.activity, view.doing = "idle", ""
        view.queue = max(0, view.queue - 1)
        change.agents.add(e.agent)

    def _on_inbox_queued(self, e: Any, change: Change) -> None:
        view = self.view(e.agent)
        view.queue += 1
        if view.activity == "idle":
            view.activity, view.doing = "queued", f"{e.kind} from {e.sender}"
        change.agents.add(e.agent)

    def _on_agent_state(self, e: Any, change: Change) -> None:
        view = self.view(e.agent)
        view.state, view.reason = e.state, e.reason
        view.activity = _activity_of(e.state)
        view.doing = e.reason if e.state in ("failed", "unavailable", "restarting") else ""
        change.agents.add(e.agent)
        if e.state in ("failed", "unavailable"):
            item = Item("note", f"{e.state}: {e.reason}", level="error")
            view.transcript.append(item)
            change.items.append((e.agent, "new", item))
            self._tick(change, e.at, "error", f"{e.agent} {e.state}: {e.reason}")
        elif e.state in ("restarting", "starting", "stopped"):
            self._tick(change, e.at, "warning" if e.state == "restarting" else "info",
                       f"{e.agent} {e.state}" + (f": {e.reason}" if e.reason else ""))  # fmt: skip

    def _on_agent_heartbeat(self, e: Any, change: Change) -> None:
        view = self.view(e.agent)
        if view.activity in ("starting", "stopped") and view.state not in ("failed",):
            view.activity = "idle"
            change.agents.add(e.agent)

    def _on_agent_notification(self, e: Any, change: Change) -> None:
        view = self.view(e.agent)
        item = Item("note", e.text, level=e.level)
        view.transcript.append(item)
        change.items.append((e.agent, "new", item))
        self._tick(change, e.at, e.level, f"{e.agent}: {e.text}")

    def _on_cost_updated(self, e: Any, change: Change) -> None:
        view = self.view(e.agent)
        delta = e.spent_today_usd - view.today_usd
        view.today_usd, view.month_usd = e.spent_today_usd, e.spent_month_usd
        self.fleet_today += max(0.0, delta)
        self.fleet_month += max(0.0, delta)
        view.refused = ""
        change.agents.add(e.agent)
        change.costs = True

    def _on_model_failover(self, e: Any, change: Change) -> None:
        to = e.to_model or "nothing left"
        self._tick(
            change, e.at, "warning", f"{e.agent}: {e.from_model} failed ({e.reason}), to {to}"
        )

    def _on_audit_appended(self, e: Any, change: Change) -> None:
        change.audit = True
        if e.action == "llm.refused":
            view = self.view(e.actor)
            view.refused = (
                f"paused (legion resume {'--all' if self.fleet_paused else e.actor})"
                if view.paused
                else self._refusal_reason(view)
            )
            change.agents.add(e.actor)
            change.costs = True
            self._tick(
                change,
                e.at,
                "error",
                f"{e.actor} refused an LLM call on {e.target}: {view.refused}",
            )
        elif e.decision == "deny":
            self._tick(change, e.at, "warning", f"denied: {e.actor} {e.action} {e.target}")

    def _refusal_reason(self, view: AgentView) -> str:
        """The caps that apply and what is spent against them (the audit record says only
        `budget_exceeded`; the gateway's full message goes to the agent)."""
        caps = []
        if view.daily_cap is not None:
            caps.append(f"daily cap ${view.daily_cap:g}, ${view.today_usd:.4f} spent")
        if view.monthly_cap is not None:
            caps.append(f"monthly cap ${view.monthly_cap:g}, ${view.month_usd:.4f} spent")
        if self.fleet_cap is not None:
            caps.append(f"fleet daily cap ${self.fleet_cap:g}, ${self.fleet_today:.4f} spent")
        return "budget: " + ("; ".join(caps) if caps else "no cap known (see the audit log)")

    # --- the kill switch and automation ------------------------------------------------

    def _on_pause_changed(self, e: Any, change: Change) -> None:
        paused = set(e.paused)
        self.fleet_paused = e.fleet
        for name, view in self.agents.items():
            view.set_paused(name in paused)
            change.agents.add(name)
        who = "the whole fleet" if e.target == "*" else e.target
        if e.action == "pause":
            cut = f"; {e.cut} call(s) in flight cut" if e.cut else ""
            why = f" ({e.reason})" if e.reason else ""
            self._tick(change, e.at, "warning", f"{who} paused by {e.by}{why}{cut}")
        else:
            still = f"; still paused: {', '.join(e.paused)}" if e.paused else ""
            self._tick(change, e.at, "info", f"{who} resumed by {e.by}{still}")

    def _on_queue_depth(self, e: Any, change: Change) -> None:
        view = self.view(e.agent)
        view.queue, view.in_progress, view.steers = e.waiting, e.in_progress, e.steers
        if view.activity == "queued" and not (e.waiting or e.in_progress):
            view.activity, view.doing = "idle", ""
        change.agents.add(e.agent)

    def _on_steer_taken(self, e: Any, change: Change) -> None:
        view = self.view(e.agent)
        item = Item("note", f"steer from {e.sender} taken by the running turn", level="info")
        view.transcript.append(item)
        change.items.append((e.agent, "new", item))
        view.steers = max(0, view.steers - 1)
        change.agents.add(e.agent)
        self._tick(change, e.at, "info", f"{e.agent} took a steer from {e.sender}")

    def _on_cron_run(self, e: Any, change: Change) -> None:
        view = self.view(e.agent)
        detail = f": {e.detail}" if e.detail else ""
        if e.status == "dispatched":
            late = f" ({e.lateness_s:.1f} s late)" if e.lateness_s >= 1 else ""
            self._tick(change, e.at, "info", f"cron {e.agent}/{e.name} ran{late}")
        elif e.status == "done":
            return
        else:
            level = "error" if e.status == "failed" else "warning"
            text = {"failed": "failed", "overlap": "skipped (still running)", "missed": "missed"}
            view.last_cron = f"cron {e.name} {text[e.status]}{detail}"
            if e.status == "failed":
                view.cron_failed += 1
            change.agents.add(e.agent)
            self._tick(change, e.at, level, f"cron {e.agent}/{e.name} {text[e.status]}{detail}")

    def _on_wake_checked(self, e: Any, change: Change) -> None:
        if e.outcome == "dispatched":
            self._tick(change, e.at, "info", f"{e.agent} woke: {e.findings} finding(s)")

    def _on_webhook_received(self, e: Any, change: Change) -> None:
        job = f" (job {e.job})" if e.job else ""
        if e.status == "accepted":
            self._tick(change, e.at, "info", f"webhook {e.hook} -> {e.agent}{job}")
        else:
            why = f": {e.reason}" if e.reason else ""
            self._tick(change, e.at, "warning", f"webhook {e.hook} refused{why}")

    def _on_inbox_refused(self, e: Any, change: Change) -> None:
        self._tick(change, e.at, "warning", f"{e.sender}: inboxes full ({', '.join(e.full)})")

    def _on_blackboard_changed(self, e: Any, change: Change) -> None:
        change.blackboard = True

    def _on_claim_changed(self, e: Any, change: Change) -> None:
        change.blackboard = True

    def _on_events_lagged(self, e: Any, change: Change) -> None:
        self.lagged += e.missed
        self._tick(change, e.at, "warning", f"the TUI fell behind: {e.missed} events missed")

    def _on_host_stopping(self, e: Any, change: Change) -> None:
        change.host_stopping = True
        self._tick(change, e.at, "warning", f"host stopping: {e.reason}")

    def _on_host_started(self, e: Any, change: Change) -> None:
        self._tick(change, e.at, "info", f"host started (pid {e.pid})")

    def busy(self) -> list[str]:
        """Agents in the middle of something (quitting an embedded host interrupts them)."""
        return sorted(
            a.name
            for a in self.agents.values()
            if a.activity in ("thinking", "tool", "queued") or a.in_progress
        )
