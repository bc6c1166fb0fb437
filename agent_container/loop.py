"""The agent's work loop: long-poll the inbox, handle each item, reply, ack.

Chat mode: a conversation per sender with tool use, at most `max_tool_rounds` tool rounds
per turn. Task mode (the agent's mode, or a payload with "task"): a bounded loop that ends
in a structured result through the `finish_task` tool. Items are acked only after they were
handled; if the host goes away mid-item, the item is not acked and comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import defaultdict, deque
from typing import TYPE_CHECKING, Any

import httpx

from agent_container.client import MeshClient, MeshError
from agent_container.tools import Registry, Tool, _obj, builtin_tools
from agent_container.workspace import Workspace

if TYPE_CHECKING:
    from legion.wire.agent import SelfStatus

log = logging.getLogger("agent")

HISTORY = 40
HEARTBEAT_S = 10.0


class HostGone(Exception):
    """The socket is unreachable (the host restarts): the item must not be acked."""


def _text(payload: Any) -> tuple[str, str | None]:
    """(text, task) of an inbox payload."""
    if isinstance(payload, str):
        return payload, None
    if isinstance(payload, dict):
        if "task" in payload:
            return str(payload.get("text") or ""), str(payload["task"])
        if "text" in payload:
            return str(payload["text"]), None
    return json.dumps(payload, ensure_ascii=False), None


class AgentRuntime:
    def __init__(
        self, socket_path: str = "/run/legion/mesh.sock", workspace: str = "/data/workspace"
    ) -> None:
        self.mesh = MeshClient(socket_path)
        self.workspace = Workspace(workspace)
        self.tools: Registry = builtin_tools(self.mesh, self.workspace)
        self.me: SelfStatus | None = None
        self.history: dict[str, deque[dict[str, Any]]] = defaultdict(lambda: deque(maxlen=HISTORY))
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    # --- the outer loop -------------------------------------------------------------

    async def run(self) -> None:
        heartbeat = asyncio.create_task(self._heartbeat_forever(), name="heartbeat")
        backoff = 0.2
        try:
            while not self._stopping.is_set():
                try:
                    # Poll first: the host sees the agent ready as early as possible; who we
                    # are (and the pydantic import it takes) is needed only to handle items.
                    items = await self.mesh.poll(wait_s=30)
                    if self.me is None:
                        self.me = await self.mesh.self_status()
                        log.info("started as %s", self.me.agent)
                    backoff = 0.2
                except (httpx.TransportError, OSError) as exc:
                    log.warning("host unreachable (%s); retrying in %.1fs", exc, backoff)
                    await self._sleep(backoff)
                    backoff = min(5.0, backoff * 2)
                    continue
                for item in items:
                    try:
                        await self.handle(item)
                        await self.mesh.ack([item["id"]])
                    except (HostGone, httpx.TransportError, OSError):
                        log.warning("host went away during item %s; it will come back", item["id"])
                        break
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await self.mesh.close()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _heartbeat_forever(self) -> None:
        while True:
            with contextlib.suppress(MeshError, httpx.TransportError, OSError):
                await self.mesh.heartbeat()
            await asyncio.sleep(HEARTBEAT_S)

    # --- one item ------------------------------------------------------------------------

    async def handle(self, item: dict[str, Any]) -> None:
        assert self.me is not None
        payload = item.get("payload")
        if isinstance(payload, dict) and "reply_to" in payload:
            return  # an answer to something this agent asked; nothing to do with it here
        text, task = _text(payload)
        if task is not None or self.me.mode == "task":
            result = await self.run_task(task or text, item)
            await self.mesh.reply(item["id"], str(result.get("output", "")), "task_result", result)
            return
        answer = await self.chat_turn(item["sender"], text)
        await self.mesh.reply(item["id"], answer)

    def system_prompt(self, task_mode: bool = False) -> str:
        assert self.me is not None
        me = self.me
        parts = [f"You are {me.agent}, an autonomous agent run by legion."]
        if me.role:
            parts.append(f"Your role: {me.role}.")
        if me.team:
            parts.append(
                f"You are in team {me.team}; teams/{me.team}/ on the blackboard is "
                "your team's space."
            )
        parts.append(
            f"Your workspace is {self.workspace.root}. You have no direct network; "
            "use http_request, and refer to credentials as $CRED{name}."
        )
        if me.fleet:
            parts.append("Agents you may message: " + ", ".join(me.fleet) + ".")
        if task_mode:
            parts.append(
                "You are running a task. Work step by step with your tools, then "
                "call finish_task exactly once with the result."
            )
        if me.system_prompt:
            parts.append(me.system_prompt)
        return "\n".join(parts)

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> tuple[str, list[dict[str, Any]]]:
        """One streamed completion: (text, tool calls)."""
        text: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        try:
            async for chunk in self.mesh.stream_chat({"messages": messages, "tools": tools}):
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    if delta.get("content"):
                        text.append(delta["content"])
                    for call in delta.get("tool_calls") or []:
                        slot = calls.setdefault(
                            int(call.get("index", 0)),
                            {
                                "id": "",
                                "type": "function",
                                "function": {"name": "", "arguments": ""},
                            },
                        )
                        if call.get("id"):
                            slot["id"] = call["id"]
                        fn = call.get("function") or {}
                        slot["function"]["name"] += fn.get("name") or ""
                        slot["function"]["arguments"] += fn.get("arguments") or ""
        except (httpx.TransportError, OSError) as exc:
            raise HostGone(str(exc)) from exc
        ordered = [calls[i] for i in sorted(calls)]
        for n, call in enumerate(ordered):
            call["id"] = call["id"] or f"call_{n}"
        return "".join(text), ordered

    async def _rounds(
        self,
        messages: list[dict[str, Any]],
        registry: Registry,
        max_rounds: int,
        stop_on: str | None = None,
    ) -> tuple[str, bool]:
        """Model/tool rounds until the model answers without tools (or calls `stop_on`)."""
        schemas = registry.schemas()
        for _ in range(max_rounds):
            text, calls = await self.complete(messages, schemas)
            message: dict[str, Any] = {"role": "assistant", "content": text or None}
            if calls:
                message["tool_calls"] = calls
            messages.append(message)
            if not calls:
                return text, True
            for call in calls:
                result = await registry.run(
                    call["function"]["name"], call["function"]["arguments"] or "{}"
                )
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})
                if stop_on is not None and call["function"]["name"] == stop_on:
                    return text, True
        return "", False

    async def chat_turn(self, sender: str, text: str) -> str:
        assert self.me is not None
        history = self.history[sender]
        history.append({"role": "user", "content": text})
        messages = [{"role": "system", "content": self.system_prompt()}, *history]
        try:
            answer, finished = await self._rounds(messages, self.tools, self.me.max_tool_rounds)
        except MeshError as exc:
            return f"I could not answer: {exc.message} [{exc.code}]"
        if not finished:
            answer = (
                f"I stopped after {self.me.max_tool_rounds} tool rounds without a final answer."
            )
        history.append({"role": "assistant", "content": answer})
        return answer

    async def run_task(self, task: str, item: dict[str, Any]) -> dict[str, Any]:
        assert self.me is not None
        result: dict[str, Any] = {}
        written: list[str] = []
        registry = Registry(dict(self.tools.tools))
        original_write = registry.tools["blackboard_write"].handler

        async def tracked_write(args: dict[str, Any]) -> str:
            out = await original_write(args)
            written.append(str(args["key"]))
            return out

        async def finish(args: dict[str, Any]) -> str:
            result.update(status=str(args.get("status") or "done"), output=args.get("output", ""))
            return "task finished"

        registry.tools["blackboard_write"] = Tool(
            "blackboard_write",
            registry.tools["blackboard_write"].description,
            registry.tools["blackboard_write"].parameters,
            tracked_write,
        )
        registry.add(
            Tool(
                "finish_task",
                "End the task with its result.",
                _obj(
                    ["status", "output"],
                    status={"type": "string", "enum": ["done", "failed", "gave_up"]},
                    output={"type": "string"},
                ),
                finish,
            )
        )
        messages = [
            {"role": "system", "content": self.system_prompt(task_mode=True)},
            {"role": "user", "content": task},
        ]
        try:
            await self._rounds(messages, registry, self.me.max_task_steps, stop_on="finish_task")
        except MeshError as exc:
            result = {"status": "failed", "output": f"{exc.message} [{exc.code}]"}
        if not result:
            result = {
                "status": "gave_up",
                "output": f"no result after {self.me.max_task_steps} steps",
            }
        result["blackboard_writes"] = written
        return result
