"""Tool mode: the host runs one tool for an agent, with no container and no model call.

Only tools the host itself serves can run this way (the others live inside the agent's
container): `blackboard_write`, `publish`, `send_message`, `notify_user`. Each runs as the
job's agent, with exactly that agent's permissions, decided at every run (a permission
taken away since the job was made fails the run, audited as a deny).

`invoke` is called inside the scheduler's transaction, so it must not write the audit
log (an audit record written in a savepoint that rolls back would break the chain): it
returns the audit records for the caller to append after the commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from legion.errors import BadRequest, Forbidden
from legion.mesh.permissions import Perm
from legion.wire.automation import HOST_TOOLS
from legion.wire.events import AgentNotification

if TYPE_CHECKING:
    from legion.host import Host

# tool -> (required arguments, permission, the argument that is its target, audit action)
_SPEC: dict[str, tuple[tuple[str, ...], Perm | None, str, str]] = {
    "blackboard_write": (("key", "value"), Perm.BB_WRITE, "key", "bb.put"),
    "publish": (("topic", "payload"), Perm.PUBLISH, "topic", "publish"),
    "send_message": (("to", "payload"), Perm.MESSAGE, "to", "message"),
    "notify_user": (("text",), None, "", "notify"),
}
_STRING_ARGS = {"key", "topic", "to", "text", "level"}


@dataclass(frozen=True)
class AuditNote:
    """An audit record owed once the run's transaction has committed."""

    actor: str
    action: str
    target: str
    decision: str
    detail: dict[str, Any]


def check_tool(tool: str, args: dict[str, Any]) -> None:
    """Refuse (BadRequest) a tool the host cannot run or arguments it does not take."""
    if tool not in _SPEC:
        raise BadRequest(
            f"tool mode runs one of {', '.join(HOST_TOOLS)} (the tools the host serves); "
            f"{tool!r} runs in the agent's container: send it a message instead",
            code="invalid_tool",
        )
    required, _, _, _ = _SPEC[tool]
    missing = [k for k in required if args.get(k) is None]
    if missing:
        raise BadRequest(f"{tool} needs {', '.join(missing)} in args", code="invalid_args")
    for key in _STRING_ARGS & set(args):
        if not isinstance(args[key], str):
            raise BadRequest(f"{tool}: args.{key} must be a string", code="invalid_args")
    ttl = args.get("ttl_s")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl <= 0):
        raise BadRequest(f"{tool}: args.ttl_s must be a positive number", code="invalid_args")
    if tool == "notify_user" and args.get("level", "info") not in ("info", "warning", "error"):
        raise BadRequest("notify_user: args.level is info, warning or error", code="invalid_args")
    extra = set(args) - {*required, "ttl_s", "level"}
    if extra:
        raise BadRequest(f"{tool} does not take {', '.join(sorted(extra))}", code="invalid_args")


def target_of(tool: str, args: dict[str, Any]) -> tuple[Perm | None, str]:
    _, perm, target, _ = _SPEC[tool]
    return perm, str(args.get(target, "")) if target else ""


def invoke(
    host: Host, agent: str, tool: str, args: dict[str, Any], job_id: int, notes: list[AuditNote]
) -> str:
    """Run `tool` as `agent`; returns what it did. Raises a LegionError (nothing written)
    when refused; either way the audit records it owes are appended to `notes`."""
    check_tool(tool, args)
    perm, target = target_of(tool, args)
    action = _SPEC[tool][3]
    if perm is not None:
        decision = host.permissions.decide(agent, perm, target)
        notes.append(
            AuditNote(
                agent,
                action,
                target,
                "allow" if decision.allowed else "deny",
                {"reason": decision.reason, "via": "cron", "job": job_id},
            )
        )
        if not decision.allowed:
            raise Forbidden(
                f"{agent} may not {action} {target!r}: {decision.reason}",
                code="permission_denied",
                permission=perm.value,
                target=target,
            )
    if tool == "blackboard_write":
        ttl = args.get("ttl_s")
        entry = host.blackboard.put(
            target, args["value"], agent, ttl_s=float(ttl) if ttl is not None else None
        )
        return f"wrote {entry.key} (version {entry.version})"
    if tool == "publish":
        recipients = host.inboxes.publish(
            agent,
            target,
            args["payload"],
            deliver=lambda a: host.permissions.allows(a, Perm.SUBSCRIBE, target),
        )
        return f"published on {target} to {len(recipients)} subscriber(s)"
    if tool == "send_message":
        item = host.send(agent, target, args["payload"])
        return f"queued for {target} (item {item})"
    level = str(args.get("level") or "info")
    notes.append(AuditNote(agent, action, "operator", "allow", {"via": "cron", "job": job_id}))
    host.bus.publish(
        AgentNotification(
            at=host.clock(),
            agent=agent,
            text=str(args["text"]),
            level=level,
        )
    )
    return "the operator was notified"
