"""Cron jobs in host.db: create, change, list, pause, resume, run; and firing due runs.

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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import apsw

from legion.automation import tools
from legion.automation.schedule import BadSchedule, Schedule, host_timezone, parse_schedule, zone
from legion.errors import Conflict, Forbidden, LegionError, NotFound
from legion.wire.automation import CronJob, CronRun, CronSet
from legion.wire.events import CronRunEvent

if TYPE_CHECKING:
    from legion.host import Host

log = logging.getLogger("legion.cron")

SENDER_PREFIX = "cron:"
_COLUMNS = (
    "id, agent, name, schedule, timezone, action, missed, state, reason, created_by, "
    "created_at, anchor, next_run_at, last_run_at, runs, overlaps, missed_runs, failures"
)
MISSED_COUNT_CAP = 1000


class CronLimit(LegionError):
    status = 409
    code = "cron_limit"


@dataclass
class _Job:
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
    def of(cls, row: Any) -> _Job:
        values = list(row)
        values[5] = json.loads(values[5])
        return cls(*values)


@dataclass
class _Planned:
    job: _Job
    slot: int
    trigger: str


class CronJobs:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.store = host.store
        self.clock = host.clock
        self.due: dict[int, int] = {}  # active job id -> its next slot
        self.in_flight: dict[int, int] = {}  # job id -> inbox item of its running run
        self._schedules: dict[str, Schedule] = {}
        self.host_tz = host_timezone()

    @property
    def config(self) -> Any:
        return self.host.config.automation

    # --- loading ----------------------------------------------------------------------

    def load(self) -> None:
        """Read the active jobs and the runs still going (at host start)."""
        self.due = {
            int(r[0]): int(r[1])
            for r in self.store.execute(
                "SELECT id, next_run_at FROM cron_jobs WHERE state = 'active' AND "
                "next_run_at IS NOT NULL"
            )
        }
        self.in_flight = {}
        for job_id, item_id in self.store.execute(
            "SELECT r.job_id, r.item_id FROM cron_runs r WHERE r.status = 'dispatched' AND "
            "r.item_id IS NOT NULL AND r.id = (SELECT MAX(id) FROM cron_runs WHERE job_id = "
            "r.job_id)"
        ):
            self.in_flight[int(job_id)] = int(item_id)

    def _get(self, job_id: int) -> _Job:
        row = self.store.execute(
            f"SELECT {_COLUMNS} FROM cron_jobs WHERE id = ?", (job_id,)
        ).fetchone()
        if row is None:
            raise NotFound(
                f"no cron job {job_id}; `legion cron ls` lists them", code="unknown_job"
            )
        return _Job.of(row)

    def _by_name(self, agent: str, name: str) -> _Job | None:
        row = self.store.execute(
            f"SELECT {_COLUMNS} FROM cron_jobs WHERE agent = ? AND name = ?", (agent, name)
        ).fetchone()
        return None if row is None else _Job.of(row)

    def schedule_of(self, text: str) -> Schedule:
        schedule = self._schedules.get(text)
        if schedule is None:
            schedule = parse_schedule(text, min_interval_s=self.config.min_interval_s)
            self._schedules[text] = schedule
        return schedule

    # --- views ------------------------------------------------------------------------

    def _running(self, job: _Job) -> bool:
        item = self.in_flight.get(job.id)
        return item is not None and self._item_exists(item)

    def _item_exists(self, item_id: int) -> bool:
        row = self.store.execute("SELECT 1 FROM inbox WHERE id = ?", (item_id,)).fetchone()
        return row is not None

    def view(self, job: _Job) -> CronJob:
        action = job.action
        schedule_kind = "every" if job.schedule.lower().startswith("every") else "cron"
        return CronJob(
            id=job.id,
            agent=job.agent,
            name=job.name,
            schedule=job.schedule,
            kind=schedule_kind,
            timezone=job.timezone,
            mode="tool" if action.get("tool") else "message",
            message=action.get("message"),
            tool=action.get("tool"),
            args=action.get("args") or {},
            missed=job.missed,  # type: ignore[arg-type]
            state=job.state,  # type: ignore[arg-type]
            reason=job.reason,
            created_by=job.created_by,
            created_at=job.created_at,
            next_run_at=job.next_run_at if job.state == "active" else None,
            last_run_at=job.last_run_at,
            running=self._running(job),
            runs=job.runs,
            overlaps=job.overlaps,
            missed_runs=job.missed_runs,
            failures=job.failures,
        )

    def list(self, agent: str | None = None) -> list[CronJob]:
        if agent is None:
            rows = self.store.execute(f"SELECT {_COLUMNS} FROM cron_jobs ORDER BY agent, name")
        else:
            rows = self.store.execute(
                f"SELECT {_COLUMNS} FROM cron_jobs WHERE agent = ? ORDER BY name", (agent,)
            )
        return [self.view(_Job.of(r)) for r in rows]

    def get(self, job_id: int) -> CronJob:
        return self.view(self._get(job_id))

    def summary(self, agent: str) -> list[str]:
        """One line per active job of `agent`, for its prompt's runtime context."""
        return [
            f"{j.name} ({j.schedule}, {j.timezone}"
            + (f", tool {j.tool}" if j.tool else "")
            + ")"
            for j in self.list(agent)
            if j.state == "active"
        ]

    def counts(self) -> dict[str, tuple[int, int]]:
        """agent -> (jobs, failed jobs)."""
        return {
            str(a): (int(n), int(f or 0))
            for a, n, f in self.store.execute(
                "SELECT agent, COUNT(*), SUM(state = 'failed') FROM cron_jobs GROUP BY agent"
            )
        }

    def runs(self, job_id: int, limit: int = 50) -> list[CronRun]:
        self._get(job_id)
        rows = self.store.execute(
            "SELECT id, job_id, slot, trigger, started_at, status, item_id, detail, finished_at"
            " FROM cron_runs WHERE job_id = ? ORDER BY id DESC LIMIT ?",
            (job_id, limit),
        )
        return [
            CronRun(
                id=r[0],
                job_id=r[1],
                slot=r[2],
                trigger=r[3],
                started_at=r[4],
                status=r[5],
                item_id=r[6],
                detail=r[7],
                finished_at=r[8],
            )
            for r in rows
        ]

    # --- changes ----------------------------------------------------------------------

    def _validate(self, agent: str, body: CronSet) -> tuple[Schedule, str, dict[str, Any]]:
        if agent not in self.host.config.agents:
            raise NotFound(
                f"no agent named {agent!r}; `legion agents ls` lists them", code="unknown_agent"
            )
        schedule = self.schedule_of(body.schedule)
        tz_name = body.timezone or self.config.timezone or self.host_tz
        zone(tz_name)
        if body.tool is not None:
            if body.message is not None:
                raise BadSchedule(
                    "a job has a message or a tool, not both", code="invalid_job"
                ) from None
            tools.check_tool(body.tool, body.args)
            action: dict[str, Any] = {"tool": body.tool, "args": body.args}
        else:
            if body.message is None:
                raise BadSchedule(
                    "a job needs a message (sent to the agent at each run) or a tool",
                    code="invalid_job",
                )
            if body.args:
                raise BadSchedule("args go with tool; a message job has none", code="invalid_job")
            action = {"message": body.message}
        text = json.dumps(action, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        if len(text.encode()) > 64 * 1024:
            raise BadSchedule("a job's message or args are at most 64 KiB of JSON")
        return schedule, tz_name, action

    def upsert(
        self, agent: str, name: str, body: CronSet, created_by: str, *, paused: bool = False
    ) -> CronJob:
        """Create the job `name` of `agent`, or replace what it runs and when (its counters
        stay). An agent (not the operator) is held to `max_jobs_per_agent`."""
        schedule, tz_name, action = self._validate(agent, body)
        now = self.clock()
        existing = self._by_name(agent, name)
        if existing is None and created_by != "operator":
            count = self.store.execute(
                "SELECT COUNT(*) FROM cron_jobs WHERE agent = ?", (agent,)
            ).fetchone()
            cap = self.config.max_jobs_per_agent
            if count is not None and int(count[0]) >= cap:
                raise CronLimit(
                    f"{agent} has {count[0]} cron jobs, the most it may have "
                    f"([automation] max_jobs_per_agent = {cap}); remove one first",
                    limit=cap,
                )
        anchor = int(now)
        state = "paused" if paused else "active"
        next_at = None if paused else schedule.next_after(now, zone(tz_name), anchor)
        action_text = json.dumps(action, separators=(",", ":"), ensure_ascii=False)
        with self.store.tx() as conn:
            if existing is None:
                conn.execute(
                    "INSERT INTO cron_jobs(agent, name, schedule, timezone, action, missed, state,"
                    " created_by, created_at, anchor, next_run_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        agent,
                        name,
                        schedule.text,
                        tz_name,
                        action_text,
                        body.missed,
                        state,
                        created_by,
                        now,
                        anchor,
                        next_at,
                    ),
                )
                job_id = int(conn.last_insert_rowid())
            else:
                job_id = existing.id
                conn.execute(
                    "UPDATE cron_jobs SET schedule = ?, timezone = ?, action = ?, missed = ?,"
                    " state = ?, reason = '', anchor = ?, next_run_at = ? WHERE id = ?",
                    (schedule.text, tz_name, action_text, body.missed, state, anchor, next_at, job_id),
                )
        self._set_due(job_id, next_at)
        return self.get(job_id)

    def _set_due(self, job_id: int, next_at: int | None) -> None:
        if next_at is None:
            self.due.pop(job_id, None)
        else:
            self.due[job_id] = next_at
        self.host.automation.wake_scheduler()

    def remove(self, job_id: int) -> bool:
        with self.store.tx() as conn:
            conn.execute("DELETE FROM cron_jobs WHERE id = ?", (job_id,))
            removed = conn.changes() > 0
            conn.execute("DELETE FROM cron_runs WHERE job_id = ?", (job_id,))
        self.due.pop(job_id, None)
        self.in_flight.pop(job_id, None)
        return removed

    def remove_by_name(self, agent: str, name: str) -> int:
        job = self._by_name(agent, name)
        if job is None:
            raise NotFound(f"{agent} has no cron job named {name!r}", code="unknown_job")
        self.remove(job.id)
        return job.id

    def pause(self, job_id: int) -> CronJob:
        self._get(job_id)
        with self.store.tx() as conn:
            conn.execute(
                "UPDATE cron_jobs SET state = 'paused', next_run_at = NULL WHERE id = ?", (job_id,)
            )
        self._set_due(job_id, None)
        return self.get(job_id)

    def resume(self, job_id: int) -> CronJob:
        """Active again from now (no catch-up of what it missed while paused); a failed job
        is checked again first and stays failed, with the reason, if still broken."""
        job = self._get(job_id)
        body = CronSet(
            schedule=job.schedule,
            timezone=job.timezone,
            message=job.action.get("message"),
            tool=job.action.get("tool"),
            args=job.action.get("args") or {},
            missed=job.missed,  # type: ignore[arg-type]
        )
        self._schedules.pop(job.schedule, None)
        try:
            schedule, tz_name, _ = self._validate(job.agent, body)
        except LegionError as exc:
            self._fail(job, exc.message)
            raise Conflict(f"job {job_id} cannot resume: {exc.message}", code="job_broken") from None
        now = self.clock()
        next_at = schedule.next_after(now, zone(tz_name), job.anchor)
        with self.store.tx() as conn:
            conn.execute(
                "UPDATE cron_jobs SET state = 'active', reason = '', next_run_at = ? WHERE id = ?",
                (next_at, job_id),
            )
        self._set_due(job_id, next_at)
        return self.get(job_id)

    def _fail(self, job: _Job, reason: str) -> None:
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

    def run_now(self, job_id: int, actor: str) -> CronRun:
        """Run a job once now, whatever its schedule (`legion cron run`)."""
        job = self._get(job_id)
        if job.state == "failed":
            raise Conflict(f"job {job_id} failed ({job.reason}); resume it first", code="job_broken")
        if self._running(job):
            raise Conflict(
                f"job {job_id}'s previous run is still going (inbox item "
                f"{self.in_flight[job.id]}); wait for it",
                code="job_running",
            )
        now = self.clock()
        self._dispatch([_Planned(job, int(now), "manual")])
        return self.runs(job_id, 1)[0]

    # --- firing -----------------------------------------------------------------------

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
            _Job.of(r)
            for r in self.store.execute(
                f"SELECT {_COLUMNS} FROM cron_jobs WHERE id IN ({marks}) ORDER BY next_run_at, id",
                ids,
            )
        ]
        grace = self.config.missed_grace_s
        plan: list[_Planned] = []
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
                    plan.append(_Planned(job, slot, "missed"))
                else:
                    skipped[job.id] = ("missed", missed)
                continue
            if self._running(job):
                skipped[job.id] = ("overlap", 1)
                continue
            plan.append(_Planned(job, slot, "schedule"))
        dispatched = self._dispatch(plan) if plan else 0
        if skipped:
            self._record_skips(jobs, skipped, now)
        self._advance([j for j in jobs if j.id in self.due], now)
        return dispatched

    def _problem(self, job: _Job) -> str:
        if job.agent not in self.host.config.agents:
            return f"agent {job.agent} is no longer configured"
        try:
            self.schedule_of(job.schedule)
            zone(job.timezone)
        except LegionError as exc:
            return exc.message
        return ""

    def _count_slots(self, job: _Job, first: int, now: float) -> int:
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

    def _dispatch(self, plan: list[_Planned]) -> int:
        """Insert each run with what it does, all in one transaction (a run whose slot is
        already done is left out); then events, audit records and the failures."""
        host = self.host
        started = self.clock()
        done: list[tuple[_Planned, int, int | None, str]] = []
        failed: list[tuple[_Planned, str]] = []
        notes: list[tools.AuditNote] = []
        with self.store.tx() as conn:
            for planned in plan:
                job = planned.job
                try:
                    with conn:  # a savepoint: one job's failure leaves the others' runs
                        conn.execute(
                            "INSERT INTO cron_runs(job_id, agent, slot, trigger, started_at, status)"
                            " VALUES (?,?,?,?,?, 'dispatched')",
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
        self, job: _Job, planned: _Planned, run_id: int, notes: list[tools.AuditNote]
    ) -> tuple[int | None, str]:
        """What a run does: queue its message (returns the inbox item) or run its tool."""
        action = job.action
        if action.get("tool"):
            detail = tools.invoke(self.host, job.agent, action["tool"], action["args"], job.id, notes)
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
            else {"text": message if isinstance(message, str) else json.dumps(message), "cron": marker}
        )
        item_id = self.host.inboxes.send(f"{SENDER_PREFIX}{job.id}", job.agent, payload)
        return item_id, ""

    def _record_skips(self, jobs: list[_Job], skipped: dict[int, tuple[str, int]], now: float) -> None:
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

    def _advance(self, jobs: list[_Job], now: float) -> None:
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

    def finished(self, agent: str, item_id: int, job_id: int, text: str) -> None:
        """The agent answered a run's inbox item: the run is done."""
        now = self.clock()
        with self.store.tx(durable=False) as conn:
            conn.execute(
                "UPDATE cron_runs SET status = 'done', finished_at = ?, detail = ? WHERE agent = ?"
                " AND item_id = ? AND status = 'dispatched'",
                (now, text[:2000], agent, item_id),
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
                        status="done",
                        detail=text[:200],
                    )
                )

    def prune(self) -> None:
        """Keep the last `keep_runs` runs of each job."""
        keep = self.config.keep_runs
        with self.store.tx(durable=False) as conn:
            conn.execute(
                "DELETE FROM cron_runs WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER"
                " (PARTITION BY job_id ORDER BY id DESC) AS n FROM cron_runs) WHERE n > ?)",
                (keep,),
            )

