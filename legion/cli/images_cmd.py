"""`legion images`: build and list the agent image."""

from __future__ import annotations

from typing import Annotated

import typer

from legion.cli.common import State, emit_json, fail, subapp

app = subapp("Build and list the agent container image.")


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
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Build even when the image is current (built from this code)."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Build the agent image (no network inside the build; progress on stderr).

    An image that is current (built from this legion's agent code, for the configured
    agent uid) is kept as it is unless --force, --base, --mirror or --rebuild-base.
    """
    import time

    from legion.config import load_config
    from legion.errors import ConfigError
    from legion.fleet.images import ImageBuildError, build_agent_image

    paths = State.paths()
    try:
        config = load_config(paths.config)
    except ConfigError as exc:
        fail(exc.render(), 2)
    tag = config.runtime.image
    if not (force or base or mirror or rebuild_base) and _current(tag, config.runtime.agent_uid):
        if as_json:
            emit_json({"image": tag, "built": False, "current": True})
        else:
            typer.echo(f"{tag} is current (built from this code); --force rebuilds it")
        return
    started = time.monotonic()

    def progress(line: str) -> None:
        typer.echo(f"[{time.monotonic() - started:6.1f}s] {line}", err=True)

    try:
        result = build_agent_image(
            tag=config.runtime.image,
            base=base or config.runtime.base_image or None,
            mirror=mirror or config.runtime.debian_mirror or None,
            uid=config.runtime.agent_uid,
            cache=paths.home / "cache" / "wheels",
            progress=progress,
            rebuild_base=rebuild_base,
        )
    except ImageBuildError as exc:
        fail(str(exc), 1)
    result["seconds"] = round(time.monotonic() - started, 1)
    result["built"] = True
    if as_json:
        emit_json(result)
    else:
        built = " (base built with debootstrap)" if result["base_built"] else ""
        typer.echo(
            f"built {result['image']} on {result['base']}{built}, python "
            f"{result['python']}, in {result['seconds']}s"
        )


def _current(tag: str, uid: int) -> bool:
    """Whether `tag` exists, was built from this code and runs as `uid` (False when the
    engine cannot be asked: the build then says why)."""
    import docker

    from legion.fleet.images import image_is_current

    try:
        client = docker.from_env(timeout=30)
    except Exception:
        return False
    try:
        if not image_is_current(client, tag):
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
    from legion.fleet.images import BASE_TAG, ImageBuildError, describe_images

    config = load_config(State.paths().config)
    try:
        rows = describe_images([config.runtime.image, config.runtime.base_image or BASE_TAG])
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
