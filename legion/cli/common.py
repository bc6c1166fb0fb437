"""Shared CLI plumbing: the home option, output helpers, error handling."""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any, NoReturn

import typer

from legion.paths import Paths


class State:
    home: str | None = None

    @classmethod
    def paths(cls) -> Paths:
        return Paths.resolve(cls.home)


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"legion: {message}", err=True)
    raise typer.Exit(code)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


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
