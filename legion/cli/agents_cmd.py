"""`legion agents`: add, list, start, stop, restart and remove agents."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from legion.cli.common import (
    WIDE_HELP,
    State,
    cell,
    echo,
    emit_json,
    fail,
    fmt_time,
    host_errors,
    print_table,
    subapp,
    table,
    usd_parser,
)

app = subapp("Manage the fleet: add, list, start, stop, restart, remove agents.")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
NAME_HELP = "Lowercase letters, digits and '-', starting with a letter, at most 32."
NameArg = Annotated[str, typer.Argument(metavar="NAME", help="A configured agent.")]


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
    from legion.config import config_write_target, parse_config
    from legion.errors import ConfigError
    from legion.fsutil import atomic_write

    path = State.paths().config
    try:
        parse_config(text, str(path))
    except ConfigError as exc:
        fail("the change would make legion.toml invalid; nothing was written:\n" + exc.render(), 2)
    try:
        target = config_write_target(path)
    except ConfigError as exc:
        fail(exc.render(), 2)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, text)


def _current_text() -> str:
    from legion.config import read_config_text
    from legion.errors import ConfigError

    path = State.paths().config
    try:
        return read_config_text(path) or ""
    except ConfigError as exc:
        fail(exc.render(), 2)


def _split_list(values: list[str] | None) -> list[str]:
    return [v.strip() for item in values or [] for v in item.split(",") if v.strip()]


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(metavar="NAME", help=NAME_HELP)],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            metavar="ALIAS",
            help="Its model: an alias from [llm.models] (`legion models ls`); default: "
            "[llm] default_model.",
        ),
    ] = None,
    role: Annotated[
        str | None, typer.Option("--role", metavar="TEXT", help="What the agent is for.")
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option(
            "--mode",
            metavar="chat|task",
            help="chat (a conversation with tool use; the default) or task (each message is "
            "a task ending in a structured result).",
        ),
    ] = None,
    system_prompt: Annotated[
        str | None,
        typer.Option(
            "--system-prompt",
            metavar="TEXT",
            help="Extra instructions added to its system prompt (may span lines).",
        ),
    ] = None,
    allowed_models: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-models",
            metavar="ALIAS,...",
            help="Other model aliases it may ask for by name (repeat, or comma-separated).",
        ),
    ] = None,
    budget_daily: Annotated[
        float | None,
        typer.Option(
            "--budget-daily",
            parser=usd_parser("--budget-daily"),
            metavar="USD",
            help="Daily spend cap.",
        ),
    ] = None,
    budget_monthly: Annotated[
        float | None,
        typer.Option(
            "--budget-monthly",
            parser=usd_parser("--budget-monthly"),
            metavar="USD",
            help="Monthly spend cap.",
        ),
    ] = None,
    team: Annotated[
        str | None, typer.Option("--team", metavar="TEAM", help="A team from [teams].")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Add an agent to legion.toml (and start it, if the host is running).

    The file is edited in place: its comments and layout stay, and the result is checked
    before it is written (nothing is written when it would be invalid, e.g. a model that
    is not defined).
    """
    require_valid_name(name)
    from legion.config_edit import AgentExists, AgentFields, NotEditable, add_agent

    if mode is not None and mode not in ("chat", "task"):
        fail(f"--mode {mode!r}: use chat or task", 2)
    paths = State.paths()
    fields = AgentFields(
        role=role,
        mode=mode,
        model=model,
        team=team,
        allowed_models=_split_list(allowed_models),
        system_prompt=system_prompt,
        budget_daily=budget_daily,
        budget_monthly=budget_monthly,
    )
    try:
        text = add_agent(_current_text(), name, fields)
    except AgentExists:
        fail(
            f"agent {name!r} already exists in {paths.config}; pick another name, or "
            f"`legion agents rm {name}` first",
            1,
        )
    except NotEditable as exc:
        fail(f"{paths.config}: {exc}", 2)
    _write_config(text)
    notes = []
    if paths.agent_data(name).exists() or paths.agent_identity(name).exists():
        notes.append(
            f"{name!r} existed before: it will see the files left in {paths.agent_data(name)} "
            f"and {paths.agent_identity(name)} (`legion agents rm {name} --purge` for a "
            "fresh start)"
        )
    status = _reload_if_running()
    if as_json:
        emit_json({"added": name, "config": fields.values(), "host": status, "notes": notes})
        return
    echo(f"added {name} to {paths.config}; {status}")
    for note in notes:
        typer.echo(f"note: {note}", err=True)


def _remove_files(name: str) -> list[str]:
    """Delete a removed agent's files without a host (volume, socket folder, identity,
    browser profile, skills), following nothing planted in them."""
    from legion.errors import LegionError
    from legion.fleet import volume

    try:
        return volume.remove_state(State.paths(), name)
    except LegionError as exc:
        fail(f"{exc} [{exc.code}]", 1)
    except OSError as exc:
        fail(f"could not delete {name}'s files: {exc}", 1)


def _purge(name: str) -> dict[str, Any]:
    """Delete everything a removed agent left: through the host when it runs (files, inbox
    and subscriptions, audited), else its files, saying what stays."""
    from legion.api.client import ApiError, ControlClient

    paths = State.paths()
    with host_errors(), ControlClient(paths) as client:
        if client.running():
            try:
                result = client.purge(name)
            except ApiError as exc:
                if exc.code != "nothing_to_purge":
                    raise
                return {"removed": [], "inbox_items_deleted": 0, "kept": []}
            return {
                "removed": result.removed,
                "inbox_items_deleted": result.inbox_items_deleted,
                "kept": [],
            }
    removed = _remove_files(name)
    kept = []
    waiting = _queued(name)
    if waiting:
        kept.append(
            f"{waiting} inbox items or subscriptions in {paths.host_db} (the host deletes "
            f"them: `legion agents purge {name}` while it runs)"
        )
    return {"removed": removed, "inbox_items_deleted": 0, "kept": kept}


