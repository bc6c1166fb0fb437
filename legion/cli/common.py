"""Shared CLI plumbing: the home option, output helpers, error handling.

Everything an agent can influence is printed through `safe_text()` (see `legion.textsafe`):
terminal controls and invisible format characters become visible escapes. Tables go
through `console()`, which never interprets Rich markup or emoji codes, and their cells
through `cell()`, so `[bold]` or `[link=...]` inside agent text prints as written.
`--json` output is `json.dumps` with ASCII escapes, so it carries no raw control byte either.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from legion.paths import Paths
from legion.textsafe import safe_text, safe_value

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

__all__ = ["safe_text", "safe_value"]


class State:
    home: str | None = None

    @classmethod
    def paths(cls) -> Paths:
        return Paths.resolve(cls.home)


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


def console(*, stderr: bool = False) -> Console:
    """A Rich console that never interprets markup, emoji codes or highlighting."""
    from rich.console import Console

    return Console(markup=False, emoji=False, highlight=False, stderr=stderr)


def cell(value: Any) -> Text:
    """A table cell holding `value` as literal, safe text."""
    from rich.text import Text

    return Text(safe_value(value))


@contextmanager
def host_errors() -> Iterator[None]:
    """Turn client errors into one clear line on stderr and a non-zero exit."""
    from legion.api.client import ApiError, HostNotRunning

    try:
        yield
    except HostNotRunning as exc:
        fail(str(exc), 3)
    except ApiError as exc:
        fail(f"{exc} [{exc.code}, HTTP {exc.status}]", 1)


_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: Callable[[], float] = time.time) -> float:
    """`30m`, `2h`, `7d` (ago), an ISO date or time, or a Unix timestamp."""
    m = _RELATIVE.match(text.strip())
    if m:
        return now() - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not a time; use 30m, 2h, 7d, an ISO time like 2026-01-31T12:00, "
            "or a Unix timestamp"
        ) from None
    return parsed.timestamp()


def fmt_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")
