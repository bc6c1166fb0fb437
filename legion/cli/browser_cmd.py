"""`legion browser`: the agents' browsers, and the operator's hand-off (VNC)."""

from __future__ import annotations

from typing import Annotated

import typer

from legion.cli.common import State, emit_json, fmt_time, host_errors, subapp

app = subapp("The agents' browsers: state, the VNC hand-off (watch, log in, solve a CAPTCHA).")
JSON = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


@app.command("ls")
def ls(as_json: JSON = False) -> None:
    """Every agent's browser: state, page, last action, waiting for a human."""

    with host_errors(), State.client() as client:
        listing = client.browsers()
    if as_json:
        emit_json(listing.model_dump())
        return
    typer.echo(f"{listing.running} of at most {listing.max_running} browsers running")
    for b in listing.browsers:
        flag = "" if b.enabled else " (can_use_browser = false)"
        wait = f"  WAITING FOR A HUMAN: {b.human_reason}" if b.waiting_for_human else ""
        last = f"{b.last_action} at {fmt_time(b.last_action_at)}" if b.last_action else "-"
        typer.echo(f"{b.agent:<20} {b.state:<9} {b.url or '-'}  last: {last}{flag}{wait}")


@app.command("handoff")
def handoff(
    name: Annotated[str, typer.Argument(help="The agent whose browser to open.")],
    as_json: JSON = False,
) -> None:
    """Print a VNC link (noVNC, on 127.0.0.1, with an expiring token) to an agent's browser,
    and the `ssh -L` command that opens it from a laptop. Starts the browser if needed."""

    with host_errors(), State.client() as client:
        info = client.browser_handoff(name)
    if as_json:
        emit_json(info.model_dump())
        return
    typer.echo(info.link)
    typer.echo(f"valid until {fmt_time(info.expires_at)}; from a laptop first run:")
    typer.echo(f"  {info.ssh_hint}")
    typer.echo(f"when you are done: legion browser done {name}")


@app.command("done")
def done(
    name: Annotated[str, typer.Argument(help="The agent to resume.")],
    note: Annotated[
        str, typer.Option("--note", help="Told to the agent (e.g. 'logged in as ops').")
    ] = "",
    as_json: JSON = False,
) -> None:
    """End the hand-off: the VNC links stop working, and the agent waiting for you resumes
    (it takes a fresh snapshot)."""

    with host_errors(), State.client() as client:
        info = client.browser_done(name, note)
    if as_json:
        emit_json(info.model_dump())
        return
    typer.echo(f"{name}: hand-off ended; the browser is {info.state}")


@app.command("stop")
def stop(
    name: Annotated[str, typer.Argument(help="The agent whose browser to stop.")],
    as_json: JSON = False,
) -> None:
    """Stop an agent's browser container now (its next action starts it again)."""

    with host_errors(), State.client() as client:
        info = client.browser_stop(name)
    if as_json:
        emit_json(info.model_dump())
        return
    typer.echo(f"{name}: browser {info.state}")
