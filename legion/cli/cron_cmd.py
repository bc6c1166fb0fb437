"""`legion cron`: the agents' schedules (ls, add, rm, pause, resume, run, runs)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from legion.cli.common import State, emit_json, fail, fmt_time, host_errors, subapp

app = subapp(
    "Cron schedules: an agent gets a message, or the host runs one tool for it.\n\n"
    "At each run of the schedule (docs/automation.md)."
)

JSON = Annotated[bool, typer.Option("--json", help="Print JSON.")]
JOB = Annotated[str, typer.Argument(help="The job: its id, or AGENT/NAME.")]


def _client() -> Any:

    return State.client()


def _job_id(client: Any, ref: str) -> int:
    if ref.isdigit():
        return int(ref)
    agent, sep, name = ref.partition("/")
    if not sep:
        fail(f"{ref!r}: name a job by its id or as AGENT/NAME (`legion cron ls`)", 2)
    for job in client.cron_jobs(agent).jobs:
        if job.name == name:
            return int(job.id)
    fail(f"{agent} has no cron job named {name!r} (`legion cron ls --agent {agent}`)", 1)


def _row(job: Any) -> str:
    what = f"tool {job.tool}" if job.tool else "message"
    state = job.state + (f": {job.reason}" if job.reason else "")
    return (
        f"{job.id:<5} {job.agent + '/' + job.name:<28} {job.schedule:<18} {job.timezone:<16} "
        f"{what:<22} next {fmt_time(job.next_run_at):<19}  runs {job.runs} "
        f"overlaps {job.overlaps} missed {job.missed_runs}  {state}"
    )


@app.command("ls")
def ls(
    agent: Annotated[str | None, typer.Option("--agent", help="Only this agent's jobs.")] = None,
    as_json: JSON = False,
) -> None:
    """List the cron jobs: schedule, next run, counts and state."""
    if agent is not None:
        from legion.cli.agents_cmd import require_valid_name

        require_valid_name(agent)
    with host_errors(), _client() as client:
        jobs = client.cron_jobs(agent).jobs
    if as_json:
        emit_json([j.model_dump() for j in jobs])
        return
    if not jobs:
        typer.echo("no cron jobs (add one with `legion cron add AGENT NAME --schedule ...`)")
    for job in jobs:
        typer.echo(_row(job))


@app.command("add")
def add(
    agent: Annotated[str, typer.Argument(help="The agent the job runs for.")],
    name: Annotated[str, typer.Argument(help="The job's name (unique per agent).")],
    schedule: Annotated[
        str,
        typer.Option(
            "--schedule", "-s", help="5 cron fields (`0 9 * * 1-5`), @daily, or `every 30m`."
        ),
    ],
    message: Annotated[
        str | None, typer.Option("--message", "-m", help="Text sent to the agent at each run.")
    ] = None,
    tool: Annotated[
        str | None,
        typer.Option(
            "--tool",
            help="Tool mode, no model call: blackboard_write, publish, send_message, notify_user.",
        ),
    ] = None,
    args: Annotated[
        str | None, typer.Option("--args", help="The tool's arguments, a JSON object.")
    ] = None,
    timezone: Annotated[
        str | None, typer.Option("--tz", help="IANA time zone (default: the host's).")
    ] = None,
    missed: Annotated[
        str, typer.Option("--missed", help="A run missed while the host was down: skip|run_once.")
    ] = "skip",
    paused: Annotated[bool, typer.Option("--paused", help="Create it paused.")] = False,
    as_json: JSON = False,
) -> None:
    """Create a cron job (or change the one of that name)."""
    if missed not in ("skip", "run_once"):
        fail(f"--missed {missed!r}: use skip or run_once", 2)
    tool_args: Any = {}
    if args is not None:
        try:
            tool_args = json.loads(args)
        except ValueError as exc:
            fail(f"--args is not JSON: {exc}", 2)
        if not isinstance(tool_args, dict):
            fail('--args must be a JSON object, e.g. \'{"key": "notes/x", "value": 1}\'', 2)
    spec: dict[str, Any] = {
        "agent": agent,
        "name": name,
        "schedule": schedule,
        "missed": missed,
        "paused": paused,
        "args": tool_args,
    }
    if message is not None:
        spec["message"] = message
    if tool is not None:
        spec["tool"] = tool
    if timezone is not None:
        spec["timezone"] = timezone
    with host_errors(), _client() as client:
        job = client.cron_add(spec)
    if as_json:
        emit_json(job.model_dump())
    else:
        typer.echo(_row(job))


def _act(ref: str, action: str, as_json: bool) -> None:
    with host_errors(), _client() as client:
        job_id = _job_id(client, ref)
        result = (
            client.cron_remove(job_id) if action == "rm" else client.cron_action(job_id, action)
        )
    if as_json:
        emit_json(result.model_dump())
    elif action == "rm":
        typer.echo(f"removed job {job_id}")
    elif action == "run":
        typer.echo(f"job {job_id}: run {result.id} {result.status} {result.detail}".rstrip())
    else:
        typer.echo(_row(result))


@app.command("rm")
def rm(job: JOB, as_json: JSON = False) -> None:
    """Remove a job and its run history."""
    _act(job, "rm", as_json)


@app.command("pause")
def pause(job: JOB, as_json: JSON = False) -> None:
    """Pause a job: no runs until it is resumed."""
    _act(job, "pause", as_json)


@app.command("resume")
def resume(job: JOB, as_json: JSON = False) -> None:
    """Resume a paused or failed job from now (what it missed meanwhile is not run)."""
    _act(job, "resume", as_json)


@app.command("run")
def run(job: JOB, as_json: JSON = False) -> None:
    """Run a job once now (refused while its previous run is still going)."""
    _act(job, "run", as_json)


@app.command("runs")
def runs(job: JOB, as_json: JSON = False) -> None:
    """A job's recent runs, newest first."""
    with host_errors(), _client() as client:
        found = client.cron_runs(_job_id(client, job)).runs
    if as_json:
        emit_json([r.model_dump() for r in found])
        return
    for r in found:
        typer.echo(
            f"{r.id:<6} due {fmt_time(r.slot)}  {r.trigger:<8} {r.status:<10} "
            f"{('item ' + str(r.item_id)) if r.item_id else '':<10} {r.detail[:80]}"
        )
