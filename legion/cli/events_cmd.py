"""`legion events`: follow the host's event stream, readable or as JSON lines."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from legion.cli.common import State, echo, fail, fmt_time, host_errors, json_line

# Events that concern every agent: shown whatever `--agent` says.
_FLEET_WIDE = frozenset({"host_started", "host_stopping", "events_lagged"})
# Fields that name the agent an event is about.
_AGENT_FIELDS = ("agent", "actor", "sender")


def event_types() -> list[str]:
    """Every event type the host sends (the `type` of each `legion.wire.events` model)."""
    import typing

    from legion.wire.events import HostEvent

    union = typing.get_args(HostEvent)[0]
    return sorted(model.model_fields["type"].default for model in typing.get_args(union))


def _number(key: str, value: float) -> str:
    if key.endswith("_usd"):
        text = f"{value:.6f}".rstrip("0").rstrip(".")
        return "$" + (text if text not in ("", "-0") else "0")
    return f"{value:.6g}"


def value_text(key: str, value: Any) -> str:
    """One field's value as the operator reads it: money without float noise, words
    unquoted, text with spaces or quotes in double quotes, anything else as JSON."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return _number(key, value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if value and not any(c in value for c in ' "=\\'):
            return value
        # Quoted, with its characters as they are: the line goes through the one rule for
        # text on a terminal (`safe_text`: controls, bidi and line breaks shown escaped).
        return '"' + value.replace('"', '\\"') + '"'
    return json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))


def readable(event: Any) -> str:
    """`TIME TYPE key=value ...`, leaving out fields that are unset (None or empty)."""
    fields = event.model_dump(exclude={"type", "at"})
    text = " ".join(
        f"{k}={value_text(k, v)}" for k, v in fields.items() if v is not None and v != ""
    )
    return f"{fmt_time(event.at)} {event.type:<20} {text}".rstrip()


def _about(event: Any, agent: str) -> bool:
    if event.type in _FLEET_WIDE:
        return True
    return any(getattr(event, f, None) == agent for f in _AGENT_FIELDS)


def _parse_types(raw: list[str]) -> set[str]:
    known = event_types()
    wanted = {t.strip() for item in raw for t in item.split(",") if t.strip()}
    unknown = sorted(wanted - set(known))
    if unknown:
        fail(f"--type {', '.join(unknown)}: not an event type; use one of {', '.join(known)}", 2)
    return wanted


def events(
    agent: Annotated[
        str | None,
        typer.Option(
            "--agent",
            metavar="NAME",
            help="Only events about this agent (and the host's own: started, stopping, lagged).",
        ),
    ] = None,
    types: Annotated[
        list[str] | None,
        typer.Option(
            "--type",
            metavar="TYPE",
            help="Only these event types (repeat, or comma-separated), e.g. "
            "agent_reply,cost_updated; a wrong one lists them all.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Follow the host's event stream (Ctrl-C to stop).

    Says on stderr when it is connected, then prints each event as it happens: time, type
    and its fields (unset ones left out, money in dollars). `--json` prints each event as
    the host sent it, one per line.
    """
    from legion.api.client import ControlClient

    wanted = _parse_types(types or [])
    paths = State.paths()

    def connected() -> None:
        scope = f" about {agent}" if agent else ""
        kinds = f" of type {', '.join(sorted(wanted))}" if wanted else ""
        typer.echo(
            f"legion: connected to the host of {paths.home}; waiting for events{scope}{kinds} "
            "(Ctrl-C to stop)",
            err=True,
        )

    try:
        with host_errors(), ControlClient(paths) as client:
            if agent is not None:
                names = [a.name for a in client.status().agents]
                if agent not in names:
                    fail(
                        f"no agent named {agent!r} in this host's config (agents: "
                        f"{', '.join(names) or 'none'})",
                        1,
                    )
            for event in client.events(on_open=connected):
                if wanted and event.type not in wanted:
                    continue
                if agent is not None and not _about(event, agent):
                    continue
                if as_json:
                    # ASCII-escaped: no raw control or bidi character reaches the terminal.
                    typer.echo(json_line(event.model_dump(mode="json")))
                else:
                    # One event per line: a newline inside agent text is shown as \x0a.
                    echo(readable(event))
                sys.stdout.flush()
        typer.echo("legion: the host ended the event stream (it is stopping)", err=True)
    except KeyboardInterrupt:
        pass
