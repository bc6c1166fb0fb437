"""`spawn_agent`: start an ephemeral sub-agent for one task (agents with `can_spawn`).

The host does the work (`POST /v1/agents/spawn`, legion.fleet.spawn): a hardened
container of its own, the parent's team, a permission matrix within the parent's, a
budget carved out of the parent's, a time to live, no right to spawn in turn. The task's
result comes back later as a message from the sub-agent (a `task_result`), routed to the
conversation that spawned it.
"""

from __future__ import annotations

from typing import Any

from agent_container.client import MeshClient
from agent_container.registry import Hooks, Tool, number, obj, text

SPAWN = "spawn_agent"


def spawn_tool(mesh: MeshClient, hooks: Hooks) -> Tool:
    async def spawn_agent(args: dict[str, Any]) -> str:
        body = {
            key: args[key]
            for key in ("role", "task", "model", "ttl_s", "budget_usd")
            if args.get(key) is not None
        }
        data = await mesh.call("POST", "/v1/agents/spawn", body)
        agent, item = str(data["agent"]), int(data["item_id"])
        hooks.message_sent(item, agent)
        return (
            f"spawned {agent} for the task (budget ${float(data['budget_usd']):.4f}, it stops "
            f"within {float(data['ttl_s']):g}s). Its result arrives later as a message "
            f"[reply from {agent}]; you may carry on meanwhile."
        )

    return Tool(
        SPAWN,
        "Start a sub-agent for one self-contained task: it works on its own, with at most "
        "your permissions and a budget taken from yours, and reports back with a result. "
        "Give it everything it needs in `task`; it cannot ask you questions.",
        obj(
            ["role", "task"],
            role=text("What the sub-agent is, in a few words (e.g. 'fact checker')."),
            task=text("The task, complete and self-contained."),
            model=text("Optional: a model alias you may use (default: yours)."),
            ttl_s=number("Optional: seconds before it is stopped (capped by the operator)."),
            budget_usd=number("Optional: USD it may spend, taken from your budget."),
        ),
        spawn_agent,
    )
