"""The `legion` command: host daemon, status, blackboard, audit and config."""

from __future__ import annotations

from typing import Annotated

import typer

from legion import __version__
from legion.cli import (
    agents_cmd,
    audit_cmd,
    bb,
    chat_cmd,
    config_cmd,
    costs_cmd,
    images_cmd,
    vault_cmd,
)
from legion.cli.common import State, emit_json, fmt_time, host_errors

app = typer.Typer(
    name="legion",
    help="A secure, self-hosted runtime for fleets of LLM agents.\n\n"
    "`legion` alone opens the operator's TUI: attached to the daemon of this home when one "
    "runs, else embedding the host. `legion daemon` runs the host headless; the other "
    "commands work against it.",
    invoke_without_command=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(bb.app, name="bb")
app.add_typer(config_cmd.app, name="config")
app.add_typer(vault_cmd.app, name="vault")
app.add_typer(images_cmd.app, name="images")
app.add_typer(agents_cmd.app, name="agents")
app.command("chat")(chat_cmd.chat)
app.command("audit")(audit_cmd.audit)
app.command("costs")(costs_cmd.costs)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"legion {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    home: Annotated[
        str | None,
        typer.Option(
            "--home",
            envvar="LEGION_HOME",
            show_envvar=True,
            help="State folder (default: $XDG_DATA_HOME/legion, i.e. ~/.local/share/legion).",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    State.home = home
    if ctx.invoked_subcommand is None:
        # The only import of the TUI (and so of textual) in the CLI: lazy, here.
        from tui.launch import run

        raise typer.Exit(run(State.paths()))


@app.command()
def daemon(
    systemd: Annotated[
        bool,
        typer.Option("--systemd", help="Send READY/STOPPING to systemd through NOTIFY_SOCKET."),
    ] = False,
    print_unit: Annotated[
        bool, typer.Option("--print-unit", help="Print a systemd unit file for this home and exit.")
    ] = False,
) -> None:
    """Run the host in the foreground (logs JSON to stderr; SIGTERM stops it)."""
    from legion import daemon as daemon_mod

    paths = State.paths()
    if print_unit:
        typer.echo(daemon_mod.unit_file(paths), nl=False)
        return
    raise typer.Exit(daemon_mod.run(paths, systemd=systemd))


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show the running host: pid, uptime, home, agents."""
    from legion.api.client import ControlClient

    with host_errors(), ControlClient(State.paths()) as client:
        st = client.status()
    if as_json:
        emit_json(st.model_dump())
        return
    typer.echo(f"legion {st.version}  pid {st.pid}  up {st.uptime_s:.0f}s  home {st.home}")
    if not st.agents:
        typer.echo("no agents configured (add [agents.<name>] to legion.toml)")
    for a in st.agents:
        typer.echo(
            f"  {a.name:<20} team={a.team or '-':<10} inbox={a.inbox_depth:<6} "
            f"last seen {fmt_time(a.last_heartbeat)}"
        )


@app.command()
def stop(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Stop the running host cleanly."""
    import time

    from legion.api.client import ControlClient

    paths = State.paths()
    with host_errors(), ControlClient(paths) as client:
        client.stop()
    deadline = time.monotonic() + 15
    while paths.control_socket.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if as_json:
        emit_json({"stopped": not paths.control_socket.exists()})
    else:
        typer.echo("host stopped" if not paths.control_socket.exists() else "host is stopping")


@app.command()
def events(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON per line.")] = False,
) -> None:
    """Follow the host's event stream (Ctrl-C to stop)."""
    from legion.api.client import ControlClient

    try:
        with host_errors(), ControlClient(State.paths()) as client:
            for event in client.events():
                if as_json:
                    typer.echo(event.model_dump_json())
                else:
                    fields = event.model_dump(exclude={"type", "at"})
                    text = " ".join(f"{k}={v}" for k, v in fields.items())
                    typer.echo(f"{fmt_time(event.at)} {event.type:<20} {text}")
    except KeyboardInterrupt:
        pass


@app.command()
def doctor(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Check Docker, the images, the container runtime and the config; say what to fix."""
    from legion.config import load_config
    from legion.errors import ConfigError
    from legion.fleet.doctor import run_checks

    paths = State.paths()
    config, error = None, None
    try:
        config = load_config(paths.config)
    except ConfigError as exc:
        error = exc.render()
    checks = run_checks(paths, config, error)
    if as_json:
        emit_json([c.as_dict() for c in checks])
    else:
        for c in checks:
            typer.echo(f"{'ok  ' if c.ok else 'FAIL'} {c.name:<18} {c.detail}")
            if not c.ok and c.fix:
                typer.echo(f"     {'':<18} fix: {c.fix}")
    raise typer.Exit(0 if all(c.ok for c in checks) else 1)


def main() -> None:
    app()
