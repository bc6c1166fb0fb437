"""`legion logs NAME`: an agent's container output, made readable.

The agent runtime writes one JSON object per line (`ts`, `level`, `logger`, `msg`, maybe
`exc`); they print as `2026-01-31T12:00:00.123Z info    agent: msg key=value`. `--json`
prints one JSON object per line instead: the runtime's records as they are, and any other
line as `{"msg": "...", "raw": true}`. Either way nothing the agent wrote reaches the
terminal with its control characters (they show as escapes; in JSON, as JSON escapes).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Any

import typer

from legion.cli.common import State, fail, host_errors, parse_since
from legion.logs import iso_time, visible

DEFAULT_TAIL = "200"


def _time_text(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return iso_time(float(value))
        except (OverflowError, OSError, ValueError):
            return str(value)
    return str(value)


def _value_text(value: Any) -> str:
    if isinstance(value, str) and value and not any(c in value for c in ' "=\\'):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def readable(line: str) -> str:
    """One line of container output for people (see the module docstring)."""
    try:
        record = json.loads(line)
    except ValueError:
        return visible(line)
    if not isinstance(record, dict) or not isinstance(record.get("msg"), str):
        return visible(line)
    record = dict(record)
    ts = _time_text(record.pop("ts", "-"))
    level = str(record.pop("level", "-"))
    logger = str(record.pop("logger", "-"))
    msg = record.pop("msg")
    exc = record.pop("exc", None)
    parts = [ts, f"{level:<7}", f"{logger}:", msg]
    parts += [f"{key}={_value_text(value)}" for key, value in record.items()]
    text = visible(" ".join(parts))
    if isinstance(exc, str):
        text += "".join(f"\n    {visible(row)}" for row in exc.splitlines())
    return text


def as_json_line(line: str) -> str:
    """One line of container output as one JSON object, safe on a terminal."""
    try:
        value = json.loads(line)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        value = {"msg": line, "raw": True}
    # ensure_ascii: every control character (C1 too, which JSON allows raw) is escaped.
    return json.dumps(value, ensure_ascii=True)


def _tail(text: str) -> int | None:
    if text == "all":
        return None
    if not text.isdigit() or len(text) > 7:
        raise typer.BadParameter(f"{text!r}: use a number of lines (0 to 1000000) or all")
    return int(text)


def logs(
    name: Annotated[str, typer.Argument(help="The agent whose container output to show.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing what it writes (Ctrl-C stops).")
    ] = False,
    since: Annotated[
        str | None,
        typer.Option(
            "--since", help="Only what was written after: 30m, 2h, 7d, an ISO time, Unix time."
        ),
    ] = None,
    tail: Annotated[
        str,
        typer.Option("--tail", "-n", help="How many of the last lines, or all.", metavar="N|all"),
    ] = DEFAULT_TAIL,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per line, as the runtime wrote it.")
    ] = False,
) -> None:
    """Show an agent's container logs (the runtime's JSON lines, made readable)."""

    lines_wanted = _tail(tail)
    since_ts = parse_since(since) if since is not None else None
    render = as_json_line if as_json else readable
    try:
        with host_errors(), State.client() as client:
            for line in client.logs(name, tail=lines_wanted, since=since_ts, follow=follow):
                sys.stdout.write(render(line) + "\n")
                if follow:
                    sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `legion logs x | head`: the reader has all it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(0) from None
    except OSError as exc:
        fail(f"cannot write the logs: {exc}", 1)
