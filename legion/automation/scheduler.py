"""The automation scheduler: owned by the host, its loops in the host's task group.

    host.automation = Automation(host)
    await host.automation.start(host._tasks)    # in Host.running, after the sockets
    ...
    await host.automation.close()               # before the HTTP server closes

Two loops: `cron` sleeps until the next due slot (or a change of the jobs) and fires
everything due at once; `housekeeping` ticks once a second for the wake checks and the
lanes' depth events, and prunes old runs, replay ids and webhook jobs every minute. An
error in a tick is logged and the loop goes on: one bad job never stops the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from legion.automation.cron import CronJobs
from legion.automation.firing import SENDER_PREFIX as CRON_SENDER
from legion.automation.lanes import Lanes
from legion.automation.wake import WakeChecks
from legion.automation.webhooks import SENDER_PREFIX as WEBHOOK_SENDER
from legion.automation.webhooks import Webhooks
from legion.wire import rules

if TYPE_CHECKING:
    from legion.host import Host
    from legion.wire.agent import ReplyRequest

log = logging.getLogger("legion.automation")

MAX_SLEEP_S = 30.0  # the cron loop re-reads the wall clock at least this often
TICK_S = 1.0
PRUNE_EVERY_S = 60.0
ERROR_BACKOFF_S = 1.0


class Automation:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.cron = CronJobs(host)
        self.wake = WakeChecks(host)
        self.lanes = Lanes(host)
        self.webhooks = Webhooks(host)
        self._changed = asyncio.Event()

    async def start(self, tasks: set[asyncio.Task[None]]) -> None:
        """Load the jobs, fire what is due (missed runs follow their policy), open the
        webhook listener, and start the loops in `tasks` (the host's)."""
        await asyncio.to_thread(rules.timezones)  # read the zone database off the loop, once
        self.cron.load()
        self.fire()
        await self.webhooks.start()
        tasks.add(asyncio.create_task(self._cron_forever(), name="cron"))
        tasks.add(asyncio.create_task(self._housekeeping_forever(), name="automation"))

    async def close(self) -> None:
        await self.webhooks.close()

    def wake_scheduler(self) -> None:
        """The jobs changed: the cron loop looks at its next due slot again."""
        self._changed.set()

    def fire(self) -> int:
        try:
            return self.cron.fire_due()
        except Exception:
            log.exception("firing cron jobs failed; retrying")
            return 0

    async def _cron_forever(self) -> None:
        while True:
            self._changed.clear()
            fired_ok = True
            try:
                self.cron.fire_due()
            except Exception:
                log.exception("firing cron jobs failed; retrying in a second")
                fired_ok = False
            nxt = self.cron.next_due()
            delay = MAX_SLEEP_S if nxt is None else max(0.0, nxt - self.host.clock())
            if not fired_ok:
                delay = max(delay, ERROR_BACKOFF_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(delay, MAX_SLEEP_S))

    async def _housekeeping_forever(self) -> None:
        since_prune = 0.0
        while True:
            await asyncio.sleep(TICK_S)
            try:
                await self.wake.check_due()
                self.lanes.sample()
                since_prune += TICK_S
                if since_prune >= PRUNE_EVERY_S:
                    since_prune = 0.0
                    self.cron.prune()
                    self.webhooks.prune()
            except Exception:
                log.exception("automation housekeeping failed; retrying next tick")

    # --- hooks of the host ------------------------------------------------------------

    def on_reply(self, agent: str, body: ReplyRequest, origin: tuple[str, str] | None) -> None:
        """An agent answered an item: a cron run's or a webhook job's result is kept."""
        if origin is None or body.in_reply_to is None:
            return
        sender = origin[0]
        if sender.startswith(CRON_SENDER):
            try:
                job_id = int(sender[len(CRON_SENDER) :])
            except ValueError:
                return
            self.cron.finished(
                agent, body.in_reply_to, job_id, body.text, failed=body.error is not None
            )
        elif sender.startswith(WEBHOOK_SENDER):
            self.webhooks.finished(
                agent,
                body.in_reply_to,
                {
                    "text": body.text,
                    "kind": body.kind,
                    "result": body.result,
                    "error": None if body.error is None else body.error.model_dump(),
                },
            )

    def status_fields(self, agent: str, counts: dict[str, tuple[int, int]]) -> dict[str, Any]:
        """The automation fields of `agent`'s AgentStatus."""
        waiting, in_progress, steers = self.lanes.depth(agent)
        jobs, failed = counts.get(agent, (0, 0))
        return {
            "queue_depth": waiting,
            "in_progress": in_progress,
            "steers_waiting": steers,
            "cron_jobs": jobs,
            "cron_failed": failed,
            "wake": self.wake.status(agent),
        }
