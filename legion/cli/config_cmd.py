"""`legion config`: check, create and reload legion.toml."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from legion.cli.common import State, emit_json, fail

if TYPE_CHECKING:
    from legion.api.client import ApiError

app = typer.Typer(
    help="Check, create or reload the config file (legion.toml).", no_args_is_help=True
)


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
    from legion.config import parse_config
    from legion.errors import ConfigError

    path = file or State.paths().config
    if not path.exists():
        fail(f"{path}: no such file; create one with `legion config init`", 2)
    try:
        config = parse_config(path.read_text(encoding="utf-8"), str(path))
    except UnicodeDecodeError as exc:
        fail(f"{path}: not UTF-8 text ({exc})", 2)
    except OSError as exc:
        fail(f"{path}: cannot read: {exc.strerror}", 2)
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
def init(force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False) -> None:
    """Write the documented example config to LEGION_HOME/legion.toml."""
    path = State.paths().config
    if path.exists() and not force:
        fail(f"{path} exists; pass --force to overwrite it", 1)
    from legion.fsutil import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, example_text())
    typer.echo(f"wrote {path}")


@app.command("path")
def path_cmd() -> None:
    """Print where the config file is."""
    typer.echo(str(State.paths().config))


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
