"""`legion doctor`: what is missing on this host, and how to fix each problem."""

from __future__ import annotations

from typing import Annotated

import typer

from legion.cli.common import State, echo, emit_json


def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="Only the config, provider keys and models (no Docker checks): what "
            "`make run` shows before the host starts.",
        ),
    ] = False,
) -> None:
    """Check Docker, images, models, credentials and the config; say what to fix.

    Every model an agent can reach (its model, embedding model, allowed models and their
    failover hops) must have a stored provider key (or need none) and a price; running
    containers must run an image built from this code. Exit 0 when every check passes, 1
    when one fails (each failure says how to fix it).
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
    checks = run_checks(paths, config, error, with_docker=not quick)
    if as_json:
        emit_json([c.as_dict() for c in checks])
    else:
        for c in checks:
            echo(f"{'ok  ' if c.ok else 'FAIL'} {c.name:<18} {c.detail}", multiline=True)
            if not c.ok and c.fix:
                echo(f"     {'':<18} fix: {c.fix}")
    raise typer.Exit(0 if all(c.ok for c in checks) else 1)
