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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, defaultdict, deque
from typing import TYPE_CHECKING, Any

from agent_container.client import HostUnavailable, MeshClient, MeshError, MeshTimeout
from agent_container.lanes import SteerLane
from agent_container.prompt import Incoming, parse_item, system_prompt
from agent_container.registry import Hooks
from agent_container.tools import builtin_tools
from agent_container.turns import Brain, TurnState
from agent_container.workspace import Workspace

if TYPE_CHECKING:
    from legion.wire.agent import SelfStatus
    from legion.wire.api import InboxItem

log = logging.getLogger("agent")

HISTORY = 40
HEARTBEAT_S = 10.0
POLL_WAIT_S = 30.0
POLL_MAX_ITEMS = 10
BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 5.0
MAX_DELIVERIES = 5
REMEMBERED = 1000  # message ids (to route replies) and answered items (to not redo them)


class AgentRuntime:
    """Runs one agent: `await AgentRuntime(socket_path, workspace).run()` until cancelled."""

    def __init__(
        self,
        socket_path: str = "/run/legion/mesh.sock",
        workspace: str = "/data/workspace",
        *,
        history: int = HISTORY,
        heartbeat_s: float = HEARTBEAT_S,
        poll_wait_s: float = POLL_WAIT_S,
        max_backoff_s: float = BACKOFF_MAX_S,
    ) -> None:
        self.mesh = MeshClient(socket_path)
        self.workspace = Workspace(workspace)
        self.tools = builtin_tools(
            self.mesh, self.workspace, Hooks(self._written, self._message_sent)
        )
        self.me: SelfStatus | None = None
        self.history: defaultdict[str, deque[dict[str, Any]]] = defaultdict(
            lambda: deque(maxlen=history)
        )
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

    def stop(self) -> None:
        """Stop after the item in hand (an idle long-poll is abandoned at once)."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # --- the outer loop -------------------------------------------------------------

    async def run(self) -> None:
        heartbeat = asyncio.create_task(self._heartbeat_forever(), name="heartbeat")
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
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
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

    async def _refresh_self(self) -> None:
        """Fetch /v1/self (mode, prompt, limits may change with a config reload)."""
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
        brain = Brain(self.mesh, self.me, self.tools, steer=self.lane.take)
        if incoming.kind == "task":
            result = await self._task(brain, incoming)
            await self.mesh.reply(item.id, str(result["output"]), "task_result", result)
            return
        answer = await self._chat(brain, incoming)
        # An answer to a reply goes to the operator only: answering the replier would
        # bounce between the two agents forever.
        await self.mesh.reply(None if incoming.kind == "reply" else item.id, answer)

    def _system(self, conversation: str, task: bool = False, tools: list[str] | None = None) -> str:
        assert self.me is not None
        names = tools or self.tools.names()
        return system_prompt(self.me, str(self.workspace.root), names, conversation, task)

    async def _chat(self, brain: Brain, incoming: Incoming) -> str:
        history = self.history[incoming.conversation]
        user = {"role": "user", "content": incoming.text}
        messages = [
            {"role": "system", "content": self._system(incoming.conversation)},
            *history,
            user,
        ]
        answer = await brain.chat(messages)
        # Only now: a turn cut short by a lost host is run again and must not be doubled.
        history.extend([user, {"role": "assistant", "content": answer}])
        return answer

    async def _task(self, brain: Brain, incoming: Incoming) -> dict[str, Any]:
        assert self._turn is not None
        tools = [*self.tools.names(), "finish_task"]
        messages = [
            {"role": "system", "content": self._system(incoming.conversation, True, tools)},
            {"role": "user", "content": incoming.text},
        ]
        result = await brain.task(messages)
        result["blackboard_writes"] = list(self._turn.written)
        self.history[incoming.conversation].extend(
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
