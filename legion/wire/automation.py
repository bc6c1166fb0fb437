"""Bodies of the automation routes: cron jobs, webhooks, steering, wake checks.

Request bodies are strict (`legion.wire.api._Strict`) and state every rule the host
enforces, from `legion.wire.rules`: a job is a message job or one of the host's tools with
that tool's own arguments (a `oneOf`, so a body with both, or neither, is refused by the
schema as by the host); a webhook is generated (`legion`, `github`: the host makes the
secret) or `stripe` (Stripe's signing secret, in Stripe's format).

See docs/automation.md for what each field means to an operator.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, RootModel, Tag, WithJsonSchema

from legion.wire.fields import (
    AgentName,
    BlackboardKey,
    BurstSize,
    CronSchedule,
    HookName,
    JobName,
    JSONNotNull,
    StripeSecret,
    TimeZoneName,
    Topic,
    TtlSeconds,
)

JSONValue = Any
HOST_TOOLS = ("blackboard_write", "publish", "send_message", "notify_user")
# A job's message or tool arguments, as stored: at most this many bytes of JSON (413
# `value_too_large` above: no schema states a size in bytes).
MAX_ACTION_BYTES = 64 * 1024

MissedPolicy = Literal["skip", "run_once"]
JobState = Literal["active", "paused", "failed"]
RunStatus = Literal["dispatched", "done", "failed"]
RunTrigger = Literal["schedule", "missed", "manual"]
HookMode = Literal["legion", "github", "stripe"]


class _Strict(BaseModel):
    """A request body: unknown fields refused, strict types, finite numbers."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


# --- cron -----------------------------------------------------------------------------


class _When(_Strict):
    schedule: CronSchedule
    timezone: TimeZoneName | None = Field(
        default=None, description="IANA zone; default [automation] timezone, else the host's."
    )
    missed: MissedPolicy = Field(
        default="skip", description="A run missed while the host was down: skip, or run once."
    )


class MessageJob(_When):
    """At each run, `message` goes to the agent's inbox (a turn of the agent)."""

    message: JSONNotNull = Field(description="Sent to the agent at each run (text or JSON).")
    args: Annotated[
        dict[str, Any],
        Field(max_length=0),
        WithJsonSchema({"type": "object", "properties": {}, "additionalProperties": False}),
    ] = Field(default_factory=dict, description="Always empty: args go with a tool.")


class BlackboardWriteArgs(_Strict):
    key: BlackboardKey
    value: JSONNotNull
    ttl_s: TtlSeconds | None = Field(default=None, description="Expire after this many seconds.")


class PublishArgs(_Strict):
    topic: Topic
    payload: JSONNotNull


class SendMessageArgs(_Strict):
    to: AgentName
    payload: JSONNotNull


class NotifyUserArgs(_Strict):
    text: str = Field(min_length=1, max_length=10_000)
    level: Literal["info", "warning", "error"] = "info"


TOOL_ARGS: dict[str, type[_Strict]] = {
    "blackboard_write": BlackboardWriteArgs,
    "publish": PublishArgs,
    "send_message": SendMessageArgs,
    "notify_user": NotifyUserArgs,
}


class BlackboardWriteJob(_When):
    """Tool mode: the host writes a blackboard key as the agent, with no model call."""

    tool: Literal["blackboard_write"]
    args: BlackboardWriteArgs


class PublishJob(_When):
    """Tool mode: the host publishes on a topic as the agent."""

    tool: Literal["publish"]
    args: PublishArgs


class SendMessageJob(_When):
    """Tool mode: the host sends a message as the agent."""

    tool: Literal["send_message"]
    args: SendMessageArgs


class NotifyUserJob(_When):
    """Tool mode: the host notifies the operator for the agent."""

    tool: Literal["notify_user"]
    args: NotifyUserArgs


def _job_kind(value: Any) -> str:
    """Which job a body is: its `tool` (any string, so a wrong one is named), or message."""
    tool = value.get("tool") if isinstance(value, dict) else getattr(value, "tool", None)
    return "message" if tool is None else str(tool)[:64]


AnyJob = MessageJob | BlackboardWriteJob | PublishJob | SendMessageJob | NotifyUserJob


class CronSet(RootModel[Any]):
    """A job for the caller (an agent's `cron_set`): what it runs and when."""

    root: Annotated[
        Annotated[MessageJob, Tag("message")]
        | Annotated[BlackboardWriteJob, Tag("blackboard_write")]
        | Annotated[PublishJob, Tag("publish")]
        | Annotated[SendMessageJob, Tag("send_message")]
        | Annotated[NotifyUserJob, Tag("notify_user")],
        Discriminator(_job_kind),
    ]


class _Operator(_Strict):
    agent: AgentName
    name: JobName
    paused: bool = Field(default=False, description="Create it paused.")


class MessageJobSpec(MessageJob, _Operator):
    pass


class BlackboardWriteJobSpec(BlackboardWriteJob, _Operator):
    pass


class PublishJobSpec(PublishJob, _Operator):
    pass


class SendMessageJobSpec(SendMessageJob, _Operator):
    pass


class NotifyUserJobSpec(NotifyUserJob, _Operator):
    pass


AnyJobSpec = (
    MessageJobSpec
    | BlackboardWriteJobSpec
    | PublishJobSpec
    | SendMessageJobSpec
    | NotifyUserJobSpec
)


