"""Tools that go through the host socket: web requests, blackboard, pub/sub, messages,
notifications and the agent's own status.

The host checks every one of them against the agent's permissions; a refusal comes back
to the model as `error: the host refused: ...` (see `Registry.run`). Credentials are never
seen here: `$CRED{name}` handles in an http_request are sent as written and the host
substitutes them, only toward the hosts the credential is bound to.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agent_container.client import MeshClient
from agent_container.registry import Hooks, Tool, anything, dump, number, obj, text

if TYPE_CHECKING:
    from legion.wire.agent import SelfStatus

EGRESS_FIELDS = ("method", "url", "headers", "body", "body_base64", "timeout_s", "follow_redirects")
WATCH_MAX_S = 30.0
PREVIEW = 200


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _preview(value: Any) -> str:
    shown = json.dumps(value, ensure_ascii=False, default=str)
    return shown if len(shown) <= PREVIEW else shown[:PREVIEW] + "..."


def _usd(value: float | None) -> str:
    return "no limit" if value is None else f"${value:.4f}"


def summarize(me: SelfStatus) -> str:
    """One paragraph a model can read: who it is, its limits, whom it can reach."""
    where = ", ".join(
        part for part in (me.role and f"role {me.role}", me.team and f"team {me.team}") if part
    )
    left = me.budget_left
    lines = [
        f"You are {me.agent}{f' ({where})' if where else ''}, in {me.mode} mode, "
        f"model {me.model or 'the host default'}.",
        f"Budget left: today {_usd(left.daily_usd)}, this month {_usd(left.monthly_usd)}, "
        f"fleet today {_usd(left.fleet_daily_usd)}.",
        f"Limits: {me.max_tool_rounds} tool rounds per chat turn, "
        f"{me.max_task_steps} steps per task.",
        "Agents you may message: " + (", ".join(me.fleet) or "none") + ".",
    ]
    return "\n".join(lines)


def mesh_tools(mesh: MeshClient, hooks: Hooks) -> list[Tool]:
    cursors: dict[str, int] = {}  # blackboard_watch: where each pattern left off

    async def http_request(a: dict[str, Any]) -> str:
        request = {k: a[k] for k in EGRESS_FIELDS if a.get(k) is not None}
        request["method"] = str(request.get("method") or "GET").upper()
        response = await mesh.egress(request)
        return dump(response.model_dump(exclude_none=True))

    async def bb_read(a: dict[str, Any]) -> str:
        entry = await mesh.bb_get(str(a["key"]))
        return dump(entry.model_dump(exclude_none=True))

    async def bb_write(a: dict[str, Any]) -> str:
        ttl = a.get("ttl_s")
        entry = await mesh.bb_put(str(a["key"]), a["value"], float(ttl) if ttl else None)
        hooks.blackboard_written(entry.key)
        return f"wrote {entry.key} (version {entry.version})"

    async def bb_list(a: dict[str, Any]) -> str:
        listing = await mesh.bb_list(str(a.get("prefix") or ""))
        if not listing.entries:
            return "no entries"
        lines = [
            f"{e.key} v{e.version} by {e.writer}: {_preview(e.value)}" for e in listing.entries
        ]
        if listing.truncated:
            lines.append("(more entries follow: list a longer prefix to see them)")
        return "\n".join(lines)

    async def bb_claim(a: dict[str, Any]) -> str:
        claim = await mesh.bb_claim(str(a["key"]), float(a.get("ttl_s") or 300.0))
        return f"claimed {claim.key} until {_when(claim.expires_at)}"

    async def bb_release(a: dict[str, Any]) -> str:
        released = await mesh.bb_release(str(a["key"]))
        return (
            f"released {released.key}"
            if released.released
            else f"no claim of yours on {released.key}"
        )

    async def bb_watch(a: dict[str, Any]) -> str:
        pattern = str(a["pattern"])
        wait = min(max(float(a.get("wait_s") or 10.0), 0.0), WATCH_MAX_S)
        if pattern not in cursors:  # the first watch of a pattern starts from now
            cursors[pattern] = (await mesh.bb_watch(pattern, None, 0.0)).cursor
        result = await mesh.bb_watch(pattern, cursors[pattern], wait)
        cursors[pattern] = result.cursor
        if not result.changes:
            return f"no changes to {pattern} within {wait:g}s" + (
                " (some changes were missed; re-list)" if result.reset else ""
            )
        lines = [
            f"{c.op} {c.key} v{c.version} by {c.writer}"
            + (f": {_preview(c.value)}" if c.op == "put" else "")
            for c in result.changes
        ]
        if result.reset:
            lines.append("(older changes were missed; use blackboard_list to resync)")
        return "\n".join(lines)

    async def publish(a: dict[str, Any]) -> str:
        published = await mesh.publish(str(a["topic"]), a["payload"])
        return f"published on {published.topic}; delivered to: " + (
            ", ".join(published.delivered_to) or "nobody (no subscribers)"
        )

    async def subscribe(a: dict[str, Any]) -> str:
        subs = await mesh.subscribe(str(a["topic"]))
        return "subscribed; your topics: " + ", ".join(subs.topics)

    async def send_message(a: dict[str, Any]) -> str:
        queued = await mesh.send_message(str(a["to"]), a["payload"])
        hooks.message_sent(queued.item_id, queued.to)
        return f"queued for {queued.to} (item {queued.item_id}); a reply comes to your inbox"

    async def notify_user(a: dict[str, Any]) -> str:
        await mesh.notify(str(a["text"]), str(a.get("level") or "info"))
        return "the operator was notified"

    async def system_status(a: dict[str, Any]) -> str:
        me = await mesh.self_status()
        return summarize(me) + "\n" + dump(me.model_dump())

    key = text("Blackboard key, segments separated by '/', e.g. notes/plan.")
    return [
        Tool(
            "http_request",
            "An HTTP(S) request made by the host for you (your only way to the web). Refer to "
            "credentials as $CRED{name} in the URL, headers or body; the host fills them in.",
            obj(
                ["url"],
                method=text("GET (default), POST, PUT, PATCH, DELETE, HEAD or OPTIONS."),
                url=text("http:// or https:// URL."),
                headers={"type": "object", "additionalProperties": {"type": "string"}},
                body=text("Text body."),
                body_base64=text("Binary body, base64 (instead of body)."),
                timeout_s=number("Whole-request limit in seconds."),
                follow_redirects={"type": "boolean"},
            ),
            http_request,
        ),
        Tool("blackboard_read", "Read a blackboard key.", obj(["key"], key=key), bb_read),
        Tool(
            "blackboard_write",
            "Write a JSON value to a blackboard key (shared with the fleet).",
            obj(
                ["key", "value"],
                key=key,
                value=anything("Any JSON value."),
                ttl_s=number("Expire after this many seconds."),
            ),
            bb_write,
        ),
        Tool(
            "blackboard_list",
            "List blackboard keys under a prefix, with a preview of each value.",
            obj(prefix=text("Key prefix, e.g. notes/ (default: all you may read).")),
            bb_list,
        ),
        Tool(
            "blackboard_claim",
            "Claim a key so no other agent takes it (or writes it) until you release it.",
            obj(["key"], key=key, ttl_s=number("Claim length in seconds (default 300).")),
            bb_claim,
        ),
        Tool(
            "blackboard_release",
            "Release your claim on a key.",
            obj(["key"], key=key),
            bb_release,
        ),
        Tool(
            "blackboard_watch",
            "Wait for changes to keys matching a glob (`*` within a segment, `**` across). "
            "Repeated calls continue where the last one stopped.",
            obj(
                ["pattern"],
                pattern=text("Key glob, e.g. notes/**."),
                wait_s=number(f"Seconds to wait (default 10, at most {WATCH_MAX_S:g})."),
            ),
            bb_watch,
        ),
        Tool(
            "publish",
            "Publish a payload on a topic; every subscribed agent gets it in its inbox.",
            obj(["topic", "payload"], topic=text("Topic, e.g. news/tech."), payload=anything("")),
            publish,
        ),
        Tool(
            "subscribe",
            "Subscribe to a topic or topic glob; publications arrive in your inbox.",
            obj(["topic"], topic=text("Topic or glob, e.g. news/*.")),
            subscribe,
        ),
        Tool(
            "send_message",
            'Send a message to another agent\'s inbox (a string, or {"text": ...}; '
            '{"task": ...} asks it to run a task). Its answer comes back to you later.',
            obj(["to", "payload"], to=text("Agent name."), payload=anything("The message.")),
            send_message,
        ),
        Tool(
            "notify_user",
            "Tell the operator something that needs their attention.",
            obj(
                ["text"],
                text=text("The notice."),
                level={"type": "string", "enum": ["info", "warning", "error"]},
            ),
            notify_user,
        ),
        Tool(
            "get_system_status",
            "Your configuration, permissions, budget left and the agents you may message.",
            obj(),
            system_status,
        ),
    ]
