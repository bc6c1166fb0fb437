"""`legion config`: check, create and reload legion.toml."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from legion.cli.common import State, emit_json, fail, subapp

if TYPE_CHECKING:
    from legion.api.client import ApiError

app = subapp("Check, create or reload the config file (legion.toml).")


def example_text() -> str:
    return resources.files("legion").joinpath("data/config.example.toml").read_text()


@app.command("check")
def check(
    file: Annotated[
        Path | None, typer.Argument(help="File to check; default: legion.toml in LEGION_HOME.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Validate a config file; print every problem with its line or key and the fix."""
    from legion.config import parse_config, read_config_text
    from legion.errors import ConfigError

    path = file or State.paths().config
    try:
        text = read_config_text(path)
        if text is None:
            fail(f"{path}: no such file; create one with `legion config init`", 2)
        config = parse_config(text, str(path))
    except ConfigError as exc:
        if as_json:
            emit_json({"ok": False, "file": str(path), "problems": exc.problems})
        else:
            typer.echo(exc.render(), err=True)
            typer.echo(f"{len(exc.problems)} problem(s) in {path}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        emit_json(
            {
                "ok": True,
                "file": str(path),
                "agents": sorted(config.agents),
                "teams": sorted(config.teams),
            }
        )
    else:
        typer.echo(f"{path}: ok ({len(config.agents)} agents, {len(config.teams)} teams)")


@app.command("init")
def init(
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Write the documented example config to LEGION_HOME/legion.toml.

    The example documents every key and defines two example agents with `autostart =
    false`: a fresh host starts no agent that cannot run yet (no provider key stored).
    """
    path = State.paths().config
    if path.exists() and not force:
        if as_json:
            emit_json({"file": str(path), "written": False, "reason": "exists"})
        fail(f"{path} exists; pass --force to overwrite it", 1)
    from legion.fsutil import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, example_text())
    if as_json:
        emit_json({"file": str(path), "written": True})
        return
    typer.echo(f"wrote {path}")


@app.command("path")
def path_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Print where the config file is (whether or not it exists yet)."""
    path = State.paths().config
    if as_json:
        emit_json({"file": str(path), "exists": path.exists(), "home": str(path.parent)})
        return
    typer.echo(str(path))


@app.command("reload")
def reload(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Make the running host re-read legion.toml (what SIGHUP does); print what changed.

    A file that fails validation changes nothing: every problem is printed, exit 2.
    """
    from legion.api.client import ApiError
    from legion.cli.common import host_errors
    from legion.logs import visible

    with host_errors():
        try:
            with State.client() as client:
                result = client.reload()
        except ApiError as exc:
            if exc.code != "config_invalid":
                raise
            _refused(exc, as_json)
    if as_json:
        emit_json({"ok": True, **result.model_dump()})
        return
    done = [
        ("added", result.added),
        ("removed", result.removed),
        ("changed", result.changed),
    ]
    if not any(values for _, values in done) and not result.restart_needed:
        typer.echo(visible(f"reloaded {result.file}: no changes"))
        return
    typer.echo(visible(f"reloaded {result.file}"))
    for label, values in done:
        if values:
            typer.echo(visible(f"  {label + ':':<9} {', '.join(values)}"))
    if result.restart_needed:
        typer.echo(
            visible(
                f"  needs a host restart: {', '.join(result.restart_needed)} "
                "(`systemctl restart legion`, or stop and start `legion daemon`)"
            )
        )
    if result.agents_to_restart:  # agent names: validated, nothing to neutralise
        typer.echo(
            f"  needs an agent restart: {', '.join(result.agents_to_restart)} "
            "(`legion agents restart NAME`)"
        )


def _refused(exc: ApiError, as_json: bool) -> NoReturn:
    from legion.logs import visible

    detail = exc.body.error.detail
    problems = [str(p) for p in detail.get("problems", [])]
    if as_json:
        emit_json(
            {
                "ok": False,
                "file": detail.get("file"),
                "problems": problems,
                "error": {"code": exc.code, "message": str(exc)},
            }
        )
    else:
        for problem in problems:
            typer.echo(visible(problem), err=True)
        typer.echo(
            visible(
                f"{len(problems)} problem(s) in {detail.get('file')}; nothing was changed "
                "(the host keeps its current config)"
            ),
            err=True,
        )
    raise typer.Exit(2)
