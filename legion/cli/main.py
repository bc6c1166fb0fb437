"""The `legion` command: one module per command group, each imported only when it runs.

`legion --help`, `--version` and `status` must start fast (a test holds the set of modules
`legion --help` loads; `bench/cli_startup.py` times them against `python3 -c pass`), so this
module imports typer and nothing else of weight: the table below names each command's
module and its one-line help, and `LazyGroup` imports a module the first time its command
is resolved. Help is plain text (typer's rich markup off): `[llm.models]` in a help string
prints as written.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, MutableMapping
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from legion import __version__
from legion.cli.common import State, fail

# name -> (module, attribute, one-line help). The attribute is a `typer.Typer` (a group) or
# a function (a command). The help is what `legion --help` lists without importing the
# module; tests/cli/test_help.py checks it is the command's own first docstring line.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "status": (
        "legion.cli.host_cmd",
        "status",
        "Show the running host: pid, uptime, home, agents.",
    ),
    "daemon": (
        "legion.cli.host_cmd",
        "daemon",
        "Run the host in the foreground. SIGTERM stops it; SIGHUP reloads legion.toml.",
    ),
    "stop": (
        "legion.cli.host_cmd",
        "stop",
        "Stop the running host cleanly (over its control socket; by SIGTERM if that is gone).",
    ),
    "pause": (
        "legion.cli.pause_cmd",
        "pause",
        "Stop LLM dispatch now: cut the calls in flight, refuse new ones until `legion resume`.",
    ),
    "resume": (
        "legion.cli.pause_cmd",
        "resume",
        "Resume LLM dispatch of an agent (or of the whole fleet with --all).",
    ),
    "setup": (
        "legion.cli.setup_cmd",
        "setup",
        "Set up legion: a provider and model, its key in the vault, a starter fleet.",
    ),
    "agents": (
        "legion.cli.agents_cmd",
        "app",
        "Manage the fleet: add, list, start, stop, restart, remove agents.",
    ),
    "chat": (
        "legion.cli.chat_cmd",
        "chat",
        "Chat with an agent: its reply streams to stdout as it is generated.",
    ),
    "models": (
        "legion.cli.models_cmd",
        "app",
        "The model aliases: provider, price, credential and cooldown of each.",
    ),
    "costs": (
        "legion.cli.costs_cmd",
        "costs",
        "Spend per agent and model (UTC day and month), with each agent's caps.",
    ),
    "vault": (
        "legion.cli.vault_cmd",
        "app",
        "Manage credentials (provider keys, and secrets agents use by handle).",
    ),
    "bb": ("legion.cli.bb", "app", "Read and write the blackboard (needs a running host)."),
    "events": (
        "legion.cli.events_cmd",
        "events",
        "Follow the host's event stream (Ctrl-C to stop).",
    ),
    "audit": (
        "legion.cli.audit_cmd",
        "audit",
        "List audit records, or verify that none was edited, deleted, reordered or cut off.",
    ),
    "logs": (
        "legion.cli.logs_cmd",
        "logs",
        "Show an agent's container logs (the runtime's JSON lines, made readable).",
    ),
    "cron": (
        "legion.cli.cron_cmd",
        "app",
        "Cron schedules: an agent gets a message, or the host runs one tool for it.",
    ),
    "webhooks": (
        "legion.cli.webhooks_cmd",
        "app",
        "Webhooks: signed HTTP endpoints that queue a job for an agent.",
    ),
    "mcp": (
        "legion.cli.mcp_cmd",
        "app",
        "MCP servers: local (in agents' containers) and remote.",
    ),
    "skills": (
        "legion.cli.skills_cmd",
        "app",
        "Agent Skills: folders with a SKILL.md, for one agent or the whole fleet.",
    ),
    "browser": (
        "legion.cli.browser_cmd",
        "app",
        "The agents' browsers: state, the VNC hand-off (watch, log in, solve a CAPTCHA).",
    ),
    "db": (
        "legion.cli.db_cmd",
        "app",
        "host.db: sizes, retention (the retention section of legion.toml) and audit archives.",
    ),
    "images": (
        "legion.cli.images_cmd",
        "app",
        "Build and list the agent and browser container images.",
    ),
    "config": (
        "legion.cli.config_cmd",
        "app",
        "Check, create or reload the config file (legion.toml).",
    ),
    "dial-stdio": (
        "legion.cli.dial_cmd",
        "dial_stdio",
        "Bridge stdin/stdout to the control socket (what `legion --host ssh://...` runs here).",
    ),
    "doctor": (
        "legion.cli.doctor_cmd",
        "doctor",
        "Check Docker, images, models, credentials and the config; say what to fix.",
    ),
}


def load_command(name: str) -> Any:
    """The click command of `name`, importing its module now."""
    module, attribute, _ = COMMANDS[name]
    target = getattr(importlib.import_module(module), attribute)
    command: Any
    if isinstance(target, typer.Typer):
        command = typer.main.get_group(target)
    else:
        single = typer.Typer(rich_markup_mode=None, add_completion=False)
        single.command(name)(target)
        command = typer.main.get_command(single)
    command.name = name
    _name_values(command)
    plain = command.get_params
    command.get_params = lambda ctx: _plain_text_options(plain(ctx))
    return command


def _name_values(command: Any) -> None:
    """Show what each argument and option takes by its name, in capitals (`NAME`,
    `--agent AGENT`), where the code gave no metavar of its own: typer would show the
    Python type (`<str>`, `<int range>`). Flags take no value and show none."""
    for param in getattr(command, "params", []):
        if param.metavar is None and not getattr(param, "is_flag", False) and param.name:
            param.metavar = param.name.upper()
        if getattr(param, "param_type_name", "") == "argument":
            # An argument is listed by its name already; typer would add its Python type
            # beside it (`NAME <str>`).
            param.display_type_rich = _no_type
    for sub in getattr(command, "commands", {}).values():
        _name_values(sub)


def _no_type(ctx: Any) -> None:
    return None


def _plain_text_options(params: list[Any]) -> list[Any]:
    """Give text and flag options (`--home`, `--json`, `--help`) typer's pass-through
    coercion up front.

    Typer (0.29) coerces every non-flag value through a pydantic TypeAdapter it builds on
    first use, which imports pydantic: a third of what `legion status` would cost to start.
    A text option or a flag needs no coercion (the value is the text given, or the flag's
    bool; some flags default to None), and typer's own
    `PassThroughRuntimeParam` does exactly that. Typer versions without lazy runtime
    coercion are left alone."""
    try:
        from typer._coercion import PassThroughRuntimeParam
    except ImportError:
        return params
    for param in params:
        descriptor = getattr(param, "type_descriptor", None)
        if descriptor is None or descriptor.annotation not in (str, bool):
            continue
        if getattr(param, "_runtime_param", False) is None:
            param._runtime_param = PassThroughRuntimeParam(
                parameter_info=descriptor.parameter_info, annotation=descriptor.annotation
            )
    return params


class _Commands(MutableMapping[str, Any]):
    """The root's subcommands: names known up front, commands built on first use."""

    def __init__(self, eager: MutableMapping[str, Any]) -> None:
        self.loaded: dict[str, Any] = dict(eager)

    def __getitem__(self, name: str) -> Any:
        if name not in self.loaded:
            if name not in COMMANDS:
                raise KeyError(name)
            self.loaded[name] = load_command(name)
        return self.loaded[name]

    def __setitem__(self, name: str, command: Any) -> None:
        self.loaded[name] = command

    def __delitem__(self, name: str) -> None:
        del self.loaded[name]

    def __iter__(self) -> Iterator[str]:
        yield from COMMANDS
        yield from (n for n in self.loaded if n not in COMMANDS)

    def __len__(self) -> int:
        return len(set(COMMANDS) | set(self.loaded))


