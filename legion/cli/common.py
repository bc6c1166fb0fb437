"""Shared CLI plumbing: the home option, output helpers, error handling.

Everything an agent can influence is printed through `safe_text()` (see `legion.textsafe`):
terminal controls and invisible format characters become visible escapes. Tables go
through `console()`, which never interprets Rich markup or emoji codes, and their cells
through `cell()`, so `[bold]` or `[link=...]` inside agent text prints as written.
`--json` output is `json.dumps` with ASCII escapes, so it carries no raw control byte either.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from legion.cli.inputs import InputError, parse_number, parse_time
from legion.paths import Paths
from legion.textsafe import safe_text, safe_value

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

    from legion.api.client import ControlClient
    from legion.api.remote import Remote

__all__ = ["safe_text", "safe_value"]


class State:
    home: str | None = None
    wide: bool = False  # set by --wide on commands that print tables
    # `--host ssh://...` (LEGION_HOST): the commands talk to that daemon through ssh.
    remote: Remote | None = None
    command: str = ""

    @classmethod
    def paths(cls) -> Paths:
        """This machine's LEGION_HOME. Under `--host` a command that works on the files of a
        home (not through the daemon's API) refuses, saying where to run it instead."""
        if cls.remote is not None:
            where = cls.remote.target
            fail(
                f"`legion {cls.command or '...'}` works on the files of a LEGION_HOME, not "
                f"through the daemon's API, so it does not take --host; run it on the server "
                f"(`ssh {where} legion {cls.command or '...'}`)",
                2,
            )
        return Paths.resolve(cls.home)

    @classmethod
    def client(cls, timeout: float = 35.0) -> ControlClient:
        """A client of the daemon: this home's control socket, or the --host one by ssh."""
        from legion.api.client import ControlClient

        if cls.remote is not None:
            return ControlClient.remote(cls.remote, timeout=timeout)
        return ControlClient(cls.paths(), timeout=timeout)


def fail(message: str, code: int = 1) -> NoReturn:
    """One line (or a few) on stderr and a non-zero exit. Messages often carry text from the
    host or an agent (an API error naming a key), so they are printed safe."""
    typer.echo(f"legion: {safe_text(message, multiline=True)}", err=True)
    raise typer.Exit(code)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def json_line(data: Any) -> str:
    """Compact JSON on one line, every non-ASCII and control character escaped."""
    return json.dumps(data, default=str, separators=(",", ":"))


def echo(text: str, *, err: bool = False, multiline: bool = False) -> None:
    """Print agent-influenced text safely (one line unless `multiline`)."""
    typer.echo(safe_text(text, multiline=multiline), err=err)


# Wide enough for any value a table cell holds: piped output is never cut or wrapped.
UNBOUNDED_WIDTH = 1_000_000


def subapp(help: str) -> typer.Typer:
    """A command group: plain help text (no Rich markup, so `[llm.models]` prints as
    written) and its help when called without a subcommand."""
    return typer.Typer(help=help, no_args_is_help=True, rich_markup_mode=None)


def wide_output(wide: bool = False) -> bool:
    """Whether tables print every value whole on one line per row: with `--wide`, and
    always when stdout is not a terminal (a script or a pipe never gets a cut value)."""
    return wide or State.wide or not sys.stdout.isatty()


def console(*, stderr: bool = False, wide: bool = False) -> Console:
    """A Rich console that never interprets markup, emoji codes or highlighting. `wide`:
    no width limit (tables print one line per row, nothing cut)."""
    from rich.console import Console

    width = UNBOUNDED_WIDTH if wide else None
    return Console(markup=False, emoji=False, highlight=False, stderr=stderr, width=width)


def table(*columns: str) -> Any:
    """A borderless Rich table whose cells never lose text: on a terminal a long value
    folds onto more lines of its cell; `print_table` puts it on one line when wide."""
    from rich.table import Table

    out = Table(box=None, pad_edge=False)
    for column in columns:
        out.add_column(column, overflow="fold")
    return out


def print_table(out: Any, wide: bool = False) -> None:
    """Print a `table()`: folded to the terminal's width, or, when `wide_output()`, each row
    on one line with every value whole."""
    if wide_output(wide):
        for column in out.columns:
            column.no_wrap = True
        wide_console = console(wide=True)
        with wide_console.capture() as captured:
            wide_console.print(out, soft_wrap=False)
        # Rich pads every cell to its column's width: no trailing blanks in a script's input.
        lines = captured.get().splitlines()
        sys.stdout.write("".join(line.rstrip() + "\n" for line in lines))
    else:
        console().print(out)


WIDE_HELP = "One line per row, every value whole (the default when stdout is not a terminal)."


def cell(value: Any) -> Text:
    """A table cell holding `value` as literal, safe text."""
    from rich.text import Text

    return Text(safe_value(value))


@contextmanager
def host_errors() -> Iterator[None]:
    """Turn client errors into one clear line on stderr and a non-zero exit: 3 when no host
    runs for this home, 1 when the host refused (stdout stays empty, `--json` or not)."""
    from legion.api.reach import HostError, HostNotRunning

    try:
        yield
    except HostNotRunning as exc:
        fail(str(exc), 3)
    except HostError as exc:
        fail(f"{exc} [{exc.code}, HTTP {exc.status}]", 1)


def typer_parser(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """A `legion.cli.inputs` parser as a typer `parser=`: a bad value is a usage error (one
    line naming the option and what to write, exit 2), never a traceback."""

    def parser(text: str) -> Any:
        if not isinstance(text, str):  # typer hands defaults through as they are
            return text
        try:
            return parse(text)
        except InputError as exc:
            raise typer.BadParameter(str(exc)) from None

    return parser


def parse_since(text: str, now: Callable[[], float] = time.time) -> float:
    """`--since`: see `legion.cli.inputs.parse_time` (30m, 2h, 7d, ISO, Unix; 1970-9999)."""
    return float(typer_parser(lambda t: parse_time(t, now))(text))


since_parser = typer_parser(parse_time)
SINCE_HELP = "30m, 2h, 7d (ago), an ISO time like 2026-01-31T12:00, or a Unix time"


def seconds_parser(what: str, minimum: float, maximum: float) -> Callable[[str], Any]:
    return typer_parser(lambda t: parse_number(t, what=what, minimum=minimum, maximum=maximum))


def usd_parser(what: str) -> Callable[[str], Any]:
    from legion.config import MAX_USD

    return typer_parser(lambda t: parse_number(t, what=what, minimum=0.0, maximum=MAX_USD))


def fmt_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")
