"""`legion pause` / `legion resume`: the kill switch of LLM dispatch.

A pause cuts the agent's LLM calls in flight at once (each settled for what it produced) and
refuses its new ones (423 `agent_paused`) until `legion resume`; it is stored in host.db, so
it holds across host restarts. `--all` pauses the whole fleet, agents added later too.
Exit codes: 0 done; 1 refused by the host; 2 usage; 3 no host is running.
"""

from __future__ import annotations

from typing import Annotated

import typer

from legion.cli.common import State, echo, emit_json, fail, fmt_time, host_errors

ALL_HELP = "The whole fleet (every agent, and agents added later)."


def _target(name: str | None, everyone: bool, verb: str) -> str | None:
    if everyone == (name is not None):
        fail(f"name one agent or the whole fleet: `legion {verb} NAME` or `legion {verb} --all`", 2)
    return name


def pause(
    name: Annotated[str | None, typer.Argument(help="The agent to pause.")] = None,
    everyone: Annotated[bool, typer.Option("--all", help=ALL_HELP)] = False,
    reason: Annotated[
        str, typer.Option("--reason", help="Why (audited, and told to the refused agents).")
    ] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Stop LLM dispatch now: cut the calls in flight, refuse new ones until `legion resume`."""

    agent = _target(name, everyone, "pause")
    with host_errors(), State.client() as client:
        state = client.pause(agent, reason)
    if as_json:
        emit_json(state.model_dump())
        return
    what = "the whole fleet" if agent is None else agent
    cut = f"; {state.cut} call(s) in flight cut" if state.cut else "; no call was in flight"
    echo(f"paused {what}{cut}. `legion resume {agent or '--all'}` resumes it")


def resume(
    name: Annotated[str | None, typer.Argument(help="The agent to resume.")] = None,
    everyone: Annotated[bool, typer.Option("--all", help=ALL_HELP + " Lifts every pause.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Resume LLM dispatch of an agent (or of the whole fleet with --all)."""

    agent = _target(name, everyone, "resume")
    with host_errors(), State.client() as client:
        state = client.resume(agent)
    if as_json:
        emit_json(state.model_dump())
        return
    echo(f"resumed {'the whole fleet' if agent is None else agent}")
    if state.paused:
        echo(f"still paused: {', '.join(state.paused)}")
    for p in state.pauses:
        if p.agent == "*":
            echo(f"the whole fleet is still paused (since {fmt_time(p.since)})")
