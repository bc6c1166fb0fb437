"""The human hand-off: an agent asks the operator to take over its browser (a login, a
CAPTCHA), waits (long-polls, up to `[browser] human_timeout_s`), and resumes with the
operator's note when `legion browser done` ends it. Every step is evented and audited."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from legion.errors import LegionError
from legion.wire.browser import BrowserInfo, HumanState
from legion.wire.events import AgentNotification, BrowserHandoff

if TYPE_CHECKING:
    from legion.browser.manager import Browsers


@dataclass
class Human:
    reason: str
    requested_at: float
    done: asyncio.Event = field(default_factory=asyncio.Event)
    note: str = ""


async def request(browsers: Browsers, agent: str, reason: str) -> HumanState:
    slot = await browsers.ensure(agent)
    if slot.human is None:
        slot.human = Human(reason, browsers.host.clock())
    browsers.host.audit.append(agent, "browser.human_requested", "operator", "allow", reason=reason)
    browsers.host.bus.publish(
        BrowserHandoff(
            at=browsers.host.clock(), agent=agent, state="requested", reason=reason, url=slot.url
        )
    )
    browsers.host.bus.publish(
        AgentNotification(
            at=browsers.host.clock(),
            agent=agent,
            level="warning",
            text=f"{agent} asks for a human in its browser: {reason} "
            f"(`legion browser handoff {agent}`, then `legion browser done {agent}`)",
        )
    )
    return HumanState(state="waiting", reason=reason)


async def wait(browsers: Browsers, agent: str, wait_s: float) -> HumanState:
    slot = browsers.slot(agent)
    human = slot.human
    if human is None:
        return HumanState(state="done", note="no hand-off is pending")
    wait = min(wait_s, browsers.host.config.host.long_poll_max_s)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(human.done.wait(), wait)
    slot.last_used = browsers.monotonic()
    if human.done.is_set():
        if slot.human is human:
            slot.human = None
        return HumanState(state="done", reason=human.reason, note=human.note)
    if browsers.host.clock() - human.requested_at > browsers.config.human_timeout_s:
        slot.human = None
        browsers.host.audit.append("host", "browser.human_expired", agent, "allow")
        browsers.host.bus.publish(
            BrowserHandoff(
                at=browsers.host.clock(), agent=agent, state="expired", reason=human.reason
            )
        )
        return HumanState(
            state="expired",
            reason=human.reason,
            note=f"no operator answered within {browsers.config.human_timeout_s:g}s",
        )
    return HumanState(state="waiting", reason=human.reason)


async def done(browsers: Browsers, agent: str, note: str, actor: str = "operator") -> BrowserInfo:
    slot = browsers.slot(agent)
    human = slot.human
    await browsers.handoffs.close_agent(agent, "done")
    if slot.channel is not None and slot.channel.attached:
        with contextlib.suppress(LegionError):
            await browsers.call(slot, "vnc_stop", {})
    browsers.host.audit.append(
        actor, "browser.handoff_done", agent, "allow", pending=human is not None, note=note
    )
    if human is not None:
        human.note = note or "the operator is done"
        human.done.set()
        slot.human = None
    browsers.host.bus.publish(
        BrowserHandoff(
            at=browsers.host.clock(),
            agent=agent,
            state="done",
            reason=human.reason if human else "",
            url=slot.url,
        )
    )
    return browsers.info(agent)
