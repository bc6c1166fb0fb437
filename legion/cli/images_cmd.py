"""`legion images`: build and list the agent and browser images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import typer

from legion.cli.common import State, emit_json, fail, subapp

app = subapp("Build and list the agent and browser container images.")


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
        typer.Option(
            "--only",
            metavar="agent|browser",
            help="Build only this image: agent or browser (default: both).",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Build even when the image is current (built from this code)."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Build the agent image and the browser image (no network inside the builds; progress
    on stderr).

    An image that is current (built from this legion's code, for the configured agent uid)
    is kept as it is unless --force, --base, --mirror or --rebuild-base.
    """
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

    uid = config.runtime.agent_uid
    results: list[dict[str, Any]] = []
    if only in (None, "agent"):
        tag = config.runtime.image
        keep = not (force or base or mirror or rebuild_base)
        if keep and _current(tag, uid, "agent", config.images.mcp_packages):
            results.append({"image": tag, "built": False, "current": True})
        else:
            results.append(_build_agent(config, paths, base, mirror, rebuild_base, progress))
    if only in (None, "browser"):
        tag = config.browser.image
        keep = not (force or mirror or rebuild_base)
        if keep and _current(tag, uid, "browser", ()):
            results.append({"image": tag, "built": False, "current": True})
        else:
            results.append(_build_browser(config, paths, mirror, rebuild_base, progress))
    for result in results:
        if result["built"]:
            result["seconds"] = round(time.monotonic() - started, 1)
    if as_json:
        emit_json(results)
        return
    for result in results:
        if not result["built"]:
            typer.echo(f"{result['image']} is current (built from this code); --force rebuilds it")
            continue
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
        result = build_browser_image(
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
    return {**result, "built": True, "current": True}


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
    return {**result, "built": True, "current": True}


def _current(tag: str, uid: int, role: str, packages: Sequence[str]) -> bool:
    """Whether `tag` exists, was built from this code (the agent image with these MCP
    packages) and runs as `uid` (False when the engine cannot be asked: the build then
    says why)."""
    import docker

    from legion.fleet.browser_image import browser_image_is_current
    from legion.fleet.images import image_is_current

    try:
        client = docker.from_env(timeout=30)
    except Exception:
        return False
    try:
        if role == "agent":
            current = image_is_current(client, tag, packages)
        else:
            current = browser_image_is_current(client, tag)
        if not current:
            return False
        user = (client.images.get(tag).attrs.get("Config") or {}).get("User", "")
        return bool(user == f"{uid}:{uid}")
    except Exception:
        return False
    finally:
        client.close()


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
