"""Bodies of the automation routes: cron jobs, webhooks, steering, wake checks.

See docs/automation.md for what each field means to an operator.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

JSONValue = Any
JOB_NAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"
HOOK_NAME = r"^[a-z][a-z0-9-]{0,31}$"
HOST_TOOLS = ("blackboard_write", "publish", "send_message", "notify_user")

MissedPolicy = Literal["skip", "run_once"]
JobState = Literal["active", "paused", "failed"]
RunStatus = Literal["dispatched", "done", "failed"]
RunTrigger = Literal["schedule", "missed", "manual"]
HookMode = Literal["legion", "github", "stripe"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- cron -----------------------------------------------------------------------------


class CronSet(_Strict):
    """A job for the caller (an agent's `cron_set`): what it runs and when."""

    schedule: str = Field(
        max_length=120,
        description="5 cron fields (`0 9 * * 1-5`), an alias (`@daily`), or `every 30m`.",
    )
    timezone: str | None = Field(
        default=None, max_length=64, description="IANA zone; default the host's."
    )
    message: JSONValue = Field(
        default=None, description="Sent to the agent's inbox at each run (message mode)."
    )
    tool: Literal["blackboard_write", "publish", "send_message", "notify_user"] | None = Field(
        default=None, description="Tool mode: the host runs this tool, no model call."
    )
    args: dict[str, JSONValue] = Field(default_factory=dict, description="The tool's arguments.")
    missed: MissedPolicy = Field(
        default="skip", description="A run missed while the host was down: skip, or run once."
    )


class CronJobSpec(CronSet):
    """A job the operator creates for an agent."""

    agent: str = Field(max_length=32)
    name: str = Field(pattern=JOB_NAME)
    paused: bool = False


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


class WebhookCreate(_Strict):
    name: str = Field(pattern=HOOK_NAME)
    agent: str = Field(max_length=32)
    mode: HookMode = "legion"
    secret: str = Field(min_length=16, max_length=256)
    rate_per_min: float | None = Field(default=None, gt=0, le=100_000)
    burst: int | None = Field(default=None, ge=1, le=10_000)


class WebhookRotate(_Strict):
    secret: str = Field(min_length=16, max_length=256)


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
    to: str = Field(max_length=32)
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
