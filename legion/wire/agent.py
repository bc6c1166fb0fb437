"""What an agent runtime and the host exchange beyond the generic APIs: replies,
notifications, and the agent's view of itself."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from legion.wire.fields import InboxId
from legion.wire.mcp import McpStdioSpec


class _Strict(BaseModel):
    """A request body: unknown fields refused, strict types, finite numbers."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ReplyRequest(_Strict):
    """The agent's answer to an inbox item (a chat reply, or a task's structured result)."""

    in_reply_to: InboxId | None = Field(default=None, description="The inbox item id answered.")
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


class LoopDetection(BaseModel):
    """Thresholds of the runtime's loop detection over identical tool calls in one turn."""

    warn_at: int = Field(default=2, ge=2, le=1000)
    block_at: int = Field(default=4, ge=2, le=1000)
    stop_at: int = Field(default=9, ge=2, le=1000)
    window: int = Field(default=30, ge=2, le=10000)


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
    embedding_model: str | None = Field(
        default=None, description="Model alias for memory embeddings; none: keyword-only memory."
    )
    loop_detection: LoopDetection = Field(default_factory=LoopDetection)
    mcp_stdio: list[McpStdioSpec] = Field(
        default_factory=list, description="Local MCP servers the runtime runs in the container."
    )
    mcp_remote: list[str] = Field(
        default_factory=list,
        description="Remote MCP servers the agent may use (tools: GET /v1/mcp/servers).",
    )
    parent: str | None = Field(
        default=None, description="The agent that spawned this one (a sub-agent), if any."
    )
    expires_at: float | None = Field(
        default=None, description="A sub-agent: when its time to live runs out (Unix time)."
    )


# --- the agent's mind: workspace files, loop detection (docs/agent-runtime.md) ---------

# Size caps (bytes of UTF-8) of the files that make up an agent's bootstrap prompt. The host
# refuses a write over a cap; the runtime never reads past one. SOUL.md and INSTRUCTIONS.md
# belong to the operator (`legion agents edit`); the agent edits the other three through its
# `update_workspace` tool, and every change is kept as a version the operator can restore.
WORKSPACE_FILE_CAPS: dict[str, int] = {
    "SOUL.md": 8 * 1024,
    "INSTRUCTIONS.md": 16 * 1024,
    "USER.md": 8 * 1024,
    "MEMORY.md": 16 * 1024,
    "HEARTBEAT.md": 4 * 1024,
}
IDENTITY_FILES: tuple[str, ...] = ("SOUL.md", "INSTRUCTIONS.md")
AGENT_EDITABLE_FILES: tuple[str, ...] = ("USER.md", "MEMORY.md", "HEARTBEAT.md")

AgentEditableFile = Literal["USER.md", "MEMORY.md", "HEARTBEAT.md"]


class WorkspaceUpdate(_Strict):
    """`PUT /v1/workspace/{file}`: replace or append to one of the agent-editable files."""

    content: str = Field(max_length=64 * 1024)
    mode: Literal["replace", "append"] = "replace"


class WorkspaceVersion(BaseModel):
    """One kept version of a workspace file (its content is fetched separately)."""

    file: str
    version: int = Field(ge=1)
    at: float
    by: str = Field(description="operator, the agent's name, or host")
    bytes: int = Field(ge=0)
    sha256: str
    note: str = ""


class WorkspaceUpdated(BaseModel):
    file: str
    version: int = Field(ge=1)
    bytes: int = Field(ge=0)
    cap: int = Field(ge=1)
