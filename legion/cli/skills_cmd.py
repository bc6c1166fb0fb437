"""`legion skills`: install, list, review, promote and remove Agent Skills."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import Annotated

import typer

from legion.cli.common import (
    State,
    cell,
    echo,
    emit_json,
    fail,
    host_errors,
    print_table,
    subapp,
    table,
)

app = subapp("Agent Skills: folders with a SKILL.md, for one agent or the whole fleet.")
AgentOpt = Annotated[str | None, typer.Option("--agent", help="One agent (default: the fleet).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _check_agent(agent: str | None) -> None:
    if agent is not None:
        from legion.cli.agents_cmd import require_valid_name

        require_valid_name(agent)


def read_folder(folder: Path) -> dict[str, str]:
    """The skill folder's files, base64-encoded, within the format's caps; links and
    anything but regular files and folders are refused (a skill is copied, not linked)."""
    from legion.wire import skills as rules

    if not folder.is_dir() or folder.is_symlink():
        fail(f"{folder} is not a folder; a skill is a folder with a SKILL.md", 2)
    files: dict[str, str] = {}
    total = 0
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        here = Path(dirpath)
        for name in sorted([*dirnames, *filenames]):
            path = here / name
            rel = str(path.relative_to(folder))
            info = path.lstat()
            if name.startswith(".") or name == "__pycache__":
                if stat.S_ISDIR(info.st_mode):
                    dirnames.remove(name)
                continue
            if stat.S_ISDIR(info.st_mode):
                continue
            if not stat.S_ISREG(info.st_mode):
                fail(f"{path} is not a regular file (a link?); copy what it points to instead", 2)
            problem = rules.path_problem(rel)
            if problem is not None:
                fail(f"{folder}: {problem}", 2)
            if info.st_size > rules.FILE_MAX or len(files) >= rules.FILES_MAX:
                fail(
                    f"{folder}: a skill holds at most {rules.FILES_MAX} files of "
                    f"{rules.FILE_MAX // 1024} KiB each ({rel} is {info.st_size} bytes)",
                    2,
                )
            total += info.st_size
            if total > rules.TOTAL_MAX:
                fail(f"{folder}: a skill is at most {rules.TOTAL_MAX // 1024} KiB in all", 2)
            files[rel] = base64.b64encode(path.read_bytes()).decode()
    return files


@app.command("add")
def add(
    path: Annotated[Path, typer.Argument(help="The skill's folder (holding SKILL.md).")],
    agent: AgentOpt = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace an installed skill of that name.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Install a skill folder for the fleet or one agent (agents see it at once)."""
    _check_agent(agent)
    from legion.wire import skills as rules

    folder = path.expanduser()
    files = read_folder(folder)
    try:
        rules.check_skill({k: base64.b64decode(v) for k, v in files.items()}, folder.name)
    except rules.SkillProblem as exc:
        fail(f"{folder}: {exc}", 2)

    with host_errors(), State.client() as client:
        info = client.skill_add(folder.name, files, agent, replace)
    if as_json:
        emit_json(info.model_dump())
        return
    echo(
        f"installed {info.name} for {agent or 'the fleet'} ({info.files} files, {info.bytes} bytes)"
    )


@app.command("ls")
def ls(agent: AgentOpt = None, as_json: JsonOpt = False) -> None:
    """List the fleet's skills and each agent's (installed, and its own)."""
    _check_agent(agent)

    with host_errors(), State.client() as client:
        listing = client.skills(agent)
    if as_json:
        emit_json(listing.model_dump())
        return
    if not listing.skills:
        typer.echo("no skills")
        return
    rows = table("skill", "source", "agent", "files", "description")
    for skill in listing.skills:
        text = skill.description if not skill.problem else f"(refused) {skill.problem}"
        rows.add_row(
            cell(skill.name),
            cell(skill.source),
            cell(skill.agent or "-"),
            str(skill.files),
            cell(text),
            style="red" if skill.problem else "",
        )
    print_table(rows)  # every value whole when piped


@app.command("show")
def show(
    name: str,
    agent: AgentOpt = None,
    source: Annotated[
        str | None,
        typer.Option("--source", help="fleet, agent (installed for it) or own (it wrote it)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Print a skill's SKILL.md and file list, to review it."""
    _check_agent(agent)

    with host_errors(), State.client() as client:
        text = client.skill_show(name, agent, source)
    if as_json:
        emit_json(text.model_dump())
        return
    echo(
        f"# {text.name} ({text.source}{f', {text.agent}' if text.agent else ''}): "
        f"{', '.join(text.files)}"
    )
    echo(text.skill_md, multiline=True)


@app.command("promote")
def promote(
    name: str,
    agent: Annotated[str, typer.Option("--agent", help="The agent that wrote the skill.")],
    to: Annotated[
        str | None, typer.Option("--to", help="Install it for this agent (default: the fleet).")
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace an installed skill of that name.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Make a skill an agent wrote available to the fleet (or --to one agent)."""
    _check_agent(agent)
    _check_agent(to)

    with host_errors(), State.client() as client:
        info = client.skill_promote(name, agent, to, replace)
    if as_json:
        emit_json(info.model_dump())
        return
    echo(f"promoted {agent}'s {info.name} to {to or 'the fleet'} ({info.files} files)")


@app.command("rm")
def rm(name: str, agent: AgentOpt = None, as_json: JsonOpt = False) -> None:
    """Remove an installed skill (the fleet's, or one agent's)."""
    _check_agent(agent)

    with host_errors(), State.client() as client:
        listing = client.skill_remove(name, agent)
    if as_json:
        emit_json({"removed": name, "agent": agent, "skills": listing.model_dump()["skills"]})
        return
    echo(f"removed {name} from {agent or 'the fleet'}")
