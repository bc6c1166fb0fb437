"""Request and response bodies of the agent socket and the control socket."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from legion.wire.automation import WakeStatus
from legion.wire.fields import (
    AgentName,
    BlackboardKey,
    Cursor,
    Glob,
    InboxId,
    ItemCount,
    TokenCount,
    Topic,
    TtlSeconds,
    Version,
    WaitSeconds,
)

JSONValue = Any


class _Strict(BaseModel):
    """A request body: unknown fields are refused, and types are strict (JSON `true` is not
    1, `"5"` is not 5, a number is finite): the body means exactly what its schema says."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


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
    ttl_s: TtlSeconds | None = Field(default=None, description="Expire after this many seconds.")


class BlackboardCas(_Strict):
    key: BlackboardKey
    expected_version: Version = Field(description="0 means the key must not exist yet.")
    value: JSONValue
    ttl_s: TtlSeconds | None = Field(default=None, description="Expire after this many seconds.")


class BlackboardList(BaseModel):
    entries: list[BlackboardEntry]
    # More readable entries follow than one listing returns (10,000 entries or about 8 MiB
    # of values): list a longer prefix to see them.
    truncated: bool = False


class BlackboardDeleted(BaseModel):
    key: str
    deleted: bool


class ClaimRequest(_Strict):
    key: BlackboardKey
    ttl_s: float = Field(
        default=300.0, gt=0, le=86400, allow_inf_nan=False, description="Claim lease length."
    )


class ReleaseRequest(_Strict):
    key: BlackboardKey


class Claim(BaseModel):
    key: str
    owner: str
    expires_at: float


class Released(BaseModel):
    key: str
    released: bool


class WatchRequest(_Strict):
    pattern: Glob = Field(
        description="Glob over keys: `*` stays within a segment, `**` crosses `/`."
    )
    cursor: Cursor | None = Field(
        default=None, description="Last cursor seen; omit to start from now."
    )
    wait_s: WaitSeconds = Field(
        default=0.0, description="Long-poll up to this long (capped by [host] long_poll_max_s)."
    )


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
    topic: Topic
    payload: JSONValue


class Published(BaseModel):
    topic: str
    delivered_to: list[str]


class SubscribeRequest(_Strict):
    topic: Glob = Field(description="Topic or topic glob, e.g. `news/*`.")


class Subscriptions(BaseModel):
    topics: list[str]


class MessageRequest(_Strict):
    to: AgentName
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
    ack: list[InboxId] = Field(
        default_factory=list, max_length=1000, description="Ack these (handled) items first."
    )
    max_items: ItemCount = 10
    wait_s: WaitSeconds = Field(
        default=0.0, description="Long-poll up to this long (capped by [host] long_poll_max_s)."
    )


class PollResponse(BaseModel):
    items: list[InboxItem]


class AckRequest(_Strict):
    ids: list[InboxId] = Field(min_length=1, max_length=1000)


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
    paused: bool = Field(default=False, description="Its LLM calls are paused (`legion pause`).")


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

    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    model: str | None = None
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = False
    max_tokens: TokenCount | None = None
    max_completion_tokens: TokenCount | None = None
    tools: list[dict[str, Any]] | None = None


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    model: str | None = None
    input: Annotated[str, Field(min_length=1)] | Annotated[list[str], Field(min_length=1)]


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
    paused: bool = Field(default=False, description="Its LLM calls are paused (`legion pause`).")
    parent: str | None = Field(
        default=None, description="The agent that spawned it, for a sub-agent; else null."
    )


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
    removed: list[str] = Field(
        default_factory=list,
        description="Every path deleted: the volume, run/agents/NAME, identity/NAME.",
    )


# --- models (GET /v1/models, OpenAI-compatible) -----------------------------------


class ModelLimits(BaseModel):
    """What legion adds to an OpenAI model entry (clients that do not know it ignore it)."""

    context_window: int = Field(description="Tokens of prompt plus output the model accepts.")
    max_output_tokens: int = Field(description="Most tokens one reply may have.")
    source: Literal["config", "litellm", "default"] = Field(
        description="Where the limits come from: [llm.models.X], LiteLLM's model table, or "
        "the documented defaults."
    )


class ModelInfo(BaseModel):
    id: str = Field(description="The model alias to send as `model`.")
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = Field(description="The provider, from the model's LiteLLM id.")
    legion: ModelLimits


class ModelList(BaseModel):
    """The models this agent may use, its own model first."""

    object: Literal["list"] = "list"
    data: list[ModelInfo]
