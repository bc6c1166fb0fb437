"""The automation routes, appended to the agent socket's and the control socket's tables.

Each declares its policy in the route table like every other route: the server checks
and audits it before the handler runs. On an agent socket the caller is always the
socket's agent: an agent manages its own jobs only, and steers only the agents its
`can_steer` names.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from legion.api.http import Call, Policy, Router
from legion.errors import BadRequest, LegionError
from legion.mesh.permissions import Perm
from legion.wire.api import PollResponse
from legion.wire.automation import (
    JOB_NAME,
    CronJob,
    CronJobList,
    CronJobSpec,
    CronRemoved,
    CronRun,
    CronRunList,
    CronSet,
    SteerQueued,
    SteerRequest,
    WebhookCreate,
    WebhookInfo,
    WebhookJob,
    WebhookList,
    WebhookRemoved,
    WebhookRotate,
)

if TYPE_CHECKING:
    from legion.host import Host

CRON = Perm.CRON.value
STEER = Perm.STEER.value
_JOB_NAME = re.compile(JOB_NAME)


def _job_name(name: str) -> str:
    if not _JOB_NAME.match(name):
        raise BadRequest(
            f"{name[:80]!r} is not a job name: lowercase letters, digits and ._- "
            "(starting with a letter or digit), at most 64",
            code="invalid_job_name",
        )
    return name


def _job_id(raw: str) -> int:
    if not raw.isdigit() or len(raw) > 18:
        raise LegionError(f"{raw[:40]!r} is not a job id", code="invalid_job_id", status=404)
    return int(raw)


def _steer_route(router: Router, host: Host) -> None:
    @router.route(
        "POST",
        "/v1/steer",
        body=SteerRequest,
        response=SteerQueued,
        policy=Policy(STEER, "to", "steer"),
        rate="write",
    )
    async def steer(call: Call) -> SteerQueued:
        """Steer an agent: the text reaches its running turn between two tool rounds
        (or is its next turn when it is idle), ahead of the rest of its lane."""
        body: SteerRequest = call.body
        item = host.automation.lanes.steer(call.principal, body.to, body.text)
        return SteerQueued(to=body.to, item_id=item)


def add_agent_routes(router: Router, host: Host) -> None:
    cron = host.automation.cron

    @router.route(
        "GET",
        "/v1/cron",
        response=CronJobList,
        policy=Policy(CRON, "agent", "cron.list"),
        rate="read",
    )
    async def cron_list(call: Call) -> CronJobList:
        """The caller's cron jobs (`cron_list`)."""
        return CronJobList(jobs=cron.list_jobs(call.principal))

    @router.route(
        "PUT",
        "/v1/cron/{name}",
        body=CronSet,
        response=CronJob,
        policy=Policy(CRON, "name", "cron.set"),
        rate="write",
    )
    async def cron_set(call: Call) -> CronJob:
        """Create or change one of the caller's cron jobs (`cron_set`), within
        `[automation] max_jobs_per_agent`."""
        name = _job_name(call.params["name"])
        return cron.upsert(call.principal, name, call.body, call.principal)

    @router.route(
        "DELETE",
        "/v1/cron/{name}",
        response=CronRemoved,
        policy=Policy(CRON, "name", "cron.remove"),
        rate="write",
    )
    async def cron_remove(call: Call) -> CronRemoved:
        """Remove one of the caller's cron jobs (`cron_remove`)."""
        job_id = cron.remove_by_name(call.principal, _job_name(call.params["name"]))
        return CronRemoved(id=job_id, removed=True)

    _steer_route(router, host)

    @router.route("POST", "/v1/steer/take", response=PollResponse, rate="read")
    async def steer_take(call: Call) -> PollResponse:
        """Take the steer items waiting in the caller's own inbox (between tool rounds);
        ack them with the item of the turn they went into."""
        return PollResponse(items=host.automation.lanes.take(call.principal))


