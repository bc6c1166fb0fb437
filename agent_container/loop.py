"""The agent's work loop: long-poll the inbox, handle each item, reply, then ack it.

Delivery is at-least-once, so an item is acked only after it was handled and answered.
Two kinds of failure are told apart:

* the host refused or the model failed (`MeshError`: budget, permission, provider): the
  item is answered with an explanation and acked, since a retry would fail the same way;
* the socket is gone (`HostUnavailable`: the host is restarting): nothing is acked; the
  loop backs off (0.2 s doubling to 5 s) and polls again, and the restarted host hands the
  item out again.

An item that keeps coming back (handed out more than MAX_DELIVERIES times, e.g. because
it crashes the container) is answered with an error and acked instead of being run again.
A heartbeat task, owned by `run()`, tells the host every HEARTBEAT_S that the agent lives.

Each conversation (one per sender) is a session: its system prompt is built at its first
turn (`agent_container.bootstrap`) and kept byte for byte, so provider prompt caching
hits, until a bootstrap file changes or the session is reset (`/new`, or a restart). Its
history is kept whole and compacted by the context manager before it outgrows the
model's window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent_container.bootstrap import DEFAULT_IDENTITY, Bootstrap, load_files, signature
from agent_container.client import HostUnavailable, MeshClient, MeshError, MeshTimeout
from agent_container.completion import collect
from agent_container.context import ContextManager, Tokens, Window, window_for
from agent_container.lanes import SteerLane
from agent_container.learnings import is_correction
from agent_container.mcp_client import McpHub
from agent_container.mind import Mind
from agent_container.prompt import Incoming, parse_item
from agent_container.registry import Hooks
from agent_container.tools import builtin_tools
from agent_container.tools_skills import DEFAULT_SKILLS, Skills
from agent_container.tools_spawn import SPAWN, spawn_tool
from agent_container.turns import Brain, TurnState
from agent_container.workspace import Workspace

if TYPE_CHECKING:
    from legion.wire.agent import SelfStatus
    from legion.wire.api import InboxItem

log = logging.getLogger("agent")

NEW_SESSION = "/new"
HEARTBEAT_S = 10.0
POLL_WAIT_S = 30.0
POLL_MAX_ITEMS = 10
BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 5.0
MAX_DELIVERIES = 5
REMEMBERED = 1000  # message ids (to route replies) and answered items (to not redo them)
SESSIONS = 100  # conversations kept in memory; the least recently used goes first
WARM_UP_S = 0.5  # after start, when /v1/self is read without waiting for an item


@dataclass
class Session:
    """One conversation: its system prompts (chat, task) as first built, and its history."""

    prompts: dict[bool, tuple[tuple[Any, ...], str]] = field(default_factory=dict)
    messages: list[dict[str, Any]] = field(default_factory=list)


class AgentRuntime:
    """Runs one agent: `await AgentRuntime(socket_path, workspace).run()` until cancelled."""

    def __init__(
        self,
        socket_path: str = "/run/legion/mesh.sock",
        workspace: str = "/data/workspace",
        *,
        data_dir: str | None = None,
        identity_dir: str = DEFAULT_IDENTITY,
        skills_dir: str = DEFAULT_SKILLS,
        egress_proxy: str | None = None,
        window: Window | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        poll_wait_s: float = POLL_WAIT_S,
        max_backoff_s: float = BACKOFF_MAX_S,
    ) -> None:
        """`data_dir` holds memory.db (default: a `<workspace>.data` folder beside the
        workspace; the container passes /data); `identity_dir` is the read-only folder
        of the bootstrap files the host publishes; `window` pins the context window
        instead of asking the host's `GET /v1/models`."""
        self.mesh = MeshClient(socket_path)
        self.workspace = Workspace(workspace)
        self.identity_dir = Path(identity_dir)
        data = Path(data_dir) if data_dir else Path(f"{Path(workspace).absolute()}.data")
        self.mind = Mind(self.mesh, data, self.workspace)
        self.hooks = Hooks(self._written, self._message_sent)
        self.tools = builtin_tools(self.mesh, self.workspace, self.hooks)
        for tool in self.mind.tools():
            self.tools.add(tool)
        self.skills = Skills(skills_dir, self.workspace)
        for tool in self.skills.tools():
            self.tools.add(tool)
        # Local MCP servers with egress reach the host's proxy through this socket, when the
        # host serves one for the agent (LEGION_EGRESS_PROXY, mounted read-only).
        self.mcp = McpHub(self.mesh, self.workspace.real_root, proxy_socket=egress_proxy)
        self.me: SelfStatus | None = None
        self.window = window or Window()
        self.tokens = Tokens()  # its calibration carries over from turn to turn
        self._pinned_window = window is not None
        self._window_of: str | None = None
        self.sessions: OrderedDict[str, Session] = OrderedDict()
        self.heartbeat_s = heartbeat_s
        self.poll_wait_s = poll_wait_s
        self.max_backoff_s = max_backoff_s
        self.status = "starting"
        self._turn: TurnState | None = None
        self._asked: OrderedDict[int, str] = OrderedDict()
        self._answered: OrderedDict[tuple[int, float], None] = OrderedDict()
        self._backlog: deque[InboxItem] = deque()
        self._unacked: list[int] = []  # handled, but the ack did not reach the host
        self.lane = SteerLane(self.mesh, self._backlog)  # steers reach turns between rounds
        self._stopping = asyncio.Event()
        self._refresh_lock = asyncio.Lock()

    def stop(self) -> None:
        """Stop after the item in hand (an idle long-poll is abandoned at once)."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # --- the outer loop -------------------------------------------------------------

    async def run(self) -> None:
        heartbeat = asyncio.create_task(self._heartbeat_forever(), name="heartbeat")
        warm = asyncio.create_task(self._warm_up(), name="warm-up")
        backoff = BACKOFF_MIN_S
        try:
            while not self._stopping.is_set():
                try:
                    if not self._backlog:
                        self.status = "idle"
                        self._backlog.extend(await self._poll())
                        if self._backlog or self.me is None:
                            await self._refresh_self()
                    while self._backlog and not self._stopping.is_set():
                        await self._handle_and_ack(self._backlog[0])
                        self._backlog.popleft()
                        await self.lane.promote()  # steers go ahead of the rest
                    backoff = BACKOFF_MIN_S
                except (HostUnavailable, MeshTimeout, MeshError) as exc:
                    if not isinstance(exc, MeshError):
                        self._backlog.clear()  # a restarted host hands them out again
                    log.warning("host not answering (%s); retrying in %.1fs", exc, backoff)
                    await self._sleep(backoff)
                    backoff = min(self.max_backoff_s, backoff * 2)
        finally:
            for task in (heartbeat, warm):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.mcp.close()
            self.mind.close()
            await self.mesh.close()

    async def _poll(self) -> list[InboxItem]:
        """Long-poll (acking what is owed); returns early with nothing when stop() is called."""
        owed = list(self._unacked)
        poll = asyncio.ensure_future(self.mesh.poll(self.poll_wait_s, POLL_MAX_ITEMS, owed))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({poll, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (poll, stopping):
                task.cancel()
            # Let a cancelled poll unwind before anything closes its connection.
            await asyncio.wait({poll, stopping})
        if not poll.done() or poll.cancelled():
            return []
        items = poll.result()
        self._unacked = [i for i in self._unacked if i not in owed]
        return items

    async def _warm_up(self) -> None:
        """Read /v1/self soon after start even when no item comes, so the agent's MCP
        servers start before the first message; after the first poll went out, so a cold
        start is still seen by the host at once."""
        await asyncio.sleep(WARM_UP_S)
        if self.me is None:
            with contextlib.suppress(HostUnavailable, MeshTimeout, MeshError):
                await self._refresh_self()

    async def _refresh_self(self) -> None:
        """Fetch /v1/self (mode, prompt, limits may change with a config reload)."""
        async with self._refresh_lock:
            await self._refresh_self_locked()

    async def _refresh_self_locked(self) -> None:
        try:
            me = await self.mesh.self_status()
        except MeshError:
            if self.me is None:
                raise
            log.warning("could not refresh /v1/self; keeping the last one", exc_info=True)
            return
        if self.me is None:
            log.info("started as %s (mode %s, model %s)", me.agent, me.mode, me.model)
        self.me = me
        self.mind.configure(me)
        await self.mcp.configure(me)
        self.mcp.sync(self.tools)
        if me.permissions.get("can_spawn") is True:
            self.tools.add(spawn_tool(self.mesh, self.hooks))
        else:
            self.tools.tools.pop(SPAWN, None)
        if self._window_of != (me.model or "") and not self._pinned_window:
            await self._refresh_window(me.model)

    async def _refresh_window(self, model: str | None) -> None:
        """The context window of the agent's model, from `GET /v1/models` (a default when
        the host does not serve it or does not know the model)."""
        try:
            models = await self.mesh.models()
        except MeshError as exc:
            log.warning("could not read /v1/models (%s); assuming the default window", exc)
            models = None
        self.window = window_for(models, model)
        self._window_of = model or ""
        log.info(
            "context window %d tokens, max output %d", self.window.context, self.window.max_output
        )

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _heartbeat_forever(self) -> None:
        while True:
            try:
                await self.mesh.heartbeat(self.status)
            except (HostUnavailable, MeshTimeout, MeshError) as exc:
                log.debug("heartbeat failed: %s", exc)
            await asyncio.sleep(self.heartbeat_s)

    # --- one item ------------------------------------------------------------------------

    async def _handle_and_ack(self, item: InboxItem) -> None:
        """Handle, answer, ack. HostUnavailable propagates (no ack); anything else is
        answered with an error and acked, so a poison item cannot loop forever."""
        self.status = f"working on item {item.id}"
        key = (item.id, item.created_at)
        try:
            if key in self._answered:  # answered, but the host lost the ack: just ack
                log.info("item %s was answered already; acking it", item.id)
            elif item.deliveries > MAX_DELIVERIES:
                log.error("item %s was handed out %s times; giving up", item.id, item.deliveries)
                await self._answer_error(item, f"handed out {item.deliveries} times without an ack")
            else:
                await self.handle(item)
                self._answered[key] = None
                while len(self._answered) > REMEMBERED:
                    self._answered.popitem(last=False)
        except (HostUnavailable, MeshTimeout):
            log.warning("lost the host during item %s; it will be handed out again", item.id)
            self.lane.taken()  # its steers come back with it: not acked
            raise
        except Exception as exc:
            log.exception("item %s failed", item.id)
            await self._answer_error(item, f"{exc.__class__.__name__}: {exc}")
        finally:
            self._turn = None
        done = [item.id, *self.lane.taken()]
        try:
            await self.mesh.ack(done)
        except (HostUnavailable, MeshTimeout):
            self._unacked.extend(done)  # sent with the next poll, before it takes items
        except MeshError as exc:
            log.warning("ack of item %s refused: %s", item.id, exc)

    async def _answer_error(self, item: InboxItem, why: str) -> None:
        with contextlib.suppress(MeshError):
            await self.mesh.reply(item.id, f"I could not handle this message: {why}")

    async def handle(self, item: InboxItem) -> None:
        """Run one inbox item to its reply (`POST /v1/replies`)."""
        assert self.me is not None
        incoming = parse_item(item, self.me.mode)
        if incoming.kind == "reply":
            incoming.conversation = self._asked.pop(incoming.reply_to or -1, item.sender)
        self._turn = TurnState(incoming.conversation)
        if incoming.kind == "chat" and incoming.text.strip() == NEW_SESSION:
            self.sessions.pop(incoming.conversation, None)
            await self.mesh.reply(
                item.id, "Started a new session; what I saved is still in my memory."
            )
            return
        if incoming.kind == "task":
            result = await self._task(incoming)
            await self.mesh.reply(item.id, str(result["output"]), "task_result", result)
            return
        answer = await self._chat(incoming)
        # An answer to a reply goes to the operator only: answering the replier would
        # bounce between the two agents forever.
        await self.mesh.reply(None if incoming.kind == "reply" else item.id, answer)

    def _session(self, conversation: str) -> Session:
        session = self.sessions.pop(conversation, None) or Session()
        self.sessions[conversation] = session
        while len(self.sessions) > SESSIONS:
            self.sessions.popitem(last=False)
        return session

    def _system(self, session: Session, conversation: str, task: bool, tools: list[str]) -> str:
        """The session's system prompt: built at its first turn, rebuilt only when one of
        the bootstrap files changed (so the provider's prompt cache keeps hitting)."""
        assert self.me is not None
        sig = (signature(self.identity_dir), self.skills.signature(), tuple(tools))
        cached = session.prompts.get(task)
        if cached is not None and cached[0] == sig:
            return cached[1]
        prompt = Bootstrap(
            me=self.me,
            files=load_files(self.identity_dir),
            learnings=self.mind.learnings.recent(),
            tools=tools,
            workspace=str(self.workspace.root),
            conversation=conversation,
            task=task,
            cap=min(48 * 1024, int(0.3 * self.window.input_budget * 4)),
            schedules=self.me.schedules,
            skills=self.skills.prompt(),
        ).render()
        session.prompts[task] = (sig, prompt)
        return prompt

    def _brain(self, pin: dict[str, Any]) -> Brain:
        assert self.me is not None
        mesh = self.mesh

        async def complete(messages: list[dict[str, Any]]) -> tuple[str, int | None]:
            done = await collect(mesh.stream_chat(messages))
            return done.text, done.prompt_tokens

        def save_text(name: str, text: str) -> str:
            self.workspace.write(name, text)
            return name

        context = ContextManager(
            complete, self.mind.save_facts, save_text, self.window, tokens=self.tokens
        )
        return Brain(
            self.mesh, self.me, self.tools, context, self.mind.learnings, pin, steer=self.lane.take
        )

    async def _chat(self, incoming: Incoming) -> str:
        session = self._session(incoming.conversation)
        history = session.messages
        if history and history[-1].get("role") == "assistant" and is_correction(incoming.text):
            self.mind.learnings.correction(incoming.text, str(history[-1].get("content") or ""))
        user = {"role": "user", "content": incoming.text}
        system = self._system(session, incoming.conversation, False, self.tools.names())
        messages = [{"role": "system", "content": system}, *history, user]
        answer = await self._brain(user).chat(messages)
        # Only now: a turn cut short by a lost host is run again and must not be doubled.
        # What the turn compacted stays compacted; its tool traffic is not kept.
        at = next((i for i, m in enumerate(messages) if m is user), None)
        kept = messages[1:at] if at is not None else messages[1:2]
        session.messages = [*kept, user, {"role": "assistant", "content": answer}]
        return answer

    async def _task(self, incoming: Incoming) -> dict[str, Any]:
        assert self._turn is not None
        session = self._session(incoming.conversation)
        tools = [*self.tools.names(), "finish_task"]
        user = {"role": "user", "content": incoming.text}
        messages = [
            {
                "role": "system",
                "content": self._system(session, incoming.conversation, True, tools),
            },
            user,
        ]
        result = await self._brain(user).task(messages)
        result["blackboard_writes"] = list(self._turn.written)
        session.messages.extend(
            [
                {"role": "user", "content": f"[task] {incoming.text}"},
                {"role": "assistant", "content": f"[task {result['status']}] {result['output']}"},
            ]
        )
        return result

    # --- tool hooks ------------------------------------------------------------------------

    def _written(self, key: str) -> None:
        if self._turn is not None:
            self._turn.wrote(key)

    def _message_sent(self, item_id: int, to: str) -> None:
        if self._turn is not None:
            self._asked[item_id] = self._turn.conversation
            while len(self._asked) > REMEMBERED:
                self._asked.popitem(last=False)
