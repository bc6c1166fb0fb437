"""The operator's read-outs: spend against caps, the audit log and its verification, the config
check, vault metadata and blackboard claims.

Each is one function of the host, served on the control socket by `build_operator_routes` and
called directly by the in-process `HostClient`, so both transports answer the same.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from legion.api.http import Call, Router
from legion.errors import BadRequest, NotFound
from legion.wire.api import Claim
from legion.wire.dispatch import PauseAgent, PausedAgent, PauseRequest, PauseState
from legion.wire.ops import (
    AgentSpend,
    AuditEntry,
    AuditPage,
    AuditVerdict,
    ClaimList,
    ConfigCheck,
    CostReport,
    ModelReport,
    ModelStatus,
    VaultEntry,
    VaultList,
)

if TYPE_CHECKING:
    from legion.host import Host

MAX_AUDIT_PAGE = 5000


def cost_report(host: Host) -> CostReport:
    """Spend today and this month per agent (and fleet-wide) against the configured caps."""
    from legion.gateway.llm.budget import day_key, month_key

    now = host.clock()
    day, month = day_key(now), month_key(now)
    budgets = host.budgets
    names = sorted(set(host.config.agents) | {a for a, _ in budgets.spent if a != "*"})
    agents = []
    for name in names:
        cfg = host.config.agents.get(name)
        agents.append(
            AgentSpend(
                agent=name,
                today_usd=budgets.spent.get((name, day), 0.0),
                month_usd=budgets.spent.get((name, month), 0.0),
                reserved_usd=budgets.reserved.get((name, day), 0.0),
                daily_cap_usd=cfg.budget.daily_usd if cfg else None,
                monthly_cap_usd=cfg.budget.monthly_usd if cfg else None,
            )
        )
    return CostReport(
        at=now,
        fleet_today_usd=budgets.spent.get(("*", day), 0.0),
        fleet_month_usd=sum(a.month_usd for a in agents),
        fleet_daily_cap_usd=host.config.llm.fleet_daily_usd,
        agents=agents,
    )


def audit_page(
    host: Host,
    *,
    actor: str | None = None,
    decision: str | None = None,
    limit: int = 200,
) -> AuditPage:
    from legion.mesh.audit import query

    if decision not in (None, "allow", "deny"):
        raise BadRequest(f"decision must be allow or deny, not {decision!r}", code="bad_filter")
    if not 1 <= limit <= MAX_AUDIT_PAGE:
        raise BadRequest(f"limit must be 1..{MAX_AUDIT_PAGE}", code="bad_filter")
    records = query(host.store.conn, actor=actor, decision=decision, limit=limit)
    return AuditPage(
        records=[
            AuditEntry(
                seq=r.seq,
                ts=r.ts,
                actor=r.actor,
                action=r.action,
                target=r.target,
                decision="deny" if r.decision == "deny" else "allow",
                detail=r.detail,
            )
            for r in records
        ]
    )


def _verify_file(db_path: Path) -> AuditVerdict:
    from legion.mesh.audit import verify
    from legion.store import connect

    db = connect(db_path, readonly=True)
    try:
        result = verify(db.connection())  # type: ignore[no-untyped-call]
    finally:
        db.close()
    return AuditVerdict(
        ok=result.ok,
        checked=result.checked,
        head_hash=result.head_hash,
        bad_seq=result.bad_seq,
        reason=result.reason,
    )


async def audit_verdict(host: Host) -> AuditVerdict:
    """Walk the whole hash chain on its own read-only connection, off the event loop."""
    return await asyncio.to_thread(_verify_file, host.paths.host_db)


def _check_file(path: Path) -> ConfigCheck:
    from legion.config import parse_config
    from legion.errors import ConfigError

    if not path.exists():
        return ConfigCheck(ok=True, file=str(path), problems=[], agents=[])
    try:
        config = parse_config(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError) as exc:
        return ConfigCheck(
            ok=False, file=str(path), problems=[f"{path}: cannot read: {exc}"], agents=[]
        )
    except ConfigError as exc:
        return ConfigCheck(ok=False, file=str(path), problems=exc.problems, agents=[])
    return ConfigCheck(ok=True, file=str(path), problems=[], agents=sorted(config.agents))


async def config_check(host: Host) -> ConfigCheck:
    """Validate legion.toml as it is on disk now (what a reload would apply)."""
    return await asyncio.to_thread(_check_file, host.paths.config)


def vault_list(host: Host) -> VaultList:
    return VaultList(
        entries=[
            VaultEntry(
                name=i.name,
                tier=i.tier,
                bound_hosts=list(i.bound_hosts),
                created_at=i.created_at,
                updated_at=i.updated_at,
                last_used_at=i.last_used_at,
            )
            for i in host.vault.infos()
        ]
    )


def claim_list(host: Host) -> ClaimList:
    now = host.clock()
    rows = host.store.execute(
        "SELECT key, owner, expires_at FROM claims WHERE expires_at > ? ORDER BY key", (now,)
    )
    return ClaimList(claims=[Claim(key=k, owner=o, expires_at=e) for k, o, e in rows])


def model_report(host: Host) -> ModelReport:
    """Every model alias: provider, price, credential (stored or not), reach, cooldown."""
    from legion.gateway.llm.catalog import model_rows

    stored: dict[str, str] = {i.name: str(i.tier) for i in host.vault.infos()}
    rows = model_rows(host.config, stored, health=host.health)
    return ModelReport(models=[ModelStatus.model_validate(r.as_dict()) for r in rows])


def pause_state(host: Host, cut: int = 0) -> PauseState:
    from legion.gateway.llm.inflight import PAUSE_ALL

    dispatch = host.gateway.inflight
    return PauseState(
        fleet=PAUSE_ALL in dispatch.pauses,
        paused=dispatch.paused_agents(),
        pauses=[
            PausedAgent(agent=p.target, since=p.since, by=p.by, reason=p.reason)
            for p in sorted(dispatch.pauses.values(), key=lambda p: p.target)
        ],
        cut=cut,
        in_flight=dispatch.in_flight(),
    )


def _pause_target(host: Host, body: PauseRequest, *, resuming: bool) -> str:
    """`*` for the fleet, else the agent (configured, or at least paused when resuming)."""
    from legion.gateway.llm.inflight import PAUSE_ALL

    request = body.root
    if not isinstance(request, PauseAgent):
        return PAUSE_ALL
    known = request.agent in host.config.agents or (
        resuming and request.agent in host.gateway.inflight.pauses
    )
    if not known:
        raise NotFound(
            f"no agent named {request.agent!r}; `legion agents ls` lists them",
            code="unknown_agent",
            agent=request.agent,
        )
    return request.agent


def build_operator_routes(router: Router, host: Host) -> None:
    @router.route("GET", "/v1/pause", response=PauseState)
    async def paused(call: Call) -> PauseState:
        """Which agents' LLM calls are paused (the kill switch), and the calls in flight."""
        return pause_state(host)

    @router.route("POST", "/v1/pause", body=PauseRequest, response=PauseState)
    async def pause(call: Call) -> PauseState:
        """Pause LLM dispatch of one agent or the whole fleet: calls in flight are cut and
        settled for what they produced; new ones are refused (423 `agent_paused`) until
        resumed. Kept across host restarts."""
        body: PauseRequest = call.body
        target = _pause_target(host, body, resuming=False)
        cut = host.gateway.inflight.pause(target, by=call.principal, reason=body.root.reason)
        return pause_state(host, cut)

    @router.route("POST", "/v1/resume", body=PauseRequest, response=PauseState)
    async def resume(call: Call) -> PauseState:
        """Resume LLM dispatch of one agent, or of the whole fleet (every pause lifted)."""
        body: PauseRequest = call.body
        target = _pause_target(host, body, resuming=True)
        host.gateway.inflight.resume(target, by=call.principal)
        return pause_state(host)

    @router.route("GET", "/v1/llm/models", response=ModelReport)
    async def llm_models(call: Call) -> ModelReport:
        """The model aliases with provider, price, credential state, reach and cooldown."""
        return model_report(host)

    @router.route("GET", "/v1/costs", response=CostReport)
    async def costs(call: Call) -> CostReport:
        """Spend today and this month, per agent and fleet-wide, against the caps."""
        return cost_report(host)

    @router.route("GET", "/v1/audit", response=AuditPage)
    async def audit(call: Call) -> AuditPage:
        """The newest audit records (`?actor=`, `?decision=allow|deny`, `?limit=`)."""
        query = call.request.query
        try:
            limit = int(query.get("limit", "200"))
        except ValueError:
            raise BadRequest("limit must be a whole number", code="bad_filter") from None
        return audit_page(
            host,
            actor=query.get("actor") or None,
            decision=query.get("decision") or None,
            limit=limit,
        )

    @router.route("GET", "/v1/audit/verify", response=AuditVerdict)
    async def verify(call: Call) -> AuditVerdict:
        """Check the audit log's hash chain; names the first bad record."""
        return await audit_verdict(host)

    @router.route("GET", "/v1/config/check", response=ConfigCheck)
    async def check(call: Call) -> ConfigCheck:
        """Validate legion.toml on disk (what `POST /v1/config/reload` would apply)."""
        return await config_check(host)

    @router.route("GET", "/v1/vault", response=VaultList)
    async def vault(call: Call) -> VaultList:
        """Credential names, tiers and bound hosts (never a value)."""
        return vault_list(host)

    @router.route("GET", "/v1/blackboard/claims", response=ClaimList)
    async def claims(call: Call) -> ClaimList:
        """Live claims on blackboard keys, with owner and expiry."""
        return claim_list(host)
