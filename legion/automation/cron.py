"""Cron jobs in host.db: create, change, list, pause, resume, run now, prune.

What runs when, and the guarantees (a slot runs at most once, missed runs, overlaps, bad
jobs), are in `legion.automation.firing`, which CronJobs extends, and docs/automation.md.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from legion.automation import tools
from legion.automation.firing import COLUMNS as _COLUMNS
from legion.automation.firing import Firing, Job, Planned
from legion.automation.schedule import BadSchedule, Schedule, host_timezone, parse_schedule, zone
from legion.errors import Conflict, Forbidden, LegionError, NotFound
from legion.wire.automation import CronJob, CronRun, CronSet

if TYPE_CHECKING:
    from legion.host import Host

log = logging.getLogger("legion.cron")


class CronLimit(LegionError):
    status = 409
    code = "cron_limit"


class CronJobs(Firing):
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

    def _get(self, job_id: int) -> Job:
        row = self.store.execute(
            f"SELECT {_COLUMNS} FROM cron_jobs WHERE id = ?", (job_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no cron job {job_id}; `legion cron ls` lists them", code="unknown_job")
        return Job.of(row)

    def _by_name(self, agent: str, name: str) -> Job | None:
        row = self.store.execute(
            f"SELECT {_COLUMNS} FROM cron_jobs WHERE agent = ? AND name = ?", (agent, name)
        ).fetchone()
        return None if row is None else Job.of(row)

    def schedule_of(self, text: str) -> Schedule:
        schedule = self._schedules.get(text)
        if schedule is None:
            schedule = parse_schedule(text, min_interval_s=self.config.min_interval_s)
            self._schedules[text] = schedule
        return schedule

    # --- views ------------------------------------------------------------------------

    def view(self, job: Job) -> CronJob:
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
            missed=job.missed,
            state=job.state,
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

    def list_jobs(self, agent: str | None = None) -> list[CronJob]:
        if agent is None:
            rows = self.store.execute(f"SELECT {_COLUMNS} FROM cron_jobs ORDER BY agent, name")
        else:
            rows = self.store.execute(
                f"SELECT {_COLUMNS} FROM cron_jobs WHERE agent = ? ORDER BY name", (agent,)
            )
        return [self.view(Job.of(r)) for r in rows]

    def get(self, job_id: int) -> CronJob:
        return self.view(self._get(job_id))

    def summary(self, agent: str) -> list[str]:
        """One line per active job of `agent`, for its prompt's runtime context."""
        return [
            f"{j.name} ({j.schedule}, {j.timezone}" + (f", tool {j.tool}" if j.tool else "") + ")"
            for j in self.list_jobs(agent)
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
        if existing is not None and created_by != "operator":
            self._own(existing, created_by)
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
                    (
                        schedule.text,
                        tz_name,
                        action_text,
                        body.missed,
                        state,
                        anchor,
                        next_at,
                        job_id,
                    ),
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

    @staticmethod
    def _own(job: Job, agent: str) -> None:
        """An agent changes only the jobs it made; the operator's are the operator's."""
        if job.created_by != agent:
            raise Forbidden(
                f"cron job {job.name!r} was made by {job.created_by}; only they may change it",
                code="not_your_job",
            )

    def remove_by_name(self, agent: str, name: str) -> int:
        job = self._by_name(agent, name)
        if job is None:
            raise NotFound(f"{agent} has no cron job named {name!r}", code="unknown_job")
        self._own(job, agent)
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
            missed=job.missed,
        )
        self._schedules.pop(job.schedule, None)
        try:
            schedule, tz_name, _ = self._validate(job.agent, body)
        except LegionError as exc:
            self._fail(job, exc.message)
            raise Conflict(
                f"job {job_id} cannot resume: {exc.message}", code="job_broken"
            ) from None
        now = self.clock()
        next_at = schedule.next_after(now, zone(tz_name), job.anchor)
        with self.store.tx() as conn:
            conn.execute(
                "UPDATE cron_jobs SET state = 'active', reason = '', next_run_at = ? WHERE id = ?",
                (next_at, job_id),
            )
        self._set_due(job_id, next_at)
        return self.get(job_id)

    def run_now(self, job_id: int, actor: str) -> CronRun:
        """Run a job once now, whatever its schedule (`legion cron run`)."""
        job = self._get(job_id)
        if job.state == "failed":
            raise Conflict(
                f"job {job_id} failed ({job.reason}); resume it first", code="job_broken"
            )
        if self._running(job):
            raise Conflict(
                f"job {job_id}'s previous run is still going (inbox item "
                f"{self.in_flight[job.id]}); wait for it",
                code="job_running",
            )
        now = self.clock()
        self._dispatch([Planned(job, int(now), "manual")])
        latest: CronRun = self.runs(job_id, 1)[0]
        return latest

    # --- firing -----------------------------------------------------------------------

    def prune(self) -> None:
        """Keep the last `keep_runs` runs of each job."""
        keep = self.config.keep_runs
        with self.store.tx(durable=False) as conn:
            conn.execute(
                "DELETE FROM cron_runs WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER"
                " (PARTITION BY job_id ORDER BY id DESC) AS n FROM cron_runs) WHERE n > ?)",
                (keep,),
            )
