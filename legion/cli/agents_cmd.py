"""`legion agents`: add, list, start, stop, restart and remove agents."""

from __future__ import annotations

import shutil
from typing import Annotated

import typer

from legion.cli.common import State, emit_json, fail, fmt_time, host_errors
from legion.config_edit import agent_section, remove_sections

app = typer.Typer(
    help="Manage the fleet: add, list, start, stop, restart, remove agents.", no_args_is_help=True
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _reload_if_running() -> str:
    from legion.api.client import ApiError, ControlClient

    with ControlClient(State.paths()) as client:
        if not client.running():
            return "the host is not running; it will use the change when it starts"
        try:
            result = client.reload()
        except ApiError as exc:
            return f"the running host refused the change: {exc}"
    done = []
    if result.added:
        done.append("started " + ", ".join(result.added))
    if result.removed:
        done.append("stopped " + ", ".join(result.removed))
    if result.restart_needed:
        done.append("[host] changes need a restart")
    return "the running host applied it" + (f" ({'; '.join(done)})" if done else "")


def _write_config(text: str) -> None:
    from legion.config import parse_config
    from legion.errors import ConfigError
    from legion.fsutil import atomic_write

    path = State.paths().config
    try:
        parse_config(text, str(path))
    except ConfigError as exc:
        fail("the change would make legion.toml invalid; nothing was written:\n" + exc.render(), 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text)


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="Lowercase letters, digits and '-'.")],
    model: Annotated[
        str | None, typer.Option("--model", help="Model alias from [llm.models].")
    ] = None,
    role: Annotated[str | None, typer.Option("--role", help="What the agent is for.")] = None,
    budget_daily: Annotated[
        float | None, typer.Option("--budget-daily", min=0, help="Daily cap, USD.")
    ] = None,
    budget_monthly: Annotated[
        float | None, typer.Option("--budget-monthly", min=0, help="Monthly cap, USD.")
    ] = None,
    team: Annotated[str | None, typer.Option("--team", help="A team from [teams].")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Add an agent to legion.toml (and start it, if the host is running)."""
    from legion.config import load_config

    paths = State.paths()
    config = load_config(paths.config)
    if name in config.agents:
        fail(f"agent {name!r} already exists in {paths.config}", 1)
    current = paths.config.read_text(encoding="utf-8") if paths.config.exists() else ""
    if current and not current.endswith("\n"):
        current += "\n"
    _write_config(current + agent_section(name, model, role, team, budget_daily, budget_monthly))
    notes = []
    if paths.agent_data(name).exists():
        notes.append(
            f"{paths.agent_data(name)} exists from an earlier agent {name!r}: this "
            f"agent will see its files (`legion agents rm {name} --purge` first for a "
            "fresh start)"
        )
    status = _reload_if_running()
    if as_json:
        emit_json({"added": name, "host": status, "notes": notes})
        return
    typer.echo(f"added {name} to {paths.config}; {status}")
    for note in notes:
        typer.echo(f"note: {note}", err=True)


@app.command("rm")
def rm(
    name: str,
    purge: Annotated[
        bool,
        typer.Option(
            "--purge", help="Also delete its volume (workspace, memory), inbox and subscriptions."
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove an agent from legion.toml (stopping it); --purge deletes its data too."""
    from legion.api.client import ControlClient
    from legion.config import load_config

    paths = State.paths()
    if name not in load_config(paths.config).agents:
        fail(f"no agent named {name!r} in {paths.config}", 1)
    _write_config(remove_sections(paths.config.read_text(encoding="utf-8"), name))
    status = _reload_if_running()
    purged: list[str] = []
    if purge:
        data = paths.agent_data(name)
        if data.exists():
            shutil.rmtree(data)
            purged.append(str(data))
        with host_errors(), ControlClient(paths) as client:
            if client.running():
                result = client.purge(name)
                purged.append(f"{result.inbox_items_deleted} inbox items")
            else:
                purged.append(
                    "(inbox kept: start the host and run `legion agents rm` again to purge it)"
                )
    if as_json:
        emit_json({"removed": name, "host": status, "purged": purged})
        return
    typer.echo(f"removed {name}; {status}")
    if purged:
        typer.echo("purged: " + ", ".join(purged))
    elif paths.agent_data(name).exists():
        typer.echo(f"its data stays in {paths.agent_data(name)} (use --purge to delete it)")


@app.command("ls")
def ls(as_json: JsonOpt = False) -> None:
    """List agents with their state, model, restarts and last heartbeat."""
    from legion.api.client import ControlClient

    with host_errors(), ControlClient(State.paths()) as client:
        listing = client.agents()
    if as_json:
        emit_json(listing.model_dump())
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        "agent", "state", "model", "team", "restarts/h", "inbox", "last seen", "reason", box=None
    )
    for a in listing.agents:
        style = {"running": "green", "failed": "red", "restarting": "yellow"}.get(a.state, "")
        table.add_row(
            a.name,
            a.state,
            a.model or "-",
            a.team or "-",
            str(a.restarts_last_hour),
            str(a.inbox_depth),
            fmt_time(a.last_seen),
            a.reason[:60],
            style=style,
        )
    Console().print(table)
    if listing.runtime is None:
        typer.echo("no runtime backend: containers are not managed by this host", err=True)


def _action(name: str, action: str, as_json: bool) -> None:
    from legion.api.client import ControlClient

    with host_errors(), ControlClient(State.paths()) as client:
        info = client.agent_action(name, action)
    if as_json:
        emit_json(info.model_dump())
    else:
        typer.echo(f"{info.name}: {info.state}" + (f" ({info.reason})" if info.reason else ""))


@app.command("start")
def start(name: str, as_json: JsonOpt = False) -> None:
    """Start an agent's container (also resets a `failed` agent)."""
    _action(name, "start", as_json)


@app.command("stop")
def stop(name: str, as_json: JsonOpt = False) -> None:
    """Stop an agent's container (the host will not restart it)."""
    _action(name, "stop", as_json)


@app.command("restart")
def restart(name: str, as_json: JsonOpt = False) -> None:
    """Restart an agent's container."""
    _action(name, "restart", as_json)
