"""`legion agents`: add, list, start, stop, restart and remove agents."""

from __future__ import annotations

from typing import Annotated

import typer

from legion.cli.common import (
    State,
    cell,
    console,
    echo,
    emit_json,
    fail,
    fmt_time,
    host_errors,
    usd_parser,
)
from legion.config_edit import agent_section, remove_sections

app = typer.Typer(
    help="Manage the fleet: add, list, start, stop, restart, remove agents.", no_args_is_help=True
)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
NAME_HELP = "Lowercase letters, digits and '-', starting with a letter, at most 32."


def require_valid_name(name: str) -> None:
    """The first wall: a name that breaks the documented rule (`legion.config.check_name`)
    is refused before anything is read, written or sent (it is pasted into TOML headers)."""
    from legion.config import check_name

    problem = check_name(name)
    if problem is not None:
        fail(problem, 2)


def _reload_if_running() -> str:
    from legion.api.client import ApiError

    with State.client() as client:
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
    name: Annotated[str, typer.Argument(help=NAME_HELP)],
    model: Annotated[
        str | None, typer.Option("--model", help="Model alias from [llm.models].")
    ] = None,
    role: Annotated[str | None, typer.Option("--role", help="What the agent is for.")] = None,
    budget_daily: Annotated[
        float | None,
        typer.Option(
            "--budget-daily", parser=usd_parser("--budget-daily"), metavar="USD", help="Daily cap."
        ),
    ] = None,
    budget_monthly: Annotated[
        float | None,
        typer.Option(
            "--budget-monthly",
            parser=usd_parser("--budget-monthly"),
            metavar="USD",
            help="Monthly cap.",
        ),
    ] = None,
    team: Annotated[str | None, typer.Option("--team", help="A team from [teams].")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Add an agent to legion.toml (and start it, if the host is running)."""
    require_valid_name(name)
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
    echo(f"added {name} to {paths.config}; {status}")
    for note in notes:
        typer.echo(f"note: {note}", err=True)


def _remove_volume(name: str) -> bool:
    """Delete the agent's volume without following anything planted in it."""
    from legion.errors import LegionError
    from legion.fleet import volume

    try:
        return volume.remove(State.paths(), name)
    except LegionError as exc:
        fail(f"{exc} [{exc.code}]", 1)
    except OSError as exc:
        fail(f"could not delete {State.paths().agent_data(name)}: {exc}", 1)


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
    require_valid_name(name)
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
        with host_errors(), ControlClient(paths) as client:
            if client.running():
                # The host deletes the volume (no-follow, audited) with the inbox.
                result = client.purge(name)
                if result.volume_removed:
                    purged.append(str(data))
                purged.append(f"{result.inbox_items_deleted} inbox items")
            else:
                if _remove_volume(name):
                    purged.append(str(data))
                purged.append(
                    "(inbox kept: start the host and run `legion agents rm` again to purge it)"
                )
    if as_json:
        emit_json({"removed": name, "host": status, "purged": purged})
        return
    echo(f"removed {name}; {status}")
    if purged:
        typer.echo("purged: " + ", ".join(purged))
    elif paths.agent_data(name).exists():
        typer.echo(f"its data stays in {paths.agent_data(name)} (use --purge to delete it)")


@app.command("ls")
def ls(as_json: JsonOpt = False) -> None:
    """List agents with their state, model, restarts and last heartbeat."""

    with host_errors(), State.client() as client:
        listing = client.agents()
    if as_json:
        emit_json(listing.model_dump())
        return
    from rich.table import Table

    table = Table(
        "agent",
        "state",
        "model",
        "team",
        "parent",
        "restarts/h",
        "inbox",
        "last seen",
        "reason",
        box=None,
    )
    for a in listing.agents:
        style = {"running": "green", "failed": "red", "restarting": "yellow"}.get(a.state, "")
        table.add_row(
            cell(a.name),
            cell(a.state),
            cell(a.model or "-"),
            cell(a.team or "-"),
            cell(a.parent or "-"),
            str(a.restarts_last_hour),
            str(a.inbox_depth),
            fmt_time(a.last_seen),
            cell(a.reason[:60]),  # a container's exit reason can quote the agent's output
            style=style,
        )
    console().print(table)
    if listing.runtime is None:
        typer.echo("no runtime backend: containers are not managed by this host", err=True)


def _action(name: str, action: str, as_json: bool) -> None:
    require_valid_name(name)

    with host_errors(), State.client() as client:
        info = client.agent_action(name, action)
    if as_json:
        emit_json(info.model_dump())
    else:
        echo(f"{info.name}: {info.state}" + (f" ({info.reason})" if info.reason else ""))


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


def _register_files() -> None:
    from legion.cli import files_cmd

    files_cmd.register(app)


_register_files()