class CronJobSpec(RootModel[Any]):
    """A job the operator creates for an agent."""

    root: Annotated[
        Annotated[MessageJobSpec, Tag("message")]
        | Annotated[BlackboardWriteJobSpec, Tag("blackboard_write")]
        | Annotated[PublishJobSpec, Tag("publish")]
        | Annotated[SendMessageJobSpec, Tag("send_message")]
        | Annotated[NotifyUserJobSpec, Tag("notify_user")],
        Discriminator(_job_kind),
    ]


def job_action(job: AnyJob) -> dict[str, Any]:
    """What a job runs, as stored: `{"message": ...}` or `{"tool": ..., "args": {...}}`."""
    if isinstance(job, MessageJob):
        return {"message": job.message}
    args = job.args.model_dump(mode="json", exclude_none=True)
    return {"tool": job.tool, "args": args}


class CronJob(BaseModel):
    id: int
    agent: str
    name: str
    schedule: str
    kind: Literal["cron", "every"]
    timezone: str
    mode: Literal["message", "tool"]
    message: JSONValue = None
    tool: str | None = None
    args: dict[str, JSONValue] = Field(default_factory=dict)
    missed: MissedPolicy
    state: JobState
    reason: str = Field(description="Why the job failed (state failed), else empty.")
    created_by: str
    created_at: float
    next_run_at: float | None
    last_run_at: float | None
    running: bool = Field(description="Its last run's inbox item is not handled yet.")
    runs: int
    overlaps: int = Field(description="Runs skipped because the previous one was still going.")
    missed_runs: int = Field(description="Runs missed while the host was down (or skipped).")
    failures: int


class CronJobList(BaseModel):
    jobs: list[CronJob]


class CronRun(BaseModel):
    id: int
    job_id: int
    slot: float = Field(description="The time the run was due (Unix seconds).")
    trigger: RunTrigger
    started_at: float
    status: RunStatus
    item_id: int | None
    detail: str
    finished_at: float | None


class CronRunList(BaseModel):
    runs: list[CronRun]


class CronRemoved(BaseModel):
    id: int
    removed: bool


# --- webhooks -------------------------------------------------------------------------


class _Hook(_Strict):
    name: HookName
    agent: AgentName
    rate_per_min: float | None = Field(
        default=None, gt=0, le=100_000, description="Default [automation.webhooks] rate_per_min."
    )
    burst: BurstSize | None = Field(
        default=None, description="Default [automation.webhooks] burst."
    )


class GeneratedHook(_Hook):
    """A hook whose secret the host generates (returned once, in the answer)."""

    mode: Literal["legion", "github"] = "legion"


class StripeHook(_Hook):
    """A hook Stripe calls: its secret is the endpoint's signing secret Stripe shows."""

    mode: Literal["stripe"]
    secret: StripeSecret


def _hook_kind(value: Any) -> str:
    mode = value.get("mode") if isinstance(value, dict) else getattr(value, "mode", None)
    return "stripe" if mode == "stripe" else "generated"


class WebhookCreate(RootModel[Any]):
    root: Annotated[
        Annotated[GeneratedHook, Tag("generated")] | Annotated[StripeHook, Tag("stripe")],
        Discriminator(_hook_kind),
    ]


class WebhookRotate(_Strict):
    """A `stripe` hook takes Stripe's new signing secret; a generated one takes nothing
    (the host makes a new secret)."""

    secret: StripeSecret | None = None


class WebhookInfo(BaseModel):
    name: str
    agent: str
    mode: HookMode
    url: str | None = Field(description="Where to send deliveries (null: listener disabled).")
    rate_per_min: float
    burst: int
    created_at: float
    rotated_at: float | None
    deliveries: int
    refused: int
    last_delivery_at: float | None


class WebhookSecret(WebhookInfo):
    """A hook just added or rotated. `secret` is the one the host generated (`legion`,
    `github`), shown this once and never again (the vault keeps it; every other answer of
    the control socket masks it); null for `stripe`, whose secret the operator gave."""

    secret: str | None


class WebhookList(BaseModel):
    listener: str | None = Field(description="The listener's base URL, or null when disabled.")
    hooks: list[WebhookInfo]


class WebhookRemoved(BaseModel):
    name: str
    removed: bool


class WebhookAccepted(BaseModel):
    job: str
    status: Literal["queued"] = "queued"
    result_url: str


class WebhookJob(BaseModel):
    job: str
    hook: str
    agent: str
    status: Literal["queued", "running", "done", "failed"]
    received_at: float
    finished_at: float | None
    result: dict[str, JSONValue] | None = Field(
        default=None, description="The agent's answer: text, kind and result."
    )


# --- lanes ----------------------------------------------------------------------------


class SteerRequest(_Strict):
    to: AgentName
    text: str = Field(min_length=1, max_length=16 * 1024)


class SteerQueued(BaseModel):
    to: str
    item_id: int


# --- wake checks ----------------------------------------------------------------------


class WakeStatus(BaseModel):
    interval_s: float
    checks: int = Field(description="Wake checks run since the host started.")
    skipped: int = Field(description="Checks that found nothing (or found the agent busy).")
    dispatched: int = Field(description="Checks that found something and started a turn.")
    last_check_at: float | None
    last_outcome: str
    heartbeat: str = Field(description="HEARTBEAT.md: absent, read (N rules) or why refused.")
    rule_errors: list[str] = Field(default_factory=list)
