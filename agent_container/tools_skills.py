"""Skills: what the agent knows how to do, in the Agent Skills format, loaded on demand.

Three places, in this order of precedence when names clash:

* `agent` and `fleet`: the operator's, mounted read-only from the host
  (`LEGION_SKILLS`, default /etc/legion/skills: `agent/` for this agent, `fleet/` for
  every agent);
* `own`: the agent's, written with `skill_create` into `skills/` in its workspace and
  usable at once (the operator reviews them: `legion skills ls`, and may promote one to
  the fleet).

Only each skill's name and description go into the system prompt (capped); the model
reads the body with `skill_read(name)` when it decides to use one. A skill's scripts run
only through `run_command`, like any other command. Everything here reads without
following links and within the format's caps (`legion.wire.skills`); a skill that breaks
a rule is left out (and `skill_read` says why).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_container.registry import Tool, anything, obj, text
from agent_container.workspace import Workspace, WorkspaceError

DEFAULT_SKILLS = "/etc/legion/skills"
OWN_DIR = "skills"
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
SOURCES = ("agent", "fleet", "own")
MAX_SKILLS = 200  # scanned per source


@dataclass(frozen=True)
class Found:
    name: str
    description: str
    source: str
    folder: Path
    files: tuple[str, ...]


def _read(path: Path, cap: int) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > cap:
            return None
        return os.read(fd, cap + 1)[: cap + 1]
    finally:
        os.close(fd)


def _files(folder: Path, limit: int = 64) -> tuple[str, ...]:
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(folder)
        for name in sorted(filenames):
            if not name.startswith("."):
                out.append(str(rel / name) if str(rel) != "." else name)
            if len(out) >= limit:
                return tuple(out)
    return tuple(out)


class Skills:
    """The skills this agent can see (see the module docstring)."""

    def __init__(self, root: str | Path, workspace: Workspace) -> None:
        self.root = Path(root)
        self.workspace = workspace

    def folders(self) -> dict[str, Path]:
        return {
            "agent": self.root / "agent",
            "fleet": self.root / "fleet",
            "own": self.workspace.real_root / OWN_DIR,
        }

    def signature(self) -> tuple[Any, ...]:
        """Changes whenever a skill is added, removed or its SKILL.md changes."""
        out: list[Any] = []
        for source, folder in self.folders().items():
            try:
                names = sorted(os.listdir(folder))[:MAX_SKILLS]
            except OSError:
                out.append((source, None))
                continue
            for name in names:
                try:
                    info = os.stat(folder / name / "SKILL.md", follow_symlinks=False)
                    out.append((source, name, info.st_ino, info.st_size, info.st_mtime_ns))
                except OSError:
                    out.append((source, name, None))
        return tuple(out)

    def scan(self) -> tuple[list[Found], list[str]]:
        """(usable skills, first of each name by precedence; problems of the others)."""
        from legion.wire import skills as rules

        found: dict[str, Found] = {}
        problems: list[str] = []
        for source, folder in self.folders().items():
            try:
                names = sorted(os.listdir(folder))[:MAX_SKILLS]
            except OSError:
                continue
            for name in names:
                if name.startswith(".") or name in found:
                    continue
                path = folder / name
                try:
                    if not stat.S_ISDIR(os.lstat(path).st_mode):
                        continue
                except OSError:
                    continue
                raw = _read(path / rules.SKILL_FILE, rules.SKILL_MD_MAX)
                if raw is None:
                    problems.append(f"{source}/{name}: no readable SKILL.md within the caps")
                    continue
                try:
                    data, _ = rules.parse_front_matter(raw.decode("utf-8"))
                    meta = rules.check_meta(data, name)
                except (rules.SkillProblem, UnicodeDecodeError) as exc:
                    problems.append(f"{source}/{name}: {exc}")
                    continue
                found[name] = Found(name, meta.description, source, path, _files(path))
        return list(found.values()), problems

    def prompt(self) -> str:
        """The system prompt's list of skills (names and descriptions), capped."""
        from legion.wire.skills import PROMPT_LIST_MAX, prompt_description

        skills, _ = self.scan()
        if not skills:
            return ""
        head = (
            "# Skills\n\nSkills you can use. Before using one, load its instructions with "
            "skill_read(name); run its scripts with run_command. Skills marked (yours) you "
            "wrote yourself; skill_create adds one.\n"
        )
        lines: list[str] = []
        size = len(head)
        for skill in sorted(skills, key=lambda s: (SOURCES.index(s.source), s.name)):
            mark = " (yours)" if skill.source == "own" else ""
            line = f"- {skill.name}{mark}: {prompt_description(skill.description)}"
            if size + len(line) + 1 > PROMPT_LIST_MAX - 80:
                lines.append(f"- ... and {len(skills) - len(lines)} more (skill_read lists all)")
                break
            lines.append(line)
            size += len(line) + 1
        return head + "\n".join(lines)

    # --- the tools ---------------------------------------------------------------------

    def read(self, name: str) -> str:
        from legion.wire import skills as rules

        skills, problems = self.scan()
        skill = next((s for s in skills if s.name == name), None)
        if skill is None:
            known = ", ".join(sorted(s.name for s in skills)) or "none"
            broken = [p for p in problems if p.split("/", 1)[-1].startswith(f"{name}:")]
            why = f" ({broken[0]})" if broken else ""
            raise WorkspaceError(f"no usable skill named {name!r}{why}; skills: {known}")
        raw = _read(skill.folder / rules.SKILL_FILE, rules.SKILL_MD_MAX) or b""
        body = raw.decode("utf-8", errors="replace")
        by = {"agent": "your operator (for you)", "fleet": "your operator (for the fleet)"}
        origin = by.get(skill.source, "you (an earlier session); not reviewed yet")
        files = [f for f in skill.files if f != rules.SKILL_FILE]
        listing = ", ".join(files) if files else "none"
        return (
            f"Skill {skill.name}, written by {origin}, in the folder {skill.folder}.\n"
            f"Other files: {listing}. Run scripts with run_command, e.g. "
            f"`python3 {skill.folder}/scripts/NAME.py`; read files with their full path.\n\n" + body
        )

    def create(self, name: str, description: str, body: str, files: dict[str, str] | None) -> str:
        from legion.wire import skills as rules

        problem = rules.name_problem(name)
        if problem is not None:
            raise WorkspaceError(problem)
        skills, _ = self.scan()
        clash = next((s for s in skills if s.name == name and s.source != "own"), None)
        if clash is not None:
            raise WorkspaceError(
                f"a skill named {name!r} is installed by your operator; pick another name"
            )
        if len(body.encode()) > rules.AGENT_BODY_MAX:
            raise WorkspaceError(f"the body is over {rules.AGENT_BODY_MAX} bytes; shorten it")
        meta = rules.SkillMeta(name=name, description=description.strip())
        content: dict[str, bytes] = {rules.SKILL_FILE: rules.render_skill_md(meta, body).encode()}
        for path, value in (files or {}).items():
            if not isinstance(value, str):
                raise WorkspaceError(f"files[{path!r}] must be text")
            if path == rules.SKILL_FILE:
                raise WorkspaceError("SKILL.md is written from name, description and body")
            content[path] = value.encode("utf-8")
        try:
            skill = rules.check_skill(
                content,
                name,
                skill_md_max=rules.AGENT_BODY_MAX + 2048,
                file_max=rules.AGENT_FILE_MAX,
                total_max=rules.AGENT_TOTAL_MAX,
                files_max=rules.AGENT_FILES_MAX,
            )
        except rules.SkillProblem as exc:
            raise WorkspaceError(f"the skill was not written: {exc}") from None
        self._write(skill.meta.name, skill.files)
        replaced = any(s.name == name for s in skills)
        return (
            f"{'replaced' if replaced else 'created'} skill {name} "
            f"({len(skill.files)} files, {skill.size} bytes) in {OWN_DIR}/{name}: skill_read "
            "loads it now, your prompt lists it from your next turn, and your operator can "
            "review it and make it available to other agents"
        )

    def _write(self, name: str, files: dict[str, bytes]) -> None:
        """Into `skills/NAME` of the workspace, atomically: a temporary folder, then renames."""
        root = self.workspace.resolve(OWN_DIR)
        root.mkdir(exist_ok=True)
        if os.path.islink(root) or not root.is_dir():
            raise WorkspaceError(f"{OWN_DIR} in the workspace is not a folder")
        tmp = root / f".tmp-{name}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            for rel, data in files.items():
                path = tmp / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o644)
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
            target = root / name
            old = None
            if os.path.lexists(target):
                old = root / f".old-{name}-{secrets.token_hex(4)}"
                os.rename(target, old)
            os.rename(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if old is not None:
            if os.path.islink(old) or not old.is_dir():
                with contextlib.suppress(OSError):
                    os.unlink(old)
            else:
                shutil.rmtree(old, ignore_errors=True)

    def tools(self) -> list[Tool]:
        async def skill_read(args: dict[str, Any]) -> str:
            return self.read(str(args["name"]))

        async def skill_create(args: dict[str, Any]) -> str:
            files = args.get("files")
            if files is not None and not isinstance(files, dict):
                raise WorkspaceError("files is an object: relative path -> text")
            return self.create(
                str(args["name"]), str(args["description"]), str(args["body"]), files
            )

        return [
            Tool(
                "skill_read",
                "Load a skill's instructions (its SKILL.md) and the list of its files. Do this "
                "before using a skill listed in your system prompt.",
                obj(["name"], name=text("The skill's name.")),
                skill_read,
            ),
            Tool(
                "skill_create",
                "Write a reusable skill for yourself (Agent Skills format): a name "
                "(lowercase letters, digits, single '-'), a description of what it does and "
                "when to use it, Markdown instructions, and optional files (scripts, "
                "templates). Replaces your own skill of that name.",
                obj(
                    ["name", "description", "body"],
                    name=text("Lowercase letters, digits and single '-', at most 64."),
                    description=text("What it does and when to use it (at most 1024 chars)."),
                    body=text("The instructions, in Markdown."),
                    files=anything("Optional: an object of relative path -> file text."),
                ),
                skill_create,
            ),
        ]