def _queued(name: str) -> int:
    """Inbox items and subscriptions of `name` in host.db (read-only; 0 without one)."""
    from legion.store import connect

    path = State.paths().host_db
    if not path.exists():
        return 0
    try:
        db = connect(path, readonly=True)
    except Exception:
        return 0
    try:
        conn = db.connection()  # type: ignore[no-untyped-call]
        count = 0
        for table in ("inbox", "subscriptions"):
            row = conn.execute(f"SELECT COUNT(*) FROM {table} WHERE agent = ?", (name,)).fetchone()
            count += int(row[0])
        return count
    except Exception:
        return 0
    finally:
        db.close()


def _print_purge(name: str, purged: dict[str, Any]) -> None:
    removed = purged["removed"]
    if removed or purged["inbox_items_deleted"]:
        typer.echo(
            "purged: " + ", ".join([*removed, f"{purged['inbox_items_deleted']} inbox items"])
        )
    else:
        typer.echo(f"{name} had no state left to delete")
    for kept in purged["kept"]:
        typer.echo(f"kept: {kept}", err=True)


@app.command("rm")
def rm(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The agent to remove.")],
    purge: Annotated[
        bool,
        typer.Option(
            "--purge",
            help="Also delete its state: volume (workspace, memory), socket folder, bootstrap "
            "files and their versions, browser profile, skills installed for it, inbox and "
            "subscriptions.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove an agent from legion.toml (stopping it); --purge deletes its state too."""
    require_valid_name(name)
    from legion.config_edit import NotEditable, UnknownAgent, remove_agent

    paths = State.paths()
    try:
        text = remove_agent(_current_text(), name)
    except UnknownAgent:
        hint = (
            f"; its state is still there: `legion agents purge {name}` deletes it"
            if _has_files(name)
            else ""
        )
        fail(f"no agent named {name!r} in {paths.config}{hint}", 1)
    except NotEditable as exc:
        fail(f"{paths.config}: {exc}", 2)
    _write_config(text)
    status = _reload_if_running()
    purged = _purge(name) if purge else None
    if as_json:
        emit_json({"removed": name, "host": status, "purged": purged})
        return
    echo(f"removed {name}; {status}")
    if purged is not None:
        _print_purge(name, purged)
    elif _has_files(name):
        typer.echo(
            f"its state stays in {paths.agent_data(name)} and {paths.agent_identity(name)} "
            f"(`legion agents purge {name}` deletes it)"
        )


def _has_files(name: str) -> bool:
    from legion.fleet.volume import STATE_DIRS

    home = State.paths().home
    return any(
        p.exists() or p.is_symlink() for p in (home.joinpath(*dirs, name) for dirs in STATE_DIRS)
    )


@app.command("purge")
def purge_cmd(
    name: Annotated[str, typer.Argument(metavar="NAME", help="A removed agent.")],
    as_json: JsonOpt = False,
) -> None:
    """Delete what a removed agent left: volume, socket folder, bootstrap files, inbox.

    For an agent no longer in legion.toml (`legion agents rm NAME` first). With the host
    running it deletes everything (audited); without one, the files, and it says what stays.
    """
    require_valid_name(name)
    from legion.config import load_config
    from legion.errors import ConfigError

    paths = State.paths()
    try:
        configured = name in load_config(paths.config).agents
    except ConfigError as exc:
        fail(exc.render(), 2)
    if configured:
        fail(f"{name} is still in {paths.config}; `legion agents rm {name} --purge` removes it", 1)
    purged = _purge(name)
    if not (purged["removed"] or purged["inbox_items_deleted"] or purged["kept"]):
        fail(f"{name} has no state to delete (no agent of that name left anything)", 1)
    if as_json:
        emit_json({"agent": name, **purged})
        return
    _print_purge(name, purged)


@app.command("ls")
def ls(
    as_json: JsonOpt = False,
    wide: Annotated[bool, typer.Option("--wide", help=WIDE_HELP)] = False,
) -> None:
    """List agents with their state, model, restarts and last heartbeat."""

    with host_errors(), State.client() as client:
        listing = client.agents()
    if as_json:
        emit_json(listing.model_dump())
        return
    out = table(
        "agent", "state", "model", "team", "parent", "restarts/h", "inbox", "last seen", "reason"
    )
    for a in listing.agents:
        style = {"running": "green", "failed": "red", "restarting": "yellow"}.get(a.state, "")
        out.add_row(
            cell(a.name),
            cell(a.state),
            cell(a.model or "-"),
            cell(a.team or "-"),
            cell(a.parent or "-"),
            str(a.restarts_last_hour),
            str(a.inbox_depth),
            fmt_time(a.last_seen),
            cell(a.reason),  # a container's exit reason can quote the agent's output
            style=style,
        )
    print_table(out, wide)
    if not listing.agents:
        typer.echo("no agents yet: `legion agents add NAME --model ALIAS`", err=True)
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
def start(name: NameArg, as_json: JsonOpt = False) -> None:
    """Start an agent's container (also resets a `failed` agent)."""
    _action(name, "start", as_json)


@app.command("stop")
def stop(name: NameArg, as_json: JsonOpt = False) -> None:
    """Stop an agent's container (the host will not restart it)."""
    _action(name, "stop", as_json)


@app.command("restart")
def restart(name: NameArg, as_json: JsonOpt = False) -> None:
    """Restart an agent's container."""
    _action(name, "restart", as_json)


def _register_files() -> None:
    from legion.cli import files_cmd

    files_cmd.register(app)


_register_files()
