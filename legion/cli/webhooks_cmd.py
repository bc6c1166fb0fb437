"""`legion webhooks`: signed endpoints that queue work for an agent (add, ls, rm, rotate,
result). The secret is printed once, by add and rotate; the host keeps it in the vault."""

from __future__ import annotations

import secrets
import sys
from typing import Annotated, Any

import typer

from legion.cli.common import State, emit_json, fail, fmt_time, host_errors

app = typer.Typer(
    help="Webhooks: signed HTTP endpoints that queue a job for an agent (docs/automation.md).",
    no_args_is_help=True,
)
JSON = Annotated[bool, typer.Option("--json", help="Print JSON.")]
SECRET_STDIN = Annotated[
    bool,
    typer.Option(
        "--secret-stdin",
        help="Read the secret from stdin (Stripe makes its own) instead of generating one.",
    ),
]


def _client() -> Any:

    return State.client()


def _secret(from_stdin: bool) -> str:
    if not from_stdin:
        return "whk_" + secrets.token_urlsafe(32)
    value = sys.stdin.readline().strip()
    if len(value) < 16:
        fail("the secret read from stdin is shorter than 16 characters", 2)
    return value


def _show(info: Any, secret: str | None, as_json: bool) -> None:
    if as_json:
        emit_json({**info.model_dump(), **({"secret": secret} if secret else {})})
        return
    typer.echo(f"webhook {info.name} -> agent {info.agent} ({info.mode} signatures)")
    typer.echo(
        f"  url:    {info.url or 'listener disabled: set [automation.webhooks] enabled = true'}"
    )
    if secret:
        typer.echo(f"  secret: {secret}")
        typer.echo("  (shown once; the host keeps it in the vault. `rotate` makes a new one)")


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="The hook's name (in its URL).")],
    agent: Annotated[str, typer.Option("--agent", "-a", help="The agent that gets deliveries.")],
    mode: Annotated[
        str, typer.Option("--mode", help="Signature scheme: legion, github or stripe.")
    ] = "legion",
    rate: Annotated[
        float | None, typer.Option("--rate", help="Deliveries per minute (default from config).")
    ] = None,
    secret_stdin: SECRET_STDIN = False,
    as_json: JSON = False,
) -> None:
    """Add a webhook; prints its URL and its secret (once)."""
    if mode not in ("legion", "github", "stripe"):
        fail(f"--mode {mode!r}: use legion, github or stripe", 2)
    secret = _secret(secret_stdin)
    spec: dict[str, Any] = {"name": name, "agent": agent, "mode": mode, "secret": secret}
    if rate is not None:
        spec["rate_per_min"] = rate
    with host_errors(), _client() as client:
        info = client.webhook_add(spec)
    _show(info, None if secret_stdin else secret, as_json)


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
def rotate(
    name: Annotated[str, typer.Argument(help="The hook.")],
    secret_stdin: SECRET_STDIN = False,
    as_json: JSON = False,
) -> None:
    """Give a webhook a new secret (the old one stops working now); prints it once."""
    secret = _secret(secret_stdin)
    with host_errors(), _client() as client:
        info = client.webhook_rotate(name, secret)
    _show(info, None if secret_stdin else secret, as_json)


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
