"""The agent's own schedules: `cron_set`, `cron_list`, `cron_remove`.

They go through the host socket; the host allows them only to an agent with
`can_manage_cron`, holds it to `[automation] max_jobs_per_agent`, and keeps the jobs in
host.db (they survive restarts of the agent and of the host). A refusal comes back to
the model as `error: the host refused: ...` (see `Registry.run`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from agent_container.client import MeshClient
from agent_container.registry import Tool, anything, dump, obj, text

HOST_TOOLS = ["blackboard_write", "publish", "send_message", "notify_user"]


def _describe(job: dict[str, Any]) -> str:
    what = (
        f"tool {job.get('tool')} {dump(job.get('args') or {})}"
        if job.get("tool")
        else f"message {dump(job.get('message'))}"
    )
    state = job.get("state", "?")
    if job.get("reason"):
        state += f" ({job['reason']})"
    return (
        f"{job.get('name')}: {job.get('schedule')} ({job.get('timezone')}), {what}; {state}; "
        f"runs {job.get('runs', 0)}, skipped while running {job.get('overlaps', 0)}"
    )


def cron_tools(mesh: MeshClient) -> list[Tool]:
    async def cron_set(a: dict[str, Any]) -> str:
        body = {k: a[k] for k in ("schedule", "timezone", "message", "tool", "args", "missed")}
        body = {k: v for k, v in body.items() if v is not None}
        job = await mesh.call("PUT", "/v1/cron/" + quote(str(a["name"]), safe=""), body)
        return "saved " + _describe(job)

    async def cron_list(a: dict[str, Any]) -> str:
        jobs = (await mesh.call("GET", "/v1/cron")).get("jobs") or []
        return "\n".join(_describe(j) for j in jobs) if jobs else "you have no cron jobs"

    async def cron_remove(a: dict[str, Any]) -> str:
        await mesh.call("DELETE", "/v1/cron/" + quote(str(a["name"]), safe=""))
        return f"removed {a['name']}"

    name = text("Job name: lowercase letters, digits and ._- (e.g. daily-report).")
    return [
        Tool(
            "cron_set",
            "Create or change one of your schedules. At each run the host either sends you "
            "`message` (a turn of yours) or runs `tool` itself with `args`, with no model "
            f"call (tool is one of {', '.join(HOST_TOOLS)}).",
            obj(
                ["name", "schedule"],
                name=name,
                schedule=text(
                    "5 cron fields in the job's time zone (minute hour day-of-month month "
                    "day-of-week, e.g. `0 9 * * 1-5`), @daily, or `every 30m`."
                ),
                timezone=text("IANA time zone, e.g. Europe/Paris (default: the host's)."),
                message=anything("What you are sent at each run (text or JSON)."),
                tool={"type": "string", "enum": HOST_TOOLS},
                args={"type": "object", "description": "The tool's arguments."},
                missed={
                    "type": "string",
                    "enum": ["skip", "run_once"],
                    "description": "A run missed while the host was down: skip it, or run once.",
                },
            ),
            cron_set,
        ),
        Tool("cron_list", "Your schedules, with their state and counts.", obj(), cron_list),
        Tool("cron_remove", "Remove one of your schedules.", obj(["name"], name=name), cron_remove),
    ]
