"""Typed host events, streamed to the TUI and to `legion` CLI clients."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter

from legion.wire.agent import TurnError


class _Event(BaseModel):
    at: float = Field(description="Unix time the host emitted the event.")


class BlackboardChanged(_Event):
    type: Literal["blackboard_changed"] = "blackboard_changed"
    seq: int
    op: Literal["put", "delete", "expired"]
    key: str
    version: int
    writer: str


class ClaimChanged(_Event):
    type: Literal["claim_changed"] = "claim_changed"
    key: str
    owner: str
    op: Literal["claimed", "released", "expired"]


class InboxQueued(_Event):
    type: Literal["inbox_queued"] = "inbox_queued"
    agent: str
    item_id: int
    kind: Literal["message", "topic", "steer"]
    topic: str | None
    sender: str


class InboxRefused(_Event):
    type: Literal["inbox_refused"] = "inbox_refused"
    sender: str
    full: list[str]
    topic: str | None


class AgentHeartbeat(_Event):
    type: Literal["agent_heartbeat"] = "agent_heartbeat"
    agent: str
    status: str


class AuditAppended(_Event):
    type: Literal["audit_appended"] = "audit_appended"
    seq: int
    actor: str
    action: str
    target: str
    decision: Literal["allow", "deny"]


class TokenDelta(_Event):
    """A piece of a model's streamed reply, as it arrives."""

    type: Literal["token_delta"] = "token_delta"
    agent: str
    request_id: str
    text: str


class ToolCallStarted(_Event):
    """A model's reply asked for a tool: its name and arguments (bounded), as the agent got them."""

    type: Literal["tool_call_started"] = "tool_call_started"
    agent: str
    request_id: str
    call_id: str
    name: str
    arguments: str = Field(description="The arguments as JSON text, cut at 4000 characters.")


class ToolCallFinished(_Event):
    """The agent sent the tool's result back to the model (seen in its next request)."""

    type: Literal["tool_call_finished"] = "tool_call_finished"
    agent: str
    call_id: str
    name: str
    result: str = Field(description="The result as the agent sent it, cut at 4000 characters.")


class CostUpdated(_Event):
    type: Literal["cost_updated"] = "cost_updated"
    agent: str
    request_id: str
    model: str
    cost_usd: float
    spent_today_usd: float
    spent_month_usd: float


class ModelFailover(_Event):
    type: Literal["model_failover"] = "model_failover"
    agent: str
    request_id: str
    from_model: str
    to_model: str | None
    reason: str


class OverReservation(_Event):
    """A model call was booked beyond the worst case reserved for it (a provider that
    reported more tokens than the bound, a price change, a lying upstream). The ledger holds
    what the provider reported; the agent's later calls are refused while it is over a cap."""

    type: Literal["over_reservation"] = "over_reservation"
    agent: str
    model: str
    request_id: str
    reserved_usd: float
    cost_usd: float
    over_usd: float
    prompt_tokens: int
    prompt_bound: int
    completion_tokens: int
    max_tokens: int
    status: str
    reason: str


class AgentReply(_Event):
    """An agent answered an inbox item (what `legion chat` and the TUI wait for)."""

    type: Literal["agent_reply"] = "agent_reply"
    agent: str
    in_reply_to: int | None
    to: str | None
    text: str
    kind: Literal["chat", "task_result"]
    result: dict[str, Any] | None = None
    error: TurnError | None = Field(
        default=None, description="Set when the turn failed or was refused; null: answered."
    )


class AgentNotification(_Event):
    type: Literal["agent_notification"] = "agent_notification"
    agent: str
    text: str
    level: Literal["info", "warning", "error"]


class AgentStateChanged(_Event):
    type: Literal["agent_state"] = "agent_state"
    agent: str
    state: Literal["stopped", "starting", "running", "restarting", "failed", "unavailable"]
    reason: str = ""
    restarts_last_hour: int = 0


class HostStarted(_Event):
    type: Literal["host_started"] = "host_started"
    pid: int


