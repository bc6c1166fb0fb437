"""The automation routes, appended to the agent socket's and the control socket's tables.

Each declares its policy in the route table like every other route: the server checks
and audits it before the handler runs. On an agent socket the caller is always the
socket's agent: an agent manages its own jobs only, and steers only the agents its
`can_steer` names.

Path and query parameters are typed in the table (`legion.wire.fields`), so the OpenAPI
document states their rules; each handler checks them with the same functions of
`legion.wire.rules`. Links say what feeds what: a created job's id feeds its get, runs,
run, pause, resume and delete; a hook's name feeds its rotate and delete.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from legion.api.http import Call, Policy, Router
from legion.errors import BadRequest
from legion.mesh.permissions import Perm
from legion.wire import rules
from legion.wire.api import PollResponse
from legion.wire.automation import (
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
    WebhookJob,
    WebhookList,
    WebhookRemoved,
    WebhookRotate,
    WebhookSecret,
)
from legion.wire.fields import AgentFilter, HookName, JobId, JobName, WebhookJobId

if TYPE_CHECKING:
    from legion.host import Host

CRON = Perm.CRON.value
STEER = Perm.STEER.value

_JOB_OPERATIONS = ("cron_job", "cron_runs", "cron_run", "cron_pause", "cron_resume", "cron_rm")


def _job_links(source: str) -> dict[str, dict[str, Any]]:
    """Links from a response holding a job id (at `source`) to every operation on it."""
    return {
        f"{op.title().replace('_', '')}": {"operationId": op, "parameters": {"id": source}}
        for op in _JOB_OPERATIONS
    }


def _hook_links(source: str) -> dict[str, dict[str, Any]]:
    return {
        "RotateHook": {"operationId": "webhook_rotate", "parameters": {"name": source}},
        "RemoveHook": {"operationId": "webhook_rm", "parameters": {"name": source}},
    }


def _checked(problem: str | None, code: str) -> None:
    if problem is not None:
        raise BadRequest(problem, code=code)


def _job_name(name: str) -> str:
    _checked(rules.job_name_problem(name), "invalid_job_name")
    return name


def _job_id(raw: str) -> int:
    _checked(rules.id_problem(raw), "invalid_job_id")
    return int(raw)


def _hook_name(name: str) -> str:
    _checked(rules.hook_name_problem(name), "invalid_name")
    return name


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
        params={"name": JobName},
        links={
            "RemoveSet": {
                "operationId": "cron_remove",
                "parameters": {"name": "$request.path.name"},
            }
        },
        rate="write",
    )
    async def cron_set(call: Call) -> CronJob:
        """Create or change one of the caller's cron jobs (`cron_set`), within
        `[automation] max_jobs_per_agent`."""
        name = _job_name(call.params["name"])
        body: CronSet = call.body
        return cron.upsert(call.principal, name, body.root, call.principal)

    @router.route(
        "DELETE",
        "/v1/cron/{name}",
        response=CronRemoved,
        policy=Policy(CRON, "name", "cron.remove"),
        params={"name": JobName},
        rate="write",
    )
    async def cron_remove(call: Call) -> CronRemoved:
        """Remove one of the caller's cron jobs (`cron_remove`)."""
        job_id = cron.remove_by_name(call.principal, _job_name(call.params["name"]))
        return CronRemoved(id=job_id, removed=True)

    _steer_route(router, host)

    @router.route(
        "POST",
        "/v1/steer/take",
        response=PollResponse,
        links={
            "AckTaken": {
                "operationId": "inbox_ack",
                "requestBody": {"ids": ["$response.body#/items/0/id"]},
            }
        },
        rate="read",
    )
    async def steer_take(call: Call) -> PollResponse:
        """Take the steer items waiting in the caller's own inbox (between tool rounds);
        ack them with the item of the turn they went into."""
        return PollResponse(items=host.automation.lanes.take(call.principal))


