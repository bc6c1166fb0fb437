"""Bodies of the operator's read-outs on the control socket: spend, audit, config, vault, claims.

What the TUI (and any client of the control socket) shows beside the live event stream.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from legion.wire.api import Claim


class AgentSpend(BaseModel):
    agent: str
    today_usd: float = Field(description="Settled spend in the current UTC day.")
    month_usd: float = Field(description="Settled spend in the current UTC month.")
    reserved_usd: float = Field(description="Held by calls in flight (today's window).")
    daily_cap_usd: float | None
    monthly_cap_usd: float | None


class CostReport(BaseModel):
    at: float = Field(description="Host time of the report.")
    fleet_today_usd: float
    fleet_month_usd: float
    fleet_daily_cap_usd: float | None
    agents: list[AgentSpend]


class AuditEntry(BaseModel):
    seq: int
    ts: float
    actor: str
    action: str
    target: str
    decision: Literal["allow", "deny"]
    detail: dict[str, Any]


class AuditPage(BaseModel):
    records: list[AuditEntry] = Field(description="Oldest first; the newest `limit` that match.")


class AuditVerdict(BaseModel):
    ok: bool
    checked: int = Field(description="Records whose hash chain holds.")
    head_hash: str = Field(description="Hash of the last good record (anchor it elsewhere).")
    bad_seq: int | None = None
    reason: str | None = None


class ConfigCheck(BaseModel):
    ok: bool
    file: str
    problems: list[str] = Field(description="Each names the line or key and the fix.")
    agents: list[str]


class VaultEntry(BaseModel):
    """A credential's metadata; its value never leaves the vault."""

    name: str
    tier: str
    bound_hosts: list[str]
    created_at: float
    updated_at: float
    last_used_at: float | None


class VaultList(BaseModel):
    entries: list[VaultEntry]


class ClaimList(BaseModel):
    claims: list[Claim]


class ModelStatus(BaseModel):
    """One model alias as the operator sees it (`legion models ls`): never a credential's
    value, only whether it is stored."""

    alias: str
    model: str = Field(description="The LiteLLM model id, `<provider>/<model>`.")
    provider: str
    api_base: str | None
    credential: str | None = Field(description="The vault credential holding its key.")
    credential_state: Literal["stored", "missing", "wrong tier", "not needed", "unknown"]
    input_per_mtok: float | None = Field(description="USD per million prompt tokens.")
    output_per_mtok: float | None = Field(description="USD per million completion tokens.")
    price_source: Literal["config", "litellm"] | None = Field(
        description="Where the price comes from; null: none known (the gateway refuses it)."
    )
    failover: list[str]
    used_by: list[str] = Field(description="Agents that can reach it (failover included).")
    cooldown_s: float | None = Field(
        description="Seconds it stays out of rotation after failures; null: no host runs."
    )
    failures: int = Field(description="Consecutive failures (0 after a success).")
    last_failure: str = Field(description="Kind of the last failure: rate_limit, auth, ...")


class ModelReport(BaseModel):
    models: list[ModelStatus]
