"""The `legion` command: host daemon, status, blackboard, audit and config."""

from __future__ import annotations

from typing import Annotated

import typer

from legion import __version__
from legion.cli import (
    agents_cmd,
    audit_cmd,
    bb,
    browser_cmd,
    chat_cmd,
    config_cmd,
    costs_cmd,
    cron_cmd,
    dial_cmd,
    host_cmd,
    images_cmd,
    logs_cmd,
    mcp_cmd,
    pause_cmd,
    setup_cmd,
    skills_cmd,
    vault_cmd,
    webhooks_cmd,
)
from legion.cli.common import State, echo, emit_json, fail, fmt_time, host_errors, json_line

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
app.add_typer(mcp_cmd.app, name="mcp")
app.add_typer(skills_cmd.app, name="skills")
app.add_typer(cron_cmd.app, name="cron")
app.add_typer(webhooks_cmd.app, name="webhooks")
app.add_typer(browser_cmd.app, name="browser")
app.command("chat")(chat_cmd.chat)
app.command("audit")(audit_cmd.audit)
app.command("costs")(costs_cmd.costs)
app.command("daemon")(host_cmd.daemon)
app.command("status")(host_cmd.status)
app.command("stop")(host_cmd.stop)
app.command("logs")(logs_cmd.logs)
app.command("pause")(pause_cmd.pause)
app.command("resume")(pause_cmd.resume)
app.command("setup")(setup_cmd.setup)
app.command("dial-stdio")(dial_cmd.dial_stdio)


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
    host: Annotated[
        str | None,
        typer.Option(
            "--host",
            envvar="LEGION_HOST",
            show_envvar=True,
            metavar="ssh://[user@]server[:port][/home]",
            help="Work with the daemon on another machine through ssh (it runs `legion "
            "dial-stdio` there; no port is opened). The path, if any, is the server's "
            "LEGION_HOME. LEGION_SSH_COMMAND replaces `ssh`, LEGION_REMOTE_LEGION names the "
            "legion command on the server.",
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
    State.command = ctx.invoked_subcommand or ""
    State.remote = None
    if host:
        from legion.api.remote import Remote

        try:
            State.remote = Remote.parse(host)
        except ValueError as exc:
            fail(str(exc), 2)
        if ctx.invoked_subcommand == "dial-stdio":
            fail("`legion dial-stdio` bridges to this machine's daemon; it takes no --host", 2)
    if ctx.invoked_subcommand is None:
        # The only import of the TUI (and so of textual) in the CLI: lazy, here.
        from tui.launch import run, run_remote

        if State.remote is not None:
            raise typer.Exit(run_remote(State.remote, home))
        raise typer.Exit(run(State.paths()))


@app.command()
def events(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON per line.")] = False,
) -> None:
    """Follow the host's event stream (Ctrl-C to stop)."""

    try:
        with host_errors(), State.client() as client:
            for event in client.events():
                if as_json:
                    # ASCII-escaped: no raw control or bidi character reaches the terminal.
                    typer.echo(json_line(event.model_dump(mode="json")))
                else:
                    # One event per line: a newline inside agent text is shown as \x0a.
                    fields = event.model_dump(exclude={"type", "at"})
                    text = " ".join(f"{k}={v}" for k, v in fields.items())
                    echo(f"{fmt_time(event.at)} {event.type:<20} {text}")
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
