"""Per-agent permissions: default deny, every decision audited.

The matrix comes from `[agents.<name>.permissions]` in legion.toml. Pattern lists
use the glob semantics of `legion.mesh.globs`. An agent in a team may also read and
write `teams/<team>/**` on the blackboard. The operator (the control socket) is
allowed everything, and its actions are audited all the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from legion.config import Config
from legion.errors import Forbidden
from legion.mesh.audit import AuditLog
from legion.mesh.globs import any_match

OPERATOR = "operator"


class Perm(StrEnum):
    BB_READ = "blackboard_read"
    BB_WRITE = "blackboard_write"
    MESSAGE = "can_message"
    PUBLISH = "can_publish"
    SUBSCRIBE = "can_subscribe"
    API = "allowed_apis"
    CREDENTIAL = "allowed_credentials"
    CRON = "can_manage_cron"
    SPAWN = "can_spawn"
    STEER = "can_steer"  # target: the agent to steer
    LLM = "llm"  # target: a model alias; the agent's own model or one of allowed_models
    EGRESS = "egress_hosts"
    MCP = "allowed_mcp"  # target: a remote MCP server's name ([mcp.NAME])
    BROWSER = "can_use_browser"  # target: a browser action; browser_actions may narrow it


_FLAGS = {Perm.CRON, Perm.SPAWN}


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


def _literal(pattern: str) -> bool:
    return "*" not in pattern and "?" not in pattern


def _covers(wide: str, narrow: str) -> bool:
    """Whether every name `narrow` matches, `wide` matches too (a sufficient test: `**`,
    or `PREFIX**` with a literal prefix that `narrow` starts with and goes beyond)."""
    if wide == "**":
        return True
    prefix = wide[:-2]
    return (
        wide.endswith("**")
        and _literal(prefix)
        and narrow.startswith(prefix)
        and len(narrow) > len(prefix)
    )


def intersect(own: list[str], bound: list[str]) -> list[str]:
    """Patterns matching only names both lists match: each pattern of one list that a
    pattern of the other covers (the same pattern, a literal name it matches, or a
    narrower glob under its `PREFIX**`). A subset of the true intersection (globs that
    merely overlap are not intersected), so it never grants what either list denies."""
    out = [p for p in own if p in bound or any(_covers(q, p) for q in bound)]
    out += [p for p in bound if any(_covers(q, p) for q in own)]
    out += [p for p in own if _literal(p) and any_match(bound, p)]
    out += [p for p in bound if _literal(p) and any_match(own, p)]
    return list(dict.fromkeys(out))


def _browser_decision(enabled: bool, actions: Sequence[str], action: str) -> Decision:
    if not enabled:
        return Decision(False, "can_use_browser = false")
    if actions and action not in actions:
        return Decision(False, f"browser_actions ({', '.join(actions)}) does not list {action!r}")
    return Decision(True, "can_use_browser = true" + (" (browser_actions)" if actions else ""))


class Permissions:
    def __init__(self, config: Config) -> None:
        self.config = config
        # A spawned agent -> its parent: it may do only what its own matrix and its
        # parent's both allow (legion.fleet.spawn).
        self.bounds: dict[str, str] = {}

    def patterns(self, agent: str, perm: Perm) -> list[str]:
        own = self._patterns(agent, perm)
        parent = self.bounds.get(agent)
        return own if parent is None else intersect(own, self._patterns(parent, perm))

    def _patterns(self, agent: str, perm: Perm) -> list[str]:
        agent_cfg = self.config.agents.get(agent)
        if agent_cfg is None or perm in _FLAGS or perm in (Perm.LLM, Perm.BROWSER):
            return []
        patterns = list(getattr(agent_cfg.permissions, perm.value))
        if agent_cfg.team and perm in (Perm.BB_READ, Perm.BB_WRITE):
            patterns.append(f"teams/{agent_cfg.team}/**")
        return patterns

    def decide(self, agent: str, perm: Perm, target: str = "") -> Decision:
        decision = self._decide(agent, perm, target)
        parent = self.bounds.get(agent)
        if parent is None or not decision.allowed or perm is Perm.LLM:
            return decision  # a sub-agent's model was checked against its parent at spawn
        bound = self._decide(parent, perm, target)
        if bound.allowed:
            return decision
        return Decision(False, f"{agent} was spawned by {parent}, which may not: {bound.reason}")

    def _decide(self, agent: str, perm: Perm, target: str = "") -> Decision:
        if agent == OPERATOR:
            return Decision(True, "operator")
        agent_cfg = self.config.agents.get(agent)
        if agent_cfg is None:
            return Decision(False, f"{agent} is not a configured agent")
        if perm is Perm.LLM:
            own = agent_cfg.model or self.config.llm.default_model
            embedding = agent_cfg.embedding_model or self.config.llm.embedding_model
            if target and (target in (own, embedding) or target in agent_cfg.allowed_models):
                return Decision(True, f"model {target!r} is allowed")
            return Decision(
                False,
                f"model {target!r} is neither {agent}'s model ({own!r}) nor in its allowed_models",
            )
        if perm is Perm.BROWSER:
            return _browser_decision(
                agent_cfg.permissions.can_use_browser, agent_cfg.permissions.browser_actions, target
            )
        if perm in _FLAGS:
            allowed = bool(getattr(agent_cfg.permissions, perm.value))
            return Decision(allowed, f"{perm.value} = {str(allowed).lower()}")
        patterns = self._patterns(agent, perm)
        for pattern in patterns:
            if any_match((pattern,), target):
                return Decision(True, f"{perm.value} matches {pattern!r}")
        return Decision(False, f"no {perm.value} pattern of {agent} matches {target!r}")

    def allows(self, agent: str, perm: Perm, target: str = "") -> bool:
        return self.decide(agent, perm, target).allowed


class Guard:
    """Decides and audits. Every check leaves one audit record, allow or deny."""

    def __init__(self, permissions: Permissions, audit: AuditLog) -> None:
        self.permissions = permissions
        self.audit = audit

    def check(
        self,
        actor: str,
        perm: Perm,
        target: str,
        action: str,
        *,
        durable: bool = True,
        **detail: Any,
    ) -> None:
        """`durable=False` (allow records only): the caller commits durably right after."""
        decision = self.permissions.decide(actor, perm, target)
        self.audit.append(
            actor,
            action,
            target,
            "allow" if decision.allowed else "deny",
            durable=durable or not decision.allowed,
            reason=decision.reason,
            **detail,
        )
        if not decision.allowed:
            where = (
                f"allowed_models in [agents.{actor}]"
                if perm is Perm.LLM
                else f"{perm.value} in [agents.{actor}.permissions]"
            )
            raise Forbidden(
                f"{actor} may not {action} {target!r}: {decision.reason}. The operator can "
                f"grant it with {where}",
                code="permission_denied",
                permission=perm.value,
                target=target,
            )
