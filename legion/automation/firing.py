"""Firing due cron runs (the firing half of `legion.automation.cron.CronJobs`).

Guarantees (docs/automation.md, "Cron: what runs when"):

* **A slot runs at most once.** A scheduled run's row is unique per (job, slot), and it
  is inserted in the same transaction as what the run does: the inbox item of a message
  job, the blackboard write / publish / message of a tool job. A crash before the commit
  leaves neither (the slot is still due after the restart); a crash after it leaves both
  (the slot is done). So enqueueing is exactly-once; handling the inbox item is
  at-least-once, as for every inbox item (a turn cut short by a crash runs again: the
  item carries `cron.run` so an agent can tell).
* **Missed runs** (the host was down past a slot by more than `missed_grace_s`): `skip`
  counts them and waits for the next slot; `run_once` runs once now for all of them.
* **Overlap**: a slot whose job's previous run is still going (its inbox item not
  handled) is skipped and counted (`overlaps`).
* **A bad job** (its agent removed, its schedule or time zone no longer valid) is marked
  failed with the reason; the others keep running. `resume` checks it again.

All the due jobs of one moment are fired in one transaction (one fsync), then the next
slots are computed and stored: a lost `next_run_at` only means the slot is found done.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import apsw

from legion.automation import tools
from legion.automation.schedule import Schedule, zone
from legion.errors import LegionError
from legion.wire.automation import CronRun
from legion.wire.events import CronRunEvent

if TYPE_CHECKING:
    from legion.host import Host
    from legion.store import Store

log = logging.getLogger("legion.cron")

SENDER_PREFIX = "cron:"
MISSED_COUNT_CAP = 1000
COLUMNS = (
    "id, agent, name, schedule, timezone, action, missed, state, reason, created_by, "
    "created_at, anchor, next_run_at, last_run_at, runs, overlaps, missed_runs, failures"
)


@dataclass
class Job:
    id: int
    agent: str
    name: str
    schedule: str
    timezone: str
    action: dict[str, Any]
    missed: str
    state: str
    reason: str
    created_by: str
    created_at: float
    anchor: int
    next_run_at: int | None
    last_run_at: float | None
    runs: int
    overlaps: int
    missed_runs: int
    failures: int

    @classmethod
    def of(cls, row: Any) -> Job:
        values = list(row)
        values[5] = json.loads(values[5])
        return cls(*values)


@dataclass
class Planned:
    job: Job
    slot: int
    trigger: str


class Firing(ABC):
    """What CronJobs needs to fire runs; the state is CronJobs'."""

    host: Host
    store: Store
    clock: Any
    due: dict[int, int]
    in_flight: dict[int, int]

    @property
    def config(self) -> Any:
        return self.host.config.automation

    @abstractmethod
    def schedule_of(self, text: str) -> Schedule:
        """The parsed schedule of a job's text (CronJobs caches them)."""

    @abstractmethod
    def runs(self, job_id: int, limit: int = 50) -> list[CronRun]:
        """A job's recent runs, newest first."""

    def _running(self, job: Job) -> bool:
        item = self.in_flight.get(job.id)
        return item is not None and self._item_exists(item)

    def _item_exists(self, item_id: int) -> bool:
        row = self.store.execute("SELECT 1 FROM inbox WHERE id = ?", (item_id,)).fetchone()
        return row is not None

    def _fail(self, job: Job, reason: str) -> None:
        log.warning(
            "cron job failed; the others keep running",
            extra={"fields": {"job": job.id, "agent": job.agent, "reason": reason}},
        )
        with self.store.tx() as conn:
            conn.execute(
                "UPDATE cron_jobs SET state = 'failed', reason = ?, next_run_at = NULL,"
                " failures = failures + 1 WHERE id = ?",
                (reason, job.id),
            )
        self.due.pop(job.id, None)
        self.host.audit.append("host", "cron.failed", job.agent, "deny", job=job.id, reason=reason)
        self.host.bus.publish(
            CronRunEvent(
                at=self.clock(),
                job_id=job.id,
                agent=job.agent,
                name=job.name,
                run_id=None,
                status="failed",
                detail=reason,
            )
        )

    def next_due(self) -> int | None:
        return min(self.due.values()) if self.due else None

    def fire_due(self, now: float | None = None) -> int:
        """Run every job whose slot has come; returns how many runs were dispatched."""
        now = self.clock() if now is None else now
        ids = [job_id for job_id, at in self.due.items() if at <= now]
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        jobs = [
            Job.of(r)
            for r in self.store.execute(
                f"SELECT {COLUMNS} FROM cron_jobs WHERE id IN ({marks}) ORDER BY next_run_at, id",
                tuple(ids),
            )
        ]
        grace = self.config.missed_grace_s
        plan: list[Planned] = []
        skipped: dict[int, tuple[str, int]] = {}  # job -> (overlap | missed, count)
        for job in jobs:
            if job.state != "active" or job.next_run_at is None:
                self.due.pop(job.id, None)
                continue
            problem = self._problem(job)
            if problem:
                self._fail(job, problem)
                continue
            slot = job.next_run_at
            if now - slot > grace:
                missed = self._count_slots(job, slot, now)
                if job.missed == "run_once" and not self._running(job):
                    if missed > 1:
                        skipped[job.id] = ("missed", missed - 1)
                    plan.append(Planned(job, slot, "missed"))
                else:
                    skipped[job.id] = ("missed", missed)
                continue
            if self._running(job):
                skipped[job.id] = ("overlap", 1)
                continue
            plan.append(Planned(job, slot, "schedule"))
        dispatched = self._dispatch(plan) if plan else 0
        if skipped:
            self._record_skips(jobs, skipped, now)
        self._advance([j for j in jobs if j.id in self.due], now)
        return dispatched

    def _problem(self, job: Job) -> str:
        if job.agent not in self.host.config.agents:
            return f"agent {job.agent} is no longer configured"
        try:
            schedule = self.schedule_of(job.schedule)
            zone(job.timezone)
        except LegionError as exc:
            return exc.message
        return f"{schedule.text!r} never runs: {schedule.never}" if schedule.never else ""

    def _count_slots(self, job: Job, first: int, now: float) -> int:
        schedule = self.schedule_of(job.schedule)
        if schedule.every_s is not None:
            return int((now - first) // schedule.every_s) + 1
        tz = zone(job.timezone)
        count, at = 1, first
        while count < MISSED_COUNT_CAP:
            at = schedule.next_after(at, tz, job.anchor)
            if at > now:
                break
            count += 1
        return count

    def _dispatch(self, plan: list[Planned]) -> int:
        """Insert each run with what it does, all in one transaction (a run whose slot is
        already done is left out); then events, audit records and the failures."""
        host = self.host
        started = self.clock()
        done: list[tuple[Planned, int, int | None, str]] = []
        failed: list[tuple[Planned, str]] = []
        notes: list[tools.AuditNote] = []
        with self.store.tx() as conn:
            for planned in plan:
                job = planned.job
                try:
                    with conn:  # a savepoint: one job's failure leaves the others' runs
                        conn.execute(
                            "INSERT INTO cron_runs(job_id, agent, slot, trigger, started_at,"
                            " status) VALUES (?,?,?,?,?, 'dispatched')",
                            (job.id, job.agent, planned.slot, planned.trigger, started),
                        )
                        run_id = int(conn.last_insert_rowid())
                        item_id, detail = self._act(job, planned, run_id, notes)
                        conn.execute(
                            "UPDATE cron_runs SET item_id = ?, status = ?, detail = ?,"
                            " finished_at = ? WHERE id = ?",
                            (
                                item_id,
                                "dispatched" if item_id is not None else "done",
                                detail,
                                None if item_id is not None else started,
                                run_id,
                            ),
                        )
                        conn.execute(
                            "UPDATE cron_jobs SET runs = runs + 1, last_run_at = ? WHERE id = ?",
                            (started, job.id),
                        )
                    done.append((planned, run_id, item_id, detail))
                except apsw.ConstraintError:
                    log.info(
                        "cron slot already ran; not running it again",
                        extra={"fields": {"job": job.id, "slot": planned.slot}},
                    )
                except LegionError as exc:
                    failed.append((planned, exc.message))
            for planned, why in failed:
                job = planned.job
                conn.execute(
                    "INSERT OR IGNORE INTO cron_runs(job_id, agent, slot, trigger, started_at,"
                    " status, detail, finished_at) VALUES (?,?,?,?,?, 'failed', ?, ?)",
                    (job.id, job.agent, planned.slot, planned.trigger, started, why, started),
                )
                conn.execute(
                    "UPDATE cron_jobs SET failures = failures + 1, last_run_at = ? WHERE id = ?",
                    (started, job.id),
                )
        committed = self.clock()
        for planned, run_id, item_id, detail in done:
            job = planned.job
            if item_id is not None:
                self.in_flight[job.id] = item_id
            host.bus.publish(
                CronRunEvent(
                    at=committed,
                    job_id=job.id,
                    agent=job.agent,
                    name=job.name,
                    run_id=run_id,
                    status="dispatched" if item_id is not None else "done",
                    lateness_s=max(0.0, committed - planned.slot),
                    detail=detail if item_id is None else f"inbox item {item_id}",
                )
            )
        for planned, why in failed:
            job = planned.job
            host.bus.publish(
                CronRunEvent(
                    at=committed,
                    job_id=job.id,
                    agent=job.agent,
                    name=job.name,
                    run_id=None,
                    status="failed",
                    lateness_s=max(0.0, committed - planned.slot),
                    detail=why,
                )
            )
        records = [
            (p.job.agent, "cron.run", p.job.name, "allow", p.job.id, p.trigger)
            for p, _, _, _ in done
        ]
        for note in notes:
            host.audit.append(
                note.actor, note.action, note.target, note.decision, durable=False, **note.detail
            )
        for i, (agent, action, name, decision, job_id, trigger) in enumerate(records):
            host.audit.append(
                agent,
                action,
                name,
                decision,
                durable=i == len(records) - 1,
                job=job_id,
                trigger=trigger,
            )
        return len(done)

    def _act(
        self, job: Job, planned: Planned, run_id: int, notes: list[tools.AuditNote]
    ) -> tuple[int | None, str]:
        """What a run does: queue its message (returns the inbox item) or run its tool."""
        action = job.action
        if action.get("tool"):
            detail = tools.invoke(
                self.host, job.agent, action["tool"], action["args"], job.id, notes
            )
            return None, detail
        marker = {
            "job": job.id,
            "name": job.name,
            "run": run_id,
            "slot": planned.slot,
            "trigger": planned.trigger,
        }
        message = action.get("message")
        payload = (
            {**message, "cron": marker}
            if isinstance(message, dict)
            else {
                "text": message if isinstance(message, str) else json.dumps(message),
                "cron": marker,
            }
        )
        item_id = self.host.inboxes.send(f"{SENDER_PREFIX}{job.id}", job.agent, payload)
        return item_id, ""

    def _record_skips(
        self, jobs: list[Job], skipped: dict[int, tuple[str, int]], now: float
    ) -> None:
        with self.store.tx(durable=False) as conn:
            for job_id, (kind, count) in skipped.items():
                column = "overlaps" if kind == "overlap" else "missed_runs"
                conn.execute(
                    f"UPDATE cron_jobs SET {column} = {column} + ? WHERE id = ?", (count, job_id)
                )
        by_id = {j.id: j for j in jobs}
        for job_id, (kind, count) in skipped.items():
            job = by_id[job_id]
            self.host.bus.publish(
                CronRunEvent(
                    at=now,
                    job_id=job_id,
                    agent=job.agent,
                    name=job.name,
                    run_id=None,
                    status="overlap" if kind == "overlap" else "missed",
                    detail=(
                        f"previous run (inbox item {self.in_flight.get(job_id)}) still going"
                        if kind == "overlap"
                        else f"{count} run(s) missed while the host was down ({job.missed})"
                    ),
                )
            )

    def _advance(self, jobs: list[Job], now: float) -> None:
        """Store each fired job's next slot (after `now`)."""
        updates: list[tuple[int, int]] = []
        for job in jobs:
            try:
                schedule = self.schedule_of(job.schedule)
                next_at = schedule.next_after(now, zone(job.timezone), job.anchor)
            except LegionError as exc:
                self._fail(job, exc.message)
                continue
            updates.append((next_at, job.id))
            self.due[job.id] = next_at
        if updates:
            with self.store.tx(durable=False) as conn:
                conn.executemany("UPDATE cron_jobs SET next_run_at = ? WHERE id = ?", updates)

    # --- results ----------------------------------------------------------------------

    def finished(
        self, agent: str, item_id: int, job_id: int, text: str, *, failed: bool = False
    ) -> None:
        """The agent answered a run's inbox item: the run is done (or `failed`: the agent's
        turn failed or was refused, and its answer says why)."""
        now = self.clock()
        status = "failed" if failed else "done"
        with self.store.tx(durable=False) as conn:
            conn.execute(
                "UPDATE cron_runs SET status = ?, finished_at = ?, detail = ? WHERE agent = ?"
                " AND item_id = ? AND status = 'dispatched'",
                (status, now, text[:2000], agent, item_id),
            )
            changed = conn.changes() > 0
        if self.in_flight.get(job_id) == item_id:
            del self.in_flight[job_id]
        if changed:
            row = self.store.execute(
                "SELECT id, name FROM cron_jobs WHERE id = ?", (job_id,)
            ).fetchone()
            run = self.store.execute(
                "SELECT id FROM cron_runs WHERE agent = ? AND item_id = ?", (agent, item_id)
            ).fetchone()
            if row is not None:
                self.host.bus.publish(
                    CronRunEvent(
                        at=now,
                        job_id=job_id,
                        agent=agent,
                        name=str(row[1]),
                        run_id=int(run[0]) if run else None,
                        status=status,
                        detail=text[:200],
                    )
                )
