"""LLM calls in flight, per agent, and the operator's kill switch that cuts them.

Every chat call the gateway dispatches is registered here from before its reservation to its
settlement (`Dispatch.open` ... `Dispatch.close`). `pause(agent)` (or the whole fleet) then:

* refuses every new call of that agent at once: `AgentPaused`, 423 `agent_paused`, naming
  how to resume (nothing is reserved or dispatched for a refused call);
* cuts every call of that agent in flight: a call waiting on the provider (its first byte,
  the next chunk of a stream, a whole non-streamed answer) is cancelled where it waits and
  raises `Cut` there; a call busy writing to its agent stops at its next chunk, or is
  cancelled outright after `CUT_GRACE_S`. The gateway settles each cut call for what the
  provider produced (a stream's text so far; a non-streamed answer nobody saw: its worst case).

Pauses are stored in host.db (`paused_agents`), committed before the operator's request is
answered, so a paused agent stays paused across a host restart until `resume`. A pause of
the fleet (`PAUSE_ALL`) also covers agents added later. A sub-agent follows its parent: a
pause of the parent refuses and cuts the sub-agent's calls too (its work is the parent's,
paid from the parent's carve-out), and resuming the parent resumes it. Each pause and
resume is audited (`llm.pause`, `llm.resume`) and evented (`PauseChanged`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, TypeVar

from legion.errors import LegionError
from legion.events import EventBus
from legion.mesh.audit import AuditLog
from legion.store import Store
from legion.wire.events import PauseChanged

log = logging.getLogger("legion.gateway")

PAUSE_ALL = "*"
# A cut call that is not waiting on the provider (it is writing to its agent) gets this
# long to notice at its next chunk before its task is cancelled outright.
CUT_GRACE_S = 0.5

T = TypeVar("T")


class AgentPaused(LegionError):
    status = 423
    code = "agent_paused"


@dataclass(frozen=True)
class Pause:
    target: str  # an agent, or PAUSE_ALL
    since: float
    by: str
    reason: str


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def paused_error(agent: str, pause: Pause, *, cut: bool = False) -> AgentPaused:
    fleet = pause.target == PAUSE_ALL
    how = "`legion resume --all`" if fleet else f"`legion resume {pause.target}`"
    if fleet:
        what = "the whole fleet's LLM calls are"
    elif pause.target != agent:  # a sub-agent, paused with its parent
        what = f"{agent}'s LLM calls are (a sub-agent of {pause.target}, which is)"
    else:
        what = f"{agent}'s LLM calls are"
    done = (
        "this call was cut where it was; what it produced is booked"
        if cut
        else "nothing was dispatched or reserved for this call"
    )
    why = f" ({pause.reason})" if pause.reason else ""
    return AgentPaused(
        f"{what} paused by the {pause.by} since {_when(pause.since)}{why}; {done}. "
        f"The operator resumes with {how} (or `fleet: Resume all` in the TUI)",
        agent=agent,
        scope="fleet" if fleet else "agent",
        paused_since=pause.since,
        cut=cut,
    )


class Cut(Exception):
    """Raised where a cut call was waiting; `error` is what its agent is told."""

    def __init__(self, error: AgentPaused) -> None:
        super().__init__(error.message)
        self.error = error


class Call:
    """One LLM call of `agent` in flight. Awaits on the provider go through `wait`, so a
    pause can cut them where they are."""

    def __init__(self, dispatch: Dispatch, agent: str) -> None:
        self.dispatch = dispatch
        self.agent = agent
        self.cut: AgentPaused | None = None
        self.closed = False
        self._task: asyncio.Task[object] | None = None
        self._waiting = False
        self._timer: asyncio.TimerHandle | None = None

    async def wait(self, awaitable: Awaitable[T]) -> T:
        """`await awaitable` (the provider), unless this call is cut: then raise `Cut`."""
        if self.cut is not None:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()  # never started: nothing to clean up, no warning
            raise Cut(self.cut)
        task = asyncio.current_task()
        self._task, self._waiting = task, True
        try:
            return await awaitable
        except asyncio.CancelledError:
            # Ours (the cut) when this call is cut and nobody else asked to cancel the task
            # (a host shutdown does too: then the cancellation goes on).
            if self.cut is None or task is None or task.uncancel() > 0:
                raise
            raise Cut(self.cut) from None
        finally:
            self._waiting = False

    def check(self) -> None:
        """Raise `Cut` when this call was cut (between two chunks of a stream)."""
        if self.cut is not None:
            raise Cut(self.cut)

    def _cut(self, error: AgentPaused) -> None:
        if self.cut is not None or self.closed:
            return
        self.cut = error
        if self._waiting and self._task is not None:
            self._task.cancel()  # lands in `wait`, which turns it into Cut
        else:
            self._timer = asyncio.get_running_loop().call_later(CUT_GRACE_S, self._force)

    def _force(self) -> None:
        """The call did not notice its cut (its agent does not read): cancel its task; the
        connection closes and the stream's cleanup settles it."""
        self._timer = None
        if not self.closed and self._task is not None and not self._task.done():
            self._task.cancel()

    def _close(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._task = None


class Dispatch:
    """The registry of calls in flight and the stored pauses."""

    def __init__(
        self,
        store: Store,
        audit: AuditLog,
        bus: EventBus,
        agents: Callable[[], Iterable[str]],
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.audit = audit
        self.bus = bus
        self.agents = agents  # the configured agent names, now
        self.clock = clock
        # A sub-agent's parent (the host sets it to its spawner's): its pause covers them.
        self.parent_of: Callable[[str], str | None] = lambda agent: None
        self.calls: dict[str, set[Call]] = {}
        self.pauses: dict[str, Pause] = {
            target: Pause(target, since, by, reason)
            for target, since, by, reason in store.execute(
                "SELECT agent, since, paused_by, reason FROM paused_agents"
            )
        }
        if self.pauses:
            log.warning(
                "LLM dispatch is paused (from before the restart); `legion resume` lifts it",
                extra={"fields": {"paused": sorted(self.pauses)}},
            )

    # --- the gateway's side ----------------------------------------------------------

    def paused(self, agent: str) -> Pause | None:
        pause = self.pauses.get(agent) or self.pauses.get(PAUSE_ALL)
        if pause is None and self.pauses and (parent := self.parent_of(agent)) is not None:
            pause = self.pauses.get(parent)
        return pause

    def check(self, agent: str) -> None:
        """Raise AgentPaused when `agent`'s calls are paused."""
        pause = self.paused(agent)
        if pause is not None:
            raise paused_error(agent, pause)

    def open(self, agent: str) -> Call:
        """Register a new call (AgentPaused when paused). Close it exactly once."""
        self.check(agent)
        call = Call(self, agent)
        self.calls.setdefault(agent, set()).add(call)
        return call

    def close(self, call: Call) -> None:
        if call.closed:
            return
        call._close()
        calls = self.calls.get(call.agent)
        if calls is not None:
            calls.discard(call)
            if not calls:
                del self.calls[call.agent]

    def in_flight(self, agent: str | None = None) -> int:
        if agent is None:
            return sum(len(c) for c in self.calls.values())
        return len(self.calls.get(agent, ()))

    # --- the operator's side -----------------------------------------------------------

    def paused_agents(self) -> list[str]:
        """Every configured agent whose calls are paused now."""
        return sorted(a for a in self.agents() if self.paused(a) is not None)

    def pause(self, target: str, *, by: str = "operator", reason: str = "") -> int:
        """Pause `target` (an agent, or PAUSE_ALL): stored, then every call of it in flight
        is cut. Returns how many were cut. Pausing what is paused keeps the first pause."""
        pause = self.pauses.get(target)
        if pause is None:
            pause = Pause(target, self.clock(), by, reason)
            with self.store.tx() as conn:
                conn.execute(
                    "INSERT OR REPLACE INTO paused_agents(agent, since, paused_by, reason)"
                    " VALUES (?,?,?,?)",
                    (pause.target, pause.since, pause.by, pause.reason),
                )
            self.pauses[target] = pause
        victims = [
            call
            for agent, calls in self.calls.items()
            if target in (PAUSE_ALL, agent, self.parent_of(agent))
            for call in calls
            if call.cut is None
        ]
        for call in victims:
            call._cut(paused_error(call.agent, pause, cut=True))
        self.audit.append(by, "llm.pause", target, "allow", cut=len(victims), reason=reason)
        self._announce("pause", target, by, reason, len(victims))
        return len(victims)

    def resume(self, target: str, *, by: str = "operator") -> None:
        """Resume `target`. PAUSE_ALL lifts every pause. One agent while the fleet is paused:
        the fleet pause becomes a pause of each other configured agent, so only it resumes."""
        now = self.clock()
        with self.store.tx() as conn:
            if target == PAUSE_ALL:
                conn.execute("DELETE FROM paused_agents")
                self.pauses.clear()
            else:
                fleet = self.pauses.pop(PAUSE_ALL, None)
                if fleet is not None:
                    conn.execute("DELETE FROM paused_agents WHERE agent = ?", (PAUSE_ALL,))
                    for other in self.agents():
                        if other != target and other not in self.pauses:
                            pause = Pause(other, fleet.since or now, fleet.by, fleet.reason)
                            conn.execute(
                                "INSERT OR REPLACE INTO paused_agents(agent, since, paused_by,"
                                " reason) VALUES (?,?,?,?)",
                                (other, pause.since, pause.by, pause.reason),
                            )
                            self.pauses[other] = pause
                conn.execute("DELETE FROM paused_agents WHERE agent = ?", (target,))
                self.pauses.pop(target, None)
        self.audit.append(by, "llm.resume", target, "allow")
        self._announce("resume", target, by, "", 0)

    def _announce(
        self, action: Literal["pause", "resume"], target: str, by: str, reason: str, cut: int
    ) -> None:
        self.bus.publish(
            PauseChanged(
                at=self.clock(),
                action=action,
                target=target,
                by=by,
                reason=reason,
                cut=cut,
                paused=self.paused_agents(),
                fleet=PAUSE_ALL in self.pauses,
            )
        )
