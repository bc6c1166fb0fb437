"""What an agent runtime and the host exchange beyond the generic APIs: replies,
notifications, and the agent's view of itself."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReplyRequest(_Strict):
    """The agent's answer to an inbox item (a chat reply, or a task's structured result)."""

    in_reply_to: int | None = Field(default=None, description="The inbox item id answered.")
    text: str = Field(default="", max_length=1_000_000)
    kind: Literal["chat", "task_result"] = "chat"
    result: dict[str, Any] | None = Field(
        default=None, description="Task mode: {status, output, blackboard_writes}."
    )


class ReplyAccepted(BaseModel):
    in_reply_to: int | None
    delivered_to: str | None = Field(description="Agent whose inbox got the reply, if any.")


class NotifyRequest(_Strict):
    text: str = Field(min_length=1, max_length=10_000)
    level: Literal["info", "warning", "error"] = "info"


class NotifyAccepted(BaseModel):
    ok: bool = True


class BudgetLeft(BaseModel):
    daily_usd: float | None
    monthly_usd: float | None
    fleet_daily_usd: float | None


class SelfStatus(BaseModel):
    """The agent's own configuration and limits, as the host sees them."""

    agent: str
    role: str | None
    team: str | None
    model: str | None
    mode: Literal["chat", "task"]
    system_prompt: str | None
    max_tool_rounds: int
    max_task_steps: int
    permissions: dict[str, Any]
    budget_left: BudgetLeft
    fleet: list[str] = Field(description="Agents this agent may message.")
    schedules: list[str] = Field(
        default_factory=list, description="The agent's active cron jobs, one line each."
    )
