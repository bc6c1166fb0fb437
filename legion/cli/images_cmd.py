"""`legion images`: build and list the agent and browser images."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from legion.cli.common import State, emit_json, fail

app = typer.Typer(
    help="Build and list the agent and browser container images.", no_args_is_help=True
)


@app.command("build")
def build(
    base: Annotated[
        str | None,
        typer.Option(
            "--base",
            help="Base image with python3 >= 3.11 (default: [runtime] base_image, else "
            "legion's own Debian base, built with debootstrap when missing).",
        ),
    ] = None,
    mirror: Annotated[
        str | None,
        typer.Option(
            "--mirror",
            help="Debian mirror for debootstrap (default: [runtime] debian_mirror, "
            "else the host's apt sources).",
        ),
    ] = None,
    rebuild_base: Annotated[
        bool, typer.Option("--rebuild-base", help="Rebuild legion's Debian base even if it exists.")
    ] = False,
    only: Annotated[
        str | None,
        typer.Option("--only", help="Build only this image: agent or browser (default: both)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Build the agent image and the browser image (no network inside the builds; progress
    on stderr)."""
    import time

    from legion.config import load_config
    from legion.errors import ConfigError

    paths = State.paths()
    try:
        config = load_config(paths.config)
    except ConfigError as exc:
        fail(exc.render(), 2)
    if only not in (None, "agent", "browser"):
        fail(f"--only {only!r}: use agent or browser", 2)
    started = time.monotonic()

    def progress(line: str) -> None:
        typer.echo(f"[{time.monotonic() - started:6.1f}s] {line}", err=True)

    results = []
    if only in (None, "agent"):
        results.append(_build_agent(config, paths, base, mirror, rebuild_base, progress))
    if only in (None, "browser"):
        results.append(_build_browser(config, paths, mirror, rebuild_base, progress))
    for result in results:
        result["seconds"] = round(time.monotonic() - started, 1)
    if as_json:
        emit_json(results)
        return
    for result in results:
        built = " (base built with debootstrap)" if result["base_built"] else ""
        typer.echo(
            f"built {result['image']} on {result['base']}{built}, python "
            f"{result['python']}, in {result['seconds']}s"
        )


def _build_browser(
    config: Any, paths: Any, mirror: str | None, rebuild_base: bool, progress: Any
) -> dict[str, Any]:
    from legion.fleet.browser_image import build_browser_image
    from legion.fleet.images import ImageBuildError

    try:
        return build_browser_image(
            tag=config.browser.image,
            base=config.browser.base_image or None,
            mirror=mirror or config.runtime.debian_mirror or None,
            uid=config.runtime.agent_uid,
            cache=paths.home / "cache" / "wheels",
            progress=progress,
            rebuild_base=rebuild_base,
        )
    except ImageBuildError as exc:
        fail(str(exc), 1)


def _build_agent(
    config: Any, paths: Any, base: str | None, mirror: str | None, rebuild_base: bool, progress: Any
) -> dict[str, Any]:
    from legion.fleet.images import ImageBuildError, build_agent_image

    try:
        result: dict[str, Any] = build_agent_image(
            tag=config.runtime.image,
            base=base or config.runtime.base_image or None,
            mirror=mirror or config.runtime.debian_mirror or None,
            uid=config.runtime.agent_uid,
            cache=paths.home / "cache" / "wheels",
            progress=progress,
            rebuild_base=rebuild_base,
            mcp_packages=config.images.mcp_packages,
        )
    except ImageBuildError as exc:
        fail(str(exc), 1)
    return result


@app.command("ls")
def ls(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show whether the agent image and legion's base image exist."""
    from legion.config import load_config
    from legion.fleet.browser_image import BROWSER_BASE_TAG
    from legion.fleet.images import BASE_TAG, ImageBuildError, describe_images

    config = load_config(State.paths().config)
    try:
        rows = describe_images(
            [
                config.runtime.image,
                config.runtime.base_image or BASE_TAG,
                config.browser.image,
                config.browser.base_image or BROWSER_BASE_TAG,
            ]
        )
    except ImageBuildError as exc:
        fail(str(exc), 1)
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        if row["present"]:
            typer.echo(f"{row['image']:<30} {row['id']:<20} {row['size_mb']} MB")
        else:
            typer.echo(f"{row['image']:<30} missing (run `legion images build`)")