class HostStopping(_Event):
    type: Literal["host_stopping"] = "host_stopping"
    reason: str


class EventsLagged(_Event):
    """The subscriber was too slow; `missed` events were not delivered to it."""

    type: Literal["events_lagged"] = "events_lagged"
    missed: int


class CronRunEvent(_Event):
    """A cron job ran (dispatched), finished, was skipped (overlap, missed) or failed."""

    type: Literal["cron_run"] = "cron_run"
    job_id: int
    agent: str
    name: str
    run_id: int | None
    status: Literal["dispatched", "done", "overlap", "missed", "failed"]
    lateness_s: float = 0.0
    detail: str = ""


class WakeChecked(_Event):
    """A wake check ran: it started a turn (`dispatched`) or cost nothing."""

    type: Literal["wake_checked"] = "wake_checked"
    agent: str
    outcome: Literal["dispatched", "nothing", "busy", "pending"]
    findings: int
    skipped_total: int


class QueueDepth(_Event):
    """An agent's lane changed: items waiting, items in progress, steers waiting."""

    type: Literal["queue_depth"] = "queue_depth"
    agent: str
    waiting: int
    in_progress: int
    steers: int


class SteerTaken(_Event):
    """A steer message reached a running turn (between two tool rounds)."""

    type: Literal["steer_taken"] = "steer_taken"
    agent: str
    item_id: int
    sender: str


class WebhookReceived(_Event):
    type: Literal["webhook_received"] = "webhook_received"
    hook: str
    agent: str
    job: str | None
    status: Literal["accepted", "refused"]
    reason: str = ""


class PauseChanged(_Event):
    """The operator paused or resumed LLM dispatch (`legion pause`/`resume`, the TUI's kill
    switch). `paused` lists every configured agent whose calls are refused now."""

    type: Literal["pause_changed"] = "pause_changed"
    action: Literal["pause", "resume"]
    target: str = Field(description="The agent, or `*` for the whole fleet.")
    by: str
    reason: str = ""
    cut: int = Field(default=0, description="Calls in flight that the pause cut.")
    paused: list[str]
    fleet: bool = Field(description="The whole fleet is paused (agents added later too).")


class BrowserStateChanged(_Event):
    """An agent's browser container started, stopped (idle, evicted, by the operator) or failed."""

    type: Literal["browser_state"] = "browser_state"
    agent: str
    state: Literal["starting", "running", "stopped", "failed"]
    reason: str = ""


class BrowserActed(_Event):
    """An agent's browser action finished (the TUI's browser panel shows the last one)."""

    type: Literal["browser_action"] = "browser_action"
    agent: str
    action: str
    url: str
    title: str
    ok: bool
    error: str | None = None


class BrowserHandoff(_Event):
    """A human hand-off: the agent asked for one, the operator opened or ended it, or its
    VNC link expired. The link itself (with its token) is never in an event."""

    type: Literal["browser_handoff"] = "browser_handoff"
    agent: str
    state: Literal["requested", "opened", "done", "expired"]
    reason: str = ""
    url: str = ""


HostEvent = Annotated[
    BlackboardChanged
    | ClaimChanged
    | InboxQueued
    | InboxRefused
    | AgentHeartbeat
    | AuditAppended
    | TokenDelta
    | ToolCallStarted
    | ToolCallFinished
    | CostUpdated
    | ModelFailover
    | OverReservation
    | AgentReply
    | AgentNotification
    | AgentStateChanged
    | HostStarted
    | HostStopping
    | EventsLagged
    | CronRunEvent
    | WakeChecked
    | QueueDepth
    | SteerTaken
    | WebhookReceived
    | PauseChanged
    | BrowserStateChanged
    | BrowserActed
    | BrowserHandoff,
    Field(discriminator="type"),
]

host_event_adapter: TypeAdapter[Any] = TypeAdapter(HostEvent)


def parse_event(data: bytes | str) -> Any:
    """Parse one JSON-encoded host event into its typed model."""
    return host_event_adapter.validate_json(data)