class LazyGroup(TyperGroup):
    """The root group: lists every command from `COMMANDS` without importing them."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = _Commands(self.commands)

    def get_params(self, ctx: Any) -> list[Any]:
        return _plain_text_options(super().get_params(ctx))

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = [(name, spec[2]) for name, spec in COMMANDS.items()]
        # A command registered on `app` directly (not in the table) is listed too: it was
        # imported already, so its own short help costs nothing.
        extra = self.commands.loaded if isinstance(self.commands, _Commands) else {}
        rows += [
            (name, command.get_short_help_str(limit=formatter.width))
            for name, command in extra.items()
            if name not in COMMANDS and not getattr(command, "hidden", False)
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


app = typer.Typer(
    name="legion",
    cls=LazyGroup,
    help="A secure, self-hosted runtime for fleets of LLM agents.\n\n"
    "`legion` alone opens the operator's TUI: attached to the daemon of this home when one "
    "runs, else embedding the host. `legion daemon` runs the host headless; the other "
    "commands work against it. First time here: the README's quick start, and "
    "`legion doctor` says what is missing.",
    invoke_without_command=True,
    add_completion=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


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
            metavar="DIR",
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


def main() -> None:
    try:
        app()
    except PermissionError as exc:
        # A file of the home this user may not read or write (the home is another user's):
        # one line, never a traceback. Commands that reach the host say it their own way.
        import sys

        from legion.cli.common import safe_text

        sys.stderr.write(f"legion: {safe_text(_no_rights(exc))}\n")
        raise SystemExit(1) from None


def _no_rights(exc: PermissionError) -> str:
    import os
    import pwd

    where = exc.filename or ""
    owner = ""
    probe = os.path.abspath(where) if where else ""
    while probe:
        try:
            uid = os.stat(probe).st_uid
        except OSError:
            parent = os.path.dirname(probe)
            probe = "" if parent == probe else parent
            continue
        try:
            owner = pwd.getpwuid(uid).pw_name
        except KeyError:
            owner = f"uid {uid}"
        break
    whose = f"it belongs to {owner}" if owner and os.geteuid() != uid else "check its permissions"
    return (
        f"permission denied on {where or 'a file of this home'} ({exc.strerror}): {whose}; "
        "run this as that user (e.g. with sudo), or pick your own home with --home"
    )
