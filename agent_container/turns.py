"""One chat turn or one task: model calls, tool rounds, and how each ends.

Both stream completions through the host's gateway and run the model's tool calls in
order, appending each result as a `tool` message. A chat turn allows `max_tool_rounds`
rounds, then asks once more for an answer with tools switched off. A task runs at most
`max_task_steps` model calls and must end by calling `finish_task`, whose arguments are
the structured result.

Before each completion the context manager compacts the conversation when it nears the
model's window; a provider's context-overflow error compacts it harder and retries once.
Every tool call passes the loop guard (warn, block, stop: `agent_container.loops`); tool
failures are recorded as learnings.

A host refusal or an LLM error (`MeshError`: 402 budget, 403, 502, an error mid-stream)
ends the turn with an explanation: retrying the item would fail the same way. A lost
socket (`HostUnavailable`) is not caught here: the caller must not ack the item.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent_container.client import MeshClient, MeshError
from agent_container.completion import Completion, collect
from agent_container.context import ContextManager, is_overflow
from agent_container.learnings import Learnings
from agent_container.loops import LoopGuard, LoopStopped, Thresholds
from agent_container.registry import Registry, Tool, obj, text

if TYPE_CHECKING:
    from legion.wire.agent import SelfStatus

FINISH = "finish_task"
STATUSES = ("done", "failed", "gave_up")
EMPTY = "(the model gave an empty answer)"
RUNTIME = "[runtime]"  # marks the messages the runtime, not a person, adds to a conversation
_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")  # the shape of a TurnError code


def explain(exc: MeshError) -> str:
    """What the requester reads when the host or the model refused the turn."""
    return f"I could not finish this turn: {exc.message} [{exc.code}]"


def failure_of(exc: MeshError | LoopStopped) -> dict[str, Any]:
    """The reply's machine-readable `error` (legion.wire.agent.TurnError) for a turn that
    ended without its answer: the host's code and status, or `loop_stopped`."""
    if isinstance(exc, LoopStopped):
        return {"code": "loop_stopped", "message": str(exc)[:4000], "status": None}
    code = exc.code if _CODE.fullmatch(exc.code or "") else "error"
    status = exc.status if 100 <= exc.status <= 599 else None
    return {"code": code, "message": exc.message[:4000], "status": status}


@dataclass
class Brain:
    """Talks to the model for one turn of one agent: its socket, tools, context, loop guard."""

    mesh: MeshClient
    me: SelfStatus
    registry: Registry
    context: ContextManager | None = None
    learnings: Learnings | None = None
    pin: dict[str, Any] | None = None  # the user message compaction must keep
    # Steer messages waiting now (agent_container.lanes), read between two tool rounds.
    steer: Callable[[], Awaitable[list[dict[str, Any]]]] | None = None
    guard: LoopGuard = field(init=False)
    # Why the last turn ended without its answer (`failure_of`), or None: it was answered.
    failure: dict[str, Any] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        t = self.me.loop_detection
        self.guard = LoopGuard(Thresholds(t.warn_at, t.block_at, t.stop_at, t.window))

    async def _stream(
        self, messages: list[dict[str, Any]], registry: Registry, **extra: Any
    ) -> Completion:
        return await collect(self.mesh.stream_chat(messages, registry.schemas(), **extra))

    async def complete(
        self, messages: list[dict[str, Any]], registry: Registry, **extra: Any
    ) -> Completion:
        """One completion; compacts `messages` first when they near the window, and once
        more (then retries once) when the provider says they overflowed it."""
        context = self.context
        if context is None:
            return await self._stream(messages, registry, **extra)
        tool_bytes = len(json.dumps(registry.schemas()).encode())
        if context.over(messages, tool_bytes):
            await context.compact(messages, tool_bytes, pin=self.pin)
        try:
            completion = await self._stream(messages, registry, **extra)
        except MeshError as exc:
            if not is_overflow(exc.message):
                raise
            if await context.compact(messages, tool_bytes, pin=self.pin, force=True) is None:
                raise
            completion = await self._stream(messages, registry, **extra)  # once, never a loop
        if completion.prompt_tokens:
            context.tokens.observe(messages, tool_bytes, completion.prompt_tokens)
        return completion

    async def _run_calls(
        self,
        completion: Completion,
        messages: list[dict[str, Any]],
        registry: Registry,
        stop: Callable[[], bool] = lambda: False,
    ) -> None:
        for call in completion.tool_calls:
            result = self.guard.before(call.name, call.arguments)  # LoopStopped ends the turn
            if result is None:
                result = await registry.run(call.name, call.arguments)
                if result.startswith("error:") and self.learnings is not None:
                    self.learnings.tool_failure(call.name, call.arguments, result)
                result = self.guard.after(call.name, call.arguments, result)
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
            self.failure = failure_of(exc)
            return explain(exc)
        except LoopStopped as exc:
            self.failure = failure_of(exc)
            return str(exc)
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
            self.failure = failure_of(exc)
            return {"status": "failed", "output": explain(exc)}
        except LoopStopped as exc:
            self.failure = failure_of(exc)
            return {"status": "failed", "output": str(exc)}
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
