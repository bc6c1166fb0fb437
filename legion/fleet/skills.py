"""Skills on the host: the operator's store, and reading what agents wrote.

* `LEGION_HOME/skills/fleet/NAME/` holds the skills installed for every agent,
  `LEGION_HOME/skills/agents/AGENT/NAME/` those installed for one agent. The Docker backend
  mounts both read-only into the agent's container (`/etc/legion/skills/fleet`,
  `/etc/legion/skills/agent`), so a skill added or removed shows at once, without a
  restart, and the agent can change none of it. Folders are 0755 and files 0644 (the
  agent's uid reads them); a skill is written to a temporary folder beside its place and
  renamed into it, so a reader never sees half a skill.
* Agents write their own skills into their workspace (`skill_create`:
  `agents/AGENT/workspace/skills/NAME/`). The host reads those as the operator's reviewer
  (`legion skills ls`, `show`, `promote`), often as root, in a folder the agent controls:
  every step is a no-follow open from `LEGION_HOME` (`legion.fsutil`), only regular files
  and real folders are read, within the caps; a link, FIFO or device is refused
  (`UnsafeEntry`), never followed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import secrets
import stat
from contextlib import ExitStack
from pathlib import Path

from legion.errors import Conflict, LegionError, NotFound
from legion.fsutil import (
    UnsafeEntry,
    kind,
    open_dir_nofollow,
    open_path_nofollow,
    read_regular_file_nofollow,
    remove_tree_nofollow,
)
from legion.paths import Paths
from legion.wire import skills as rules
from legion.wire.skills import Skill, SkillInfo, SkillProblem

FLEET = "fleet"
MOUNT_ROOT = "/etc/legion/skills"


class BadSkill(LegionError):
    status = 422
    code = "invalid_skill"


def store_dir(paths: Paths, agent: str | None = None) -> Path:
    """Where the operator's skills live: the fleet's, or one agent's."""
    root = paths.home / "skills"
    return root / FLEET if agent is None else root / "agents" / agent


def ensure_store(paths: Paths, agent: str | None = None) -> Path:
    """Create the store folder (0755 up from LEGION_HOME/skills); refuse a link there."""
    folder = store_dir(paths, agent)
    for part in [paths.home / "skills", *([] if agent is None else [folder.parent]), folder]:
        with contextlib.suppress(FileExistsError):
            part.mkdir(mode=0o755)
        info = part.lstat()
        if not stat.S_ISDIR(info.st_mode):
            raise UnsafeEntry(str(part), kind(info.st_mode), "a directory")
        if stat.S_IMODE(info.st_mode) != 0o755 and info.st_uid == os.geteuid():
            os.chmod(part, 0o755)
    return folder


# --- reading a folder without following anything -----------------------------------------


def read_tree(
    dir_fd: int,
    *,
    shown: str,
    max_files: int = rules.FILES_MAX,
    max_bytes: int = rules.TOTAL_MAX,
    file_max: int = rules.FILE_MAX,
) -> dict[str, bytes]:
    """Every regular file under `dir_fd` (relative path -> bytes), breadth first, within
    the caps and rules.DEPTH_MAX; a link or any other kind of entry is refused."""
    out: dict[str, bytes] = {}
    total = 0
    todo: list[tuple[int, str]] = [(os.dup(dir_fd), "")]
    try:
        while todo:
            fd, prefix = todo.pop(0)
            try:
                with os.scandir(fd) as entries:
                    names = sorted(e.name for e in entries)
                for name in names:
                    rel = f"{prefix}{name}"
                    where = f"{shown}/{rel}"
                    mode = os.lstat(name, dir_fd=fd).st_mode
                    if stat.S_ISDIR(mode):
                        if rel.count("/") + 1 >= rules.DEPTH_MAX:
                            raise SkillProblem(f"{rel}: folders nest at most {rules.DEPTH_MAX}")
                        todo.append((open_dir_nofollow(fd, name, shown=where), rel + "/"))
                        continue
                    if not stat.S_ISREG(mode):
                        raise UnsafeEntry(where, kind(mode), "a regular file or a folder")
                    if len(out) >= max_files:
                        raise SkillProblem(f"the skill has more than {max_files} files")
                    limit = min(file_max, max_bytes - total)
                    try:
                        data = read_regular_file_nofollow(fd, name, max(limit, 0), shown=where)
                    except UnsafeEntry as exc:
                        if exc.found.endswith("bytes") or exc.found.startswith("growing"):
                            raise SkillProblem(f"{rel} is over the size caps") from None
                        raise
                    out[rel] = data
                    total += len(data)
            finally:
                os.close(fd)
    except BaseException:
        for fd, _ in todo:
            os.close(fd)
        raise
    return out


