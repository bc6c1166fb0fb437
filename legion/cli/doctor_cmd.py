"""`legion doctor`: what is missing on this host, and how to fix each problem."""

from __future__ import annotations

from typing import Annotated

import typer

from legion.cli.common import State, echo, emit_json


def doctor(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Check Docker, images, models, credentials and the config; say what to fix.

    Exit 0 when every check passes, 1 when one fails (each failure says how to fix it).
    """
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
            echo(f"{'ok  ' if c.ok else 'FAIL'} {c.name:<18} {c.detail}", multiline=True)
            if not c.ok and c.fix:
                echo(f"     {'':<18} fix: {c.fix}")
    raise typer.Exit(0 if all(c.ok for c in checks) else 1)
