"""Request and response bodies of the agent socket and the control socket."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from legion.wire.automation import WakeStatus

JSONValue = Any


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- blackboard -------------------------------------------------------------


class BlackboardEntry(BaseModel):
    """One blackboard key as stored: value, version and who wrote it when."""

    key: str
    value: JSONValue
    version: int = Field(description="Bumped by every write; starts at 1.")
    writer: str = Field(description="Agent (or `operator`) that wrote this version.")
    updated_at: float = Field(description="Unix time of the write.")
    expires_at: float | None = Field(default=None, description="Unix time the entry expires.")


class BlackboardPut(_Strict):
    value: JSONValue
    ttl_s: float | None = Field(default=None, gt=0, description="Expire after this many seconds.")


class BlackboardCas(_Strict):
    key: str
    expected_version: int = Field(ge=0, description="0 means the key must not exist yet.")
    value: JSONValue
    ttl_s: float | None = Field(default=None, gt=0)


class BlackboardList(BaseModel):
    entries: list[BlackboardEntry]


class BlackboardDeleted(BaseModel):
    key: str
    deleted: bool


class ClaimRequest(_Strict):
    key: str
    ttl_s: float = Field(default=300.0, gt=0, le=86400, description="Claim lease length.")


class ReleaseRequest(_Strict):
    key: str


class Claim(BaseModel):
    key: str
    owner: str
    expires_at: float


class Released(BaseModel):
    key: str
    released: bool


class WatchRequest(_Strict):
    pattern: str = Field(
        description="Glob over keys: `*` stays within a segment, `**` crosses `/`."
    )
    cursor: int | None = Field(
        default=None, ge=0, description="Last cursor seen; omit to start from now."
    )
    wait_s: float = Field(default=0.0, ge=0, le=30, description="Long-poll up to this long.")


class BlackboardChange(BaseModel):
    seq: int
    op: Literal["put", "delete", "expired"]
    key: str
    version: int
    writer: str
    value: JSONValue = None
    at: float


class WatchResponse(BaseModel):
    cursor: int = Field(description="Pass back as `cursor` to continue after these changes.")
    changes: list[BlackboardChange]
    reset: bool = Field(
        default=False,
        description="True when changes older than the host keeps were missed; re-list to resync.",
    )


# --- pub/sub, messages, inboxes ---------------------------------------------


class PublishRequest(_Strict):
    topic: str
    payload: JSONValue


class Published(BaseModel):
    topic: str
    delivered_to: list[str]


class SubscribeRequest(_Strict):
    topic: str = Field(description="Topic or topic glob, e.g. `news/*`.")


class Subscriptions(BaseModel):
    topics: list[str]


class MessageRequest(_Strict):
    to: str
    payload: JSONValue


class MessageQueued(BaseModel):
    to: str
    item_id: int


class InboxItem(BaseModel):
    id: int
    kind: Literal["message", "topic", "steer"]
    topic: str | None
    sender: str
    payload: JSONValue
    created_at: float
    deliveries: int = Field(description="How many times this item has been handed out.")


class PollRequest(_Strict):
    ack: list[int] = Field(
        default_factory=list, max_length=1000, description="Ack these (handled) items first."
    )
    max_items: int = Field(default=10, ge=1, le=100)
    wait_s: float = Field(default=0.0, ge=0, le=30, description="Long-poll up to this long.")


class PollResponse(BaseModel):
    items: list[InboxItem]


class AckRequest(_Strict):
    ids: list[int] = Field(min_length=1, max_length=1000)


class AckResponse(BaseModel):
    acked: int


class HeartbeatRequest(_Strict):
    status: str = Field(default="ok", max_length=200)


class HeartbeatResponse(BaseModel):
    agent: str
    at: float


class Identity(BaseModel):
    """Who the host believes the caller is (from the socket, never from the request)."""

    agent: str
    role: str | None
    team: str | None


# --- control socket -----------------------------------------------------------


class AgentStatus(BaseModel):
    name: str
    role: str | None
    team: str | None
    model: str | None
    socket: str
    inbox_depth: int
    last_heartbeat: float | None
    queue_depth: int = Field(default=0, description="Items waiting in its lane (not taken).")
    in_progress: int = Field(default=0, description="Items taken by its runtime, not acked.")
    steers_waiting: int = Field(default=0, description="Steer messages not taken yet.")
    cron_jobs: int = 0
    cron_failed: int = 0
    wake: WakeStatus | None = Field(default=None, description="Wake checks, when enabled.")


class HostStatus(BaseModel):
    pid: int
    version: str
    home: str
    started_at: float
    uptime_s: float
    agents: list[AgentStatus]


class StopResponse(BaseModel):
    stopping: bool


# --- LLM gateway (OpenAI-compatible) --------------------------------------------


class ChatRequest(BaseModel):
    """An OpenAI chat completion request; parameters legion does not use pass through."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[dict[str, Any]] | None = None


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    input: str | list[str] = Field(min_length=1)


# --- fleet (control socket) ----------------------------------------------------


class AgentInfo(BaseModel):
    name: str
    state: str = Field(description="stopped, starting, running, restarting, failed, unavailable")
    reason: str
    role: str | None
    team: str | None
    model: str | None
    mode: str
    container_id: str | None
    restarts_last_hour: int
    last_seen: float | None
    inbox_depth: int


class AgentList(BaseModel):
    runtime: str | None = Field(description="The runtime backend, or null when none runs.")
    agents: list[AgentInfo]


class ReloadResult(BaseModel):
    """What a config reload did, and what it could not do without a restart."""

    file: str = Field(default="", description="The config file that was read.")
    added: list[str] = Field(description="Agents added (socket opened, started if autostart).")
    removed: list[str] = Field(description="Agents removed (container stopped, socket closed).")
    changed: list[str] = Field(
        default_factory=list,
        description="Dotted keys whose value changed, besides the agents added or removed.",
    )
    restart_needed: list[str] = Field(
        description="Changed keys the host applies only when it restarts (`[host]`, "
        "`runtime.backend`, `runtime.agent_uid`)."
    )
    agents_to_restart: list[str] = Field(
        default_factory=list,
        description="Running agents whose container settings changed: the change applies "
        "when the agent restarts (`legion agents restart NAME`).",
    )


class PurgeResult(BaseModel):
    agent: str
    inbox_items_deleted: int
    volume_removed: bool = Field(
        default=False, description="Whether the agent's volume (agents/NAME) was deleted."
    )