def _open_skill_dir(paths: Paths, relative: str) -> int:
    home_fd = os.open(paths.home, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return open_path_nofollow(home_fd, relative, shown_root=str(paths.home))
    finally:
        os.close(home_fd)


def _relative(paths: Paths, folder: Path) -> str:
    return str(folder.relative_to(paths.home))


def own_root(paths: Paths, agent: str) -> str:
    """The agent-written skills folder, relative to LEGION_HOME."""
    return f"agents/{agent}/workspace/skills"


# --- what is there --------------------------------------------------------------------------


def _info(skill: Skill, source: str, agent: str | None) -> SkillInfo:
    return SkillInfo(
        name=skill.meta.name,
        description=skill.meta.description,
        source=source,
        agent=agent,
        files=len(skill.files),
        bytes=skill.size,
    )


def _scan(paths: Paths, relative: str, source: str, agent: str | None) -> list[SkillInfo]:
    try:
        root_fd = _open_skill_dir(paths, relative)
    except FileNotFoundError:
        return []
    out: list[SkillInfo] = []
    with ExitStack() as stack:
        stack.callback(os.close, root_fd)
        with os.scandir(root_fd) as entries:
            names = sorted(e.name for e in entries if not e.name.startswith("."))
        for name in names[:500]:
            shown = f"{paths.home}/{relative}/{name}"
            try:
                fd = open_dir_nofollow(root_fd, name, shown=shown)
            except (UnsafeEntry, FileNotFoundError) as exc:
                out.append(
                    SkillInfo(
                        name=name[:80],
                        description="",
                        source=source,
                        agent=agent,
                        problem=str(exc)[:300],
                    )
                )
                continue
            try:
                skill = rules.check_skill(read_tree(fd, shown=shown), name)
                out.append(_info(skill, source, agent))
            except (SkillProblem, UnsafeEntry) as exc:
                out.append(
                    SkillInfo(
                        name=name[:80],
                        description="",
                        source=source,
                        agent=agent,
                        problem=str(exc)[:300],
                    )
                )
            finally:
                os.close(fd)
    return out


def list_skills(paths: Paths, agents: list[str], *, fleet: bool = True) -> list[SkillInfo]:
    """The fleet's skills, and for each agent its installed and its own skills."""
    out = _scan(paths, f"skills/{FLEET}", FLEET, None) if fleet else []
    for agent in agents:
        out += _scan(paths, f"skills/agents/{agent}", "agent", agent)
        out += _scan(paths, own_root(paths, agent), "own", agent)
    return out


def read_skill(paths: Paths, name: str, source: str, agent: str | None) -> Skill:
    """One skill folder, read and checked (operator caps for installed ones, the agent's
    for its own)."""
    problem = rules.name_problem(name)
    if problem is not None:
        raise BadSkill(problem)
    if source == "own":
        assert agent is not None
        relative = f"{own_root(paths, agent)}/{name}"
        caps = {
            "max_files": rules.AGENT_FILES_MAX + 1,
            "max_bytes": rules.AGENT_TOTAL_MAX + 64 * 1024,
        }
    else:
        relative = _relative(paths, store_dir(paths, None if source == FLEET else agent) / name)
        caps = {}
    try:
        fd = _open_skill_dir(paths, relative)
    except FileNotFoundError:
        where = (
            f"{agent}'s own skills"
            if source == "own"
            else ("the fleet's skills" if source == FLEET else f"the skills installed for {agent}")
        )
        raise NotFound(f"no skill {name!r} in {where}", code="unknown_skill") from None
    try:
        return rules.check_skill(read_tree(fd, shown=f"{paths.home}/{relative}", **caps), name)
    except SkillProblem as exc:
        raise BadSkill(f"{relative}: {exc}") from None
    finally:
        os.close(fd)


# --- installing and removing -------------------------------------------------------------


def decode_upload(files: dict[str, str]) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for path, text in files.items():
        try:
            out[path] = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise BadSkill(f"{path[:120]!r}: its content is not base64") from None
    return out


def install(paths: Paths, skill: Skill, agent: str | None, *, replace: bool) -> Path:
    """Write `skill` into the store (fleet or one agent's), atomically: a temporary folder
    beside it, then renames. An existing skill of that name needs `replace`."""
    store = ensure_store(paths, agent)
    target = store / skill.meta.name
    exists = os.path.lexists(target)
    if exists and not replace:
        where = f"for {agent}" if agent else "for the fleet"
        raise Conflict(
            f"a skill {skill.meta.name!r} is installed {where} already; pass --replace to "
            "replace it",
            code="skill_exists",
        )
    tmp = store / f".tmp-{skill.meta.name}-{secrets.token_hex(4)}"
    tmp.mkdir(mode=0o755)
    try:
        for rel, data in sorted(skill.files.items()):
            path = tmp / rel
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(path, 0o644)
        old = None
        if exists:
            old = store / f".old-{skill.meta.name}-{secrets.token_hex(4)}"
            os.rename(target, old)
        os.rename(tmp, target)
    except BaseException:
        _remove(store, tmp.name)
        raise
    if old is not None:
        _remove(store, old.name)
    dir_fd = os.open(store, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target


def _remove(store: Path, name: str) -> None:
    fd = os.open(store, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        remove_tree_nofollow(fd, name, shown=str(store / name))
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)


def uninstall(paths: Paths, name: str, agent: str | None) -> None:
    problem = rules.name_problem(name)
    if problem is not None:
        raise BadSkill(problem)
    store = store_dir(paths, agent)
    if not os.path.lexists(store / name):
        where = f"for {agent}" if agent else "for the fleet"
        raise NotFound(f"no skill {name!r} is installed {where}", code="unknown_skill")
    _remove(store, name)


def remove_agent_store(paths: Paths, agent: str) -> None:
    """Drop the skills installed for an agent that is gone (a reaped sub-agent)."""
    store = store_dir(paths, agent)
    if os.path.lexists(store):
        _remove(store.parent, agent)
