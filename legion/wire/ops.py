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