def add_control_routes(router: Router, host: Host) -> None:
    automation = host.automation
    cron = automation.cron
    hooks = automation.webhooks
    _steer_route(router, host)

    @router.route("GET", "/v1/cron/jobs", response=CronJobList)
    async def cron_jobs(call: Call) -> CronJobList:
        """Every cron job (`?agent=` for one agent's)."""
        return CronJobList(jobs=cron.list_jobs(call.request.query.get("agent") or None))

    @router.route("POST", "/v1/cron/jobs", body=CronJobSpec, response=CronJob)
    async def cron_add(call: Call) -> CronJob:
        """Create (or change) a cron job for an agent."""
        body: CronJobSpec = call.body
        job = cron.upsert(body.agent, body.name, body, "operator", paused=body.paused)
        host.audit.append(
            call.principal, "cron.set", f"{body.agent}/{body.name}", "allow", job=job.id
        )
        return job

    @router.route("GET", "/v1/cron/jobs/{id}", response=CronJob)
    async def cron_job(call: Call) -> CronJob:
        """One cron job."""
        return cron.get(_job_id(call.params["id"]))

    @router.route("DELETE", "/v1/cron/jobs/{id}", response=CronRemoved)
    async def cron_rm(call: Call) -> CronRemoved:
        """Remove a cron job and its runs."""
        job_id = _job_id(call.params["id"])
        cron.get(job_id)
        removed = cron.remove(job_id)
        host.audit.append(call.principal, "cron.remove", str(job_id), "allow")
        return CronRemoved(id=job_id, removed=removed)

    @router.route("GET", "/v1/cron/jobs/{id}/runs", response=CronRunList)
    async def cron_runs(call: Call) -> CronRunList:
        """A job's recent runs, newest first."""
        return CronRunList(runs=cron.runs(_job_id(call.params["id"])))

    @router.route("POST", "/v1/cron/jobs/{id}/run", response=CronRun)
    async def cron_run(call: Call) -> CronRun:
        """Run a job once now (409 while its previous run is still going)."""
        job_id = _job_id(call.params["id"])
        host.audit.append(call.principal, "cron.run_now", str(job_id), "allow")
        return cron.run_now(job_id, call.principal)

    @router.route("POST", "/v1/cron/jobs/{id}/pause", response=CronJob)
    async def cron_pause(call: Call) -> CronJob:
        """Pause a job (no runs until resumed)."""
        job_id = _job_id(call.params["id"])
        host.audit.append(call.principal, "cron.pause", str(job_id), "allow")
        return cron.pause(job_id)

    @router.route("POST", "/v1/cron/jobs/{id}/resume", response=CronJob)
    async def cron_resume(call: Call) -> CronJob:
        """Resume a paused or failed job from now (a failed one is checked again)."""
        job_id = _job_id(call.params["id"])
        host.audit.append(call.principal, "cron.resume", str(job_id), "allow")
        return cron.resume(job_id)

    @router.route("GET", "/v1/webhooks", response=WebhookList)
    async def webhooks(call: Call) -> WebhookList:
        """The webhooks and the listener's URL."""
        return WebhookList(listener=hooks.base_url(), hooks=hooks.list_hooks())

    @router.route("POST", "/v1/webhooks", body=WebhookCreate, response=WebhookInfo)
    async def webhook_add(call: Call) -> WebhookInfo:
        """Add a webhook; its secret goes to the vault (the caller shows it once)."""
        body: WebhookCreate = call.body
        info = hooks.add(body)
        host.audit.append(
            call.principal, "webhook.add", body.name, "allow", agent=body.agent, mode=body.mode
        )
        return info

    @router.route("DELETE", "/v1/webhooks/{name}", response=WebhookRemoved)
    async def webhook_rm(call: Call) -> WebhookRemoved:
        """Remove a webhook and its secret."""
        name = call.params["name"]
        hooks.info(name)
        removed = hooks.remove(name)
        host.audit.append(call.principal, "webhook.remove", name, "allow")
        return WebhookRemoved(name=name, removed=removed)

    @router.route("POST", "/v1/webhooks/{name}/rotate", body=WebhookRotate, response=WebhookInfo)
    async def webhook_rotate(call: Call) -> WebhookInfo:
        """Replace a webhook's secret (the old one stops working at once)."""
        name = call.params["name"]
        info = hooks.rotate(name, call.body.secret)
        host.audit.append(call.principal, "webhook.rotate", name, "allow")
        return info

    @router.route("GET", "/v1/webhooks/jobs/{job}", response=WebhookJob)
    async def webhook_job(call: Call) -> WebhookJob:
        """A webhook delivery's job and the agent's answer."""
        return hooks.job(call.params["job"])