def add_control_routes(router: Router, host: Host) -> None:
    automation = host.automation
    cron = automation.cron
    hooks = automation.webhooks
    _steer_route(router, host)

    @router.route(
        "GET",
        "/v1/cron/jobs",
        response=CronJobList,
        query={"agent": AgentFilter},
        links=_job_links("$response.body#/jobs/0/id"),
    )
    async def cron_jobs(call: Call) -> CronJobList:
        """Every cron job (`?agent=` for one agent's, also one that was removed: 404
        `unknown_agent` for a name that is neither configured nor has jobs left)."""
        agent = call.request.query.get("agent", "")
        if agent:
            _checked(rules.name_problem(agent), "invalid_name")
        jobs = cron.list_jobs(agent or None)
        if agent and not jobs and agent not in host.config.agents:
            from legion.api.agent import unknown_agent

            raise unknown_agent(host, agent)
        return CronJobList(jobs=jobs)

    @router.route(
        "POST",
        "/v1/cron/jobs",
        body=CronJobSpec,
        response=CronJob,
        links=_job_links("$response.body#/id"),
    )
    async def cron_add(call: Call) -> CronJob:
        """Create (or change) a cron job for an agent."""
        body = call.body.root
        job = cron.upsert(body.agent, body.name, body, "operator", paused=body.paused)
        host.audit.append(
            call.principal, "cron.set", f"{body.agent}/{body.name}", "allow", job=job.id
        )
        return job

    @router.route("GET", "/v1/cron/jobs/{id}", response=CronJob, params={"id": JobId})
    async def cron_job(call: Call) -> CronJob:
        """One cron job."""
        return cron.get(_job_id(call.params["id"]))

    @router.route("DELETE", "/v1/cron/jobs/{id}", response=CronRemoved, params={"id": JobId})
    async def cron_rm(call: Call) -> CronRemoved:
        """Remove a cron job and its runs."""
        job_id = _job_id(call.params["id"])
        cron.get(job_id)
        removed = cron.remove(job_id)
        host.audit.append(call.principal, "cron.remove", str(job_id), "allow")
        return CronRemoved(id=job_id, removed=removed)

    @router.route("GET", "/v1/cron/jobs/{id}/runs", response=CronRunList, params={"id": JobId})
    async def cron_runs(call: Call) -> CronRunList:
        """A job's recent runs, newest first."""
        return CronRunList(runs=cron.runs(_job_id(call.params["id"])))

    @router.route(
        "POST",
        "/v1/cron/jobs/{id}/run",
        response=CronRun,
        params={"id": JobId},
        links={
            "RunsOfJob": {
                "operationId": "cron_runs",
                "parameters": {"id": "$response.body#/job_id"},
            }
        },
    )
    async def cron_run(call: Call) -> CronRun:
        """Run a job once now (409 while its previous run is still going)."""
        job_id = _job_id(call.params["id"])
        host.audit.append(call.principal, "cron.run_now", str(job_id), "allow")
        return cron.run_now(job_id, call.principal)

    @router.route("POST", "/v1/cron/jobs/{id}/pause", response=CronJob, params={"id": JobId})
    async def cron_pause(call: Call) -> CronJob:
        """Pause a job (no runs until resumed)."""
        job_id = _job_id(call.params["id"])
        host.audit.append(call.principal, "cron.pause", str(job_id), "allow")
        return cron.pause(job_id)

    @router.route("POST", "/v1/cron/jobs/{id}/resume", response=CronJob, params={"id": JobId})
    async def cron_resume(call: Call) -> CronJob:
        """Resume a paused or failed job from now (a failed one is checked again)."""
        job_id = _job_id(call.params["id"])
        host.audit.append(call.principal, "cron.resume", str(job_id), "allow")
        return cron.resume(job_id)

    @router.route(
        "GET",
        "/v1/webhooks",
        response=WebhookList,
        links=_hook_links("$response.body#/hooks/0/name"),
    )
    async def webhooks(call: Call) -> WebhookList:
        """The webhooks and the listener's URL."""
        return WebhookList(listener=hooks.base_url(), hooks=hooks.list_hooks())

    @router.route(
        "POST",
        "/v1/webhooks",
        body=WebhookCreate,
        response=WebhookSecret,
        links=_hook_links("$response.body#/name"),
    )
    async def webhook_add(call: Call) -> WebhookSecret:
        """Add a webhook. For `legion` and `github` the host generates the secret and
        returns it this once (`secret`); for `stripe` the body carries Stripe's."""
        body = call.body.root
        info = hooks.add(body)
        host.audit.append(
            call.principal, "webhook.add", body.name, "allow", agent=body.agent, mode=body.mode
        )
        return info

    @router.route(
        "DELETE", "/v1/webhooks/{name}", response=WebhookRemoved, params={"name": HookName}
    )
    async def webhook_rm(call: Call) -> WebhookRemoved:
        """Remove a webhook and its secret."""
        name = _hook_name(call.params["name"])
        hooks.info(name)
        removed = hooks.remove(name)
        host.audit.append(call.principal, "webhook.remove", name, "allow")
        return WebhookRemoved(name=name, removed=removed)

    @router.route(
        "POST",
        "/v1/webhooks/{name}/rotate",
        body=WebhookRotate,
        response=WebhookSecret,
        params={"name": HookName},
    )
    async def webhook_rotate(call: Call) -> WebhookSecret:
        """Replace a webhook's secret (the old one stops working at once): a new generated
        one, returned this once; or, for `stripe`, the new secret Stripe shows."""
        name = _hook_name(call.params["name"])
        body: WebhookRotate = call.body
        info = hooks.rotate(name, body.secret)
        host.audit.append(call.principal, "webhook.rotate", name, "allow")
        return info

    @router.route(
        "GET", "/v1/webhooks/jobs/{job}", response=WebhookJob, params={"job": WebhookJobId}
    )
    async def webhook_job(call: Call) -> WebhookJob:
        """A webhook delivery's job and the agent's answer."""
        job = call.params["job"]
        _checked(rules.webhook_job_problem(job), "invalid_job_id")
        return hooks.job(job)
