"""`legion webhooks`: signed endpoints that queue work for an agent (add, ls, rm, rotate,
result).

For `legion` and `github` hooks the host generates the secret; add and rotate print it once
(the host keeps it in the vault, and every other answer masks it). A `stripe` hook takes
the endpoint's signing secret Stripe shows (`whsec_...`), read from a prompt or stdin,
never from the command line."""

from __future__ import annotations

import getpass
import sys
from typing import Annotated, Any

import typer

from legion.cli.common import State, emit_json, fail, fmt_time, host_errors, subapp
from legion.wire.rules import stripe_secret_problem

app = subapp(
    "Webhooks: signed HTTP endpoints that queue a job for an agent.\n\nSee docs/automation.md."
)
JSON = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _client() -> Any:

    return State.client()


def _stripe_secret() -> str:
    """Stripe's signing secret, from a prompt or stdin (one line ending dropped), checked by
    its format before anything is sent."""
    if sys.stdin.isatty():
        value = getpass.getpass("Stripe signing secret (whsec_...): ")
    else:
        value = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    problem = stripe_secret_problem(value)
    if problem is not None:
        fail(f"{problem}; nothing was changed", 2)
    return value


def _show(info: Any, as_json: bool) -> None:
    if as_json:
        emit_json(info.model_dump())
        return
    typer.echo(f"webhook {info.name} -> agent {info.agent} ({info.mode} signatures)")
    typer.echo(
        f"  url:    {info.url or 'listener disabled: set [automation.webhooks] enabled = true'}"
    )
    if info.secret:
        typer.echo(f"  secret: {info.secret}")
        typer.echo("  (shown once; the host keeps it in the vault. `rotate` makes a new one)")
    else:
        typer.echo("  secret: Stripe's signing secret, in the vault")


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="The hook's name (in its URL).")],
    agent: Annotated[str, typer.Option("--agent", "-a", help="The agent that gets deliveries.")],
    mode: Annotated[
        str,
        typer.Option(
            "--mode",
            help="Signature scheme: legion or github (the host generates the secret and prints "
            "it once), or stripe (give Stripe's signing secret on the prompt or stdin).",
        ),
    ] = "legion",
    rate: Annotated[
        float | None, typer.Option("--rate", help="Deliveries per minute (default from config).")
    ] = None,
    burst: Annotated[
        int | None, typer.Option("--burst", help="Deliveries in a burst (default from config).")
    ] = None,
    as_json: JSON = False,
) -> None:
    """Add a webhook; prints its URL and, for legion and github, its secret (once)."""
    if mode not in ("legion", "github", "stripe"):
        fail(f"--mode {mode!r}: use legion, github or stripe", 2)
    spec: dict[str, Any] = {"name": name, "agent": agent, "mode": mode}
    if mode == "stripe":
        spec["secret"] = _stripe_secret()
    if rate is not None:
        spec["rate_per_min"] = rate
    if burst is not None:
        spec["burst"] = burst
    with host_errors(), _client() as client:
        info = client.webhook_add(spec)
    _show(info, as_json)


@app.command("ls")
def ls(as_json: JSON = False) -> None:
    """List the webhooks, their URLs and delivery counts."""
    with host_errors(), _client() as client:
        found = client.webhooks()
    if as_json:
        emit_json(found.model_dump())
        return
    typer.echo(f"listener: {found.listener or 'disabled ([automation.webhooks] enabled = false)'}")
    for h in found.hooks:
        typer.echo(
            f"  {h.name:<20} agent {h.agent:<12} {h.mode:<7} {h.rate_per_min:g}/min  "
            f"delivered {h.deliveries} refused {h.refused}  last {fmt_time(h.last_delivery_at)}"
        )


@app.command("rm")
def rm(name: Annotated[str, typer.Argument(help="The hook.")], as_json: JSON = False) -> None:
    """Remove a webhook and its secret."""
    with host_errors(), _client() as client:
        result = client.webhook_remove(name)
    if as_json:
        emit_json(result.model_dump())
    else:
        typer.echo(f"removed webhook {name}")


@app.command("rotate")
def rotate(name: Annotated[str, typer.Argument(help="The hook.")], as_json: JSON = False) -> None:
    """Give a webhook a new secret (the old one stops working now): a generated one, printed
    once; for a stripe hook, the new signing secret Stripe shows after "Roll secret" (on the
    prompt or stdin)."""
    with host_errors(), _client() as client:
        hook = next((h for h in client.webhooks().hooks if h.name == name), None)
        if hook is None:
            fail(f"no webhook named {name!r}; `legion webhooks ls` lists them", 1)
        secret = _stripe_secret() if hook.mode == "stripe" else None
        info = client.webhook_rotate(name, secret)
    _show(info, as_json)


@app.command("result")
def result(
    job: Annotated[str, typer.Argument(help="The job id a delivery got (wh_...).")],
    as_json: JSON = False,
) -> None:
    """A delivery's job: queued, running or done, with the agent's answer."""
    with host_errors(), _client() as client:
        found = client.webhook_job(job)
    if as_json:
        emit_json(found.model_dump())
        return
    typer.echo(f"{found.job} {found.status} (webhook {found.hook}, agent {found.agent})")
    if found.result:
        typer.echo(str(found.result.get("text") or ""))
