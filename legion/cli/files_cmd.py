"""`legion agents show|edit|files|restore`: an agent's host-owned bootstrap files.

SOUL.md and INSTRUCTIONS.md are the operator's; USER.md, MEMORY.md and HEARTBEAT.md the
agent edits (`update_workspace`), the operator may too. Every change is a version kept by
the host outside the agent's volume (legion.fleet.identity). These commands work on the
files directly, whether the host runs or not: a running agent sees a change at its next
turn (the files are mounted read-only into its container).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from legion.cli.common import State, emit_json, fail, fmt_time

if TYPE_CHECKING:
    from legion.fleet.identity import AgentFiles

WHICH_HELP = "soul, instructions, user, memory or heartbeat"
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _files(name: str) -> AgentFiles:
    from legion.config import load_config
    from legion.errors import ConfigError
    from legion.fleet.identity import AgentFiles

    paths = State.paths()
    try:
        agents = load_config(paths.config).agents
    except ConfigError as exc:
        fail(f"{paths.config} is invalid:\n{exc.render()}", 2)
    if name not in agents:
        fail(f"no agent named {name!r} in {paths.config}; add it with `legion agents add`", 1)
    return AgentFiles.of(paths, name)


def _which(which: str) -> str:
    from legion.errors import LegionError
    from legion.fleet.identity import file_name

    try:
        return file_name(which)
    except LegionError as exc:
        fail(exc.message, 2)


def show(name: str, as_json: JsonOpt = False) -> None:
    """Print an agent's bootstrap files (SOUL.md and INSTRUCTIONS.md first)."""
    from legion.fleet.identity import FILES
    from legion.wire.agent import IDENTITY_FILES, WORKSPACE_FILE_CAPS

    files = _files(name)
    texts = {f: files.read(f) for f in FILES}
    if as_json:
        emit_json({"agent": name, "files": texts, "caps": WORKSPACE_FILE_CAPS})
        return
    for file, text in texts.items():
        owner = "operator" if file in IDENTITY_FILES else "agent"
        size = len(text.encode())
        typer.echo(f"== {file} ({owner}; {size} of {WORKSPACE_FILE_CAPS[file]} bytes) ==")
        typer.echo(text.rstrip("\n") if text else "(empty)")
        typer.echo("")


def edit(
    name: str,
    which: Annotated[str, typer.Argument(help=WHICH_HELP)],
    from_file: Annotated[
        Path | None,
        typer.Option("--from-file", help="Take the new text from this file instead of $EDITOR."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Edit an agent's SOUL.md, INSTRUCTIONS.md (or USER/MEMORY/HEARTBEAT.md) in $EDITOR.

    The text is checked (its size cap, UTF-8, no NUL) before it is stored as a new version.
    """
    from legion.errors import LegionError

    file = _which(which)
    files = _files(name)
    current = files.read(file)
    kept: Path | None = None
    if from_file is not None:
        try:
            data = from_file.read_bytes()
        except OSError as exc:
            fail(f"cannot read {from_file}: {exc.strerror}", 2)
    else:
        editor = os.environ.get("VISUAL") or os.environ.get("EDITOR")
        if not editor:
            fail("set $EDITOR (e.g. `export EDITOR=nano`) or pass --from-file PATH", 2)
        folder = Path(tempfile.mkdtemp(prefix="legion-edit-"))
        kept = folder / file
        kept.write_text(current, encoding="utf-8")
        try:
            code = subprocess.run([*shlex.split(editor), str(kept)]).returncode
        except OSError as exc:
            fail(f"cannot run the editor {editor!r}: {exc.strerror}; fix $EDITOR", 2)
        if code != 0:
            fail(f"the editor exited with {code}; nothing was saved (your text: {kept})", 1)
        data = kept.read_bytes()
    try:
        if data == current.encode("utf-8"):
            version = None
        else:
            version = files.write(file, data, "operator", "edited with legion agents edit")
    except LegionError as exc:
        where = f" (your text is kept in {kept})" if kept else ""
        fail(f"{exc.message}; nothing was saved{where}", 1)
    if kept is not None:
        kept.unlink(missing_ok=True)
        kept.parent.rmdir()
    if as_json:
        emit_json({"agent": name, "file": file, "version": version and version.model_dump()})
    elif version is None:
        typer.echo(f"{name}/{file}: no change")
    else:
        typer.echo(
            f"{name}/{file}: saved as version {version.version} ({version.bytes} bytes); "
            "the agent uses it from its next turn"
        )


def versions(
    name: str,
    which: Annotated[str | None, typer.Argument(help=WHICH_HELP + " (default: all)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List the kept versions of an agent's files: who wrote each, when, its size."""
    files = _files(name)
    listed = files.versions(_which(which) if which else None)
    if as_json:
        emit_json({"agent": name, "versions": [v.model_dump() for v in listed]})
        return
    if not listed:
        typer.echo("no versions yet")
        return
    for v in listed:
        note = f"  {v.note}" if v.note else ""
        typer.echo(
            f"{v.file:<16} v{v.version:<4} {fmt_time(v.at)}  by {v.by:<10} {v.bytes:>6} bytes"
            f"  {v.sha256[:12]}{note}"
        )


def restore(
    name: str,
    which: Annotated[str, typer.Argument(help=WHICH_HELP)],
    version: Annotated[int, typer.Argument(help="A version number from `legion agents files`.")],
    as_json: JsonOpt = False,
) -> None:
    """Make an old version of an agent's file current again (kept as a new version)."""
    from legion.errors import LegionError

    file = _which(which)
    try:
        done = _files(name).restore(file, version, "operator")
    except LegionError as exc:
        fail(exc.message, 1)
    if as_json:
        emit_json({"agent": name, "restored": version, "version": done.model_dump()})
    else:
        typer.echo(f"{name}/{file}: version {version} restored as version {done.version}")


def register(app: typer.Typer) -> None:
    app.command("show")(show)
    app.command("edit")(edit)
    app.command("files")(versions)
    app.command("restore")(restore)
