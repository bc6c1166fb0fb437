"""One chat turn or one task: model calls, tool rounds, and how each ends.

Both stream completions through the host's gateway and run the model's tool calls in
order, appending each result as a `tool` message. A chat turn allows `max_tool_rounds`
rounds, then asks once more for an answer with tools switched off. A task runs at most
`max_task_steps` model calls and must end by calling `finish_task`, whose arguments are
the structured result.

A host refusal or an LLM error (`MeshError`: 402 budget, 403, 502, an error mid-stream)
ends the turn with an explanation: retrying the item would fail the same way. A lost
socket (`HostUnavailable`) is not caught here: the caller must not ack the item.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent_container.client import MeshClient, MeshError
from agent_container.completion import Completion, collect
from agent_container.registry import Registry, Tool, obj, text

if TYPE_CHECKING:
    from legion.wire.agent import SelfStatus

FINISH = "finish_task"
STATUSES = ("done", "failed", "gave_up")
EMPTY = "(the model gave an empty answer)"
RUNTIME = "[runtime]"  # marks the messages the runtime, not a person, adds to a conversation


def explain(exc: MeshError) -> str:
    """What the requester reads when the host or the model refused the turn."""
    return f"I could not finish this turn: {exc.message} [{exc.code}]"


@dataclass
class Brain:
    """Talks to the model for one agent: its socket, its tools, its configuration."""

    mesh: MeshClient
    me: SelfStatus
    registry: Registry
    # Steer messages waiting now (agent_container.lanes), read between two tool rounds.
    steer: Callable[[], Awaitable[list[dict[str, Any]]]] | None = None

    async def complete(
        self, messages: list[dict[str, Any]], registry: Registry, **extra: Any
    ) -> Completion:
        return await collect(self.mesh.stream_chat(messages, registry.schemas(), **extra))

    async def _run_calls(
        self,
        completion: Completion,
        messages: list[dict[str, Any]],
        registry: Registry,
        stop: Callable[[], bool] = lambda: False,
    ) -> None:
        for call in completion.tool_calls:
            result = await registry.run(call.name, call.arguments)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
            if stop():
                return
        if self.steer is not None:  # between this round and the next model call
            messages.extend(await self.steer())

    async def chat(self, messages: list[dict[str, Any]]) -> str:
        """Model and tool rounds until the model answers in text; returns the answer."""
        limit = self.me.max_tool_rounds
        try:
            for _ in range(limit):
                completion = await self.complete(messages, self.registry)
                messages.append(completion.message())
                if not completion.tool_calls:
                    return completion.text or EMPTY
                await self._run_calls(completion, messages, self.registry)
            messages.append(
                {
                    "role": "user",
                    "content": f"{RUNTIME} You have used all {limit} tool rounds of this turn. "
                    "Answer now with what you have; no more tool calls.",
                }
            )
            final = await self.complete(messages, self.registry, tool_choice="none")
        except MeshError as exc:
            return explain(exc)
        return final.text or f"I stopped after {limit} tool rounds without a final answer."

    async def task(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """Run a task to its structured result: {status, output} (the caller adds writes)."""
        result: dict[str, Any] = {}
        registry = self.registry.copy()
        registry.add(finish_tool(result))
        steps = self.me.max_task_steps
        last_text = ""
        try:
            for _ in range(steps):
                completion = await self.complete(messages, registry)
                messages.append(completion.message())
                last_text = completion.text or last_text
                if not completion.tool_calls:
                    messages.append(
                        {
                            "role": "user",
                            "content": f"{RUNTIME} Continue the task with your tools, or end "
                            f"it now by calling {FINISH} with status and output.",
                        }
                    )
                    continue
                await self._run_calls(completion, messages, registry, stop=lambda: bool(result))
                if result:
                    return result
        except MeshError as exc:
            return {"status": "failed", "output": explain(exc)}
        return {
            "status": "gave_up",
            "output": last_text or f"no result after {steps} steps",
        }


def finish_tool(result: dict[str, Any]) -> Tool:
    """`finish_task`: its arguments become the task's result (stored into `result`)."""

    async def finish(args: dict[str, Any]) -> str:
        output = args["output"]
        result.update(
            status=args["status"],
            output=output if isinstance(output, str) else str(output),
        )
        return "task finished; the result was recorded"

    return Tool(
        FINISH,
        "End the task with its result. Call it exactly once, as your last action.",
        obj(
            ["status", "output"],
            status={"type": "string", "enum": list(STATUSES), "description": "How it ended."},
            output=text("The result: what was done, found or why it failed."),
        ),
        finish,
    )


@dataclass
class TurnState:
    """Bookkeeping of the item being handled, filled in by tool hooks."""

    conversation: str
    written: list[str] = field(default_factory=list)

    def wrote(self, key: str) -> None:
        if key not in self.written:
            self.written.append(key)
