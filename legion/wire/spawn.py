"""Sub-agents: what an agent with `can_spawn` asks for, and what the host answers."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SpawnRequest(BaseModel):
    """`POST /v1/agents/spawn`: start an ephemeral sub-agent for one task."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    role: str = Field(min_length=1, max_length=200, description="What the sub-agent is.")
    task: str = Field(min_length=1, max_length=32_000, description="Its task, self-contained.")
    model: str | None = Field(
        default=None, max_length=128, description="A model alias the parent may use."
    )
    ttl_s: float | None = Field(
        default=None, gt=0, le=86400, description="Seconds before it is stopped and removed."
    )
    budget_usd: float | None = Field(
        default=None, ge=0, le=1_000_000, description="USD carved out of the parent's budget."
    )


class SpawnResult(BaseModel):
    agent: str = Field(description="The sub-agent's name.")
    parent: str
    item_id: int = Field(description="The task's inbox item; its result answers it.")
    model: str
    ttl_s: float
    expires_at: float
    budget_usd: float
