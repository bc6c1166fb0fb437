"""An agent's volume (`LEGION_HOME/agents/NAME`, its `/data`), prepared and removed by
the host without ever following what the agent may have planted in it (invariant 9).

The agent (its own uid, inside the container) owns `agents/NAME` and can replace anything
inside it: `workspace` by a link to a host folder, a FIFO, a file. It cannot replace
`agents/NAME` itself (the container's mount point, under a read-only root), nor anything
above it (`LEGION_HOME` and `agents/` are the host's). Every operation here walks from
`LEGION_HOME` with the no-follow primitives of `legion.fsutil`, so a planted entry is
refused (`UnsafeEntry`), never followed. See docs/decisions.md, "Host file operations on
agent-writable paths".
"""

from __future__ import annotations

import os
import re
import stat
from contextlib import ExitStack

from legion.config import NAME_RE
from legion.errors import LegionError
from legion.fsutil import (
    UnsafeEntry,
    check_owner,
    ensure_dir_nofollow,
    kind,
    open_dir_nofollow,
    remove_tree_nofollow,
)
from legion.paths import Paths

AGENTS_DIR = "agents"
WORKSPACE = "workspace"


def _check_name(agent: str) -> None:
    # The name becomes a path component under agents/: never `..`, `.`, `a/b` or empty.
    if not re.fullmatch(NAME_RE, agent):
        raise LegionError(
            f"{agent!r} is not an agent name (lowercase letter first, then letters, digits "
            "and '-', at most 32)",
            code="invalid_agent_name",
            status=400,
        )


def _open_home(paths: Paths) -> int:
    # LEGION_HOME is the operator's own choice (resolved by Paths), not agent-writable.
    return os.open(paths.home, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def prepare(paths: Paths, agent: str, owner: tuple[int, int] | None) -> None:
    """Create (first start) or check (every restart) `agents/NAME` and its `workspace`,
    handing both to `owner` (the agent's uid:gid, when the host runs as root).

    Raises `UnsafeEntry` (nothing changed through it) when `agents/` is not a real
    directory of the host's, or `agents/NAME` or `workspace` is not a real directory owned
    by the host or the agent: a link (dangling or not), a FIFO, a socket, a file, or a
    folder of another user. OSError for anything else (a full disk).
    """
    _check_name(agent)
    host_uid = os.geteuid()
    agent_uid = owner[0] if owner is not None else host_uid
    allowed = {host_uid, agent_uid}
    agents_path = paths.home / AGENTS_DIR
    data_path = paths.agent_data(agent)
    workspace_path = data_path / WORKSPACE
    fix = "Look at it, move it away (`mv {path} {path}.suspect`), then `legion agents start %s`"
    fix %= agent
    try:
        with ExitStack() as fds:
            home_fd = _open_home(paths)
            fds.callback(os.close, home_fd)
            agents_fd = ensure_dir_nofollow(home_fd, AGENTS_DIR, 0o755, shown=str(agents_path))
            fds.callback(os.close, agents_fd)
            check_owner(agents_fd, {host_uid}, shown=str(agents_path))
            data_fd = ensure_dir_nofollow(agents_fd, agent, 0o700, shown=str(data_path))
            fds.callback(os.close, data_fd)
            check_owner(data_fd, allowed, shown=str(data_path))
            if owner is not None:
                os.fchown(data_fd, *owner)
            os.fchmod(data_fd, 0o700)  # the agent may have opened it to everyone
            workspace_fd = ensure_dir_nofollow(data_fd, WORKSPACE, 0o755, shown=str(workspace_path))
            fds.callback(os.close, workspace_fd)
            check_owner(workspace_fd, allowed, shown=str(workspace_path))
            if owner is not None:
                os.fchown(workspace_fd, *owner)
    except UnsafeEntry as exc:
        raise UnsafeEntry(
            exc.path, exc.found, exc.expected, fix=fix.format(path=exc.path)
        ) from None


def _remove_under(paths: Paths, parents: tuple[str, ...], agent: str) -> bool:
    """Delete LEGION_HOME/<parents...>/<agent> without following anything: every parent
    is opened no-follow from LEGION_HOME, the entry itself must be a real directory (else
    `UnsafeEntry`, nothing touched), and its tree is removed with links unlinked, any depth.
    True when deleted, False when there was none."""
    _check_name(agent)
    shown = paths.home.joinpath(*parents, agent)
    with ExitStack() as fds:
        dir_fd = _open_home(paths)
        fds.callback(os.close, dir_fd)
        for depth, part in enumerate(parents):
            try:
                dir_fd = open_dir_nofollow(
                    dir_fd, part, shown=str(paths.home.joinpath(*parents[: depth + 1]))
                )
            except FileNotFoundError:
                return False
            fds.callback(os.close, dir_fd)
        try:
            found = os.lstat(agent, dir_fd=dir_fd)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(found.st_mode):
            raise UnsafeEntry(
                str(shown),
                kind(found.st_mode),
                "a directory",
                fix="legion deletes only a real directory there; check it and remove it yourself",
            )
        remove_tree_nofollow(dir_fd, agent, shown=str(shown))
    return True


def remove(paths: Paths, agent: str) -> bool:
    """Delete the agent's volume (`legion agents rm --purge`): True when deleted, False
    when there was none. Nothing in it is followed (`remove_tree_nofollow` from a
    descriptor of `agents/`: links are unlinked, any depth); a volume path that is not a
    real directory is refused (`UnsafeEntry`), its target untouched.
    """
    return _remove_under(paths, (AGENTS_DIR,), agent)


def remove_state(paths: Paths, agent: str) -> list[str]:
    """Delete everything of a removed agent's that lives in files (`legion agents purge`):
    its volume (`agents/NAME`), its socket folder (`run/agents/NAME`, which its container
    could write), its host-owned bootstrap files and their versions (`identity/NAME`), its
    browser profile (`browsers/NAME`) and the skills installed for it (`skills/agents/NAME`),
    each without following anything (see `_remove_under`). A re-added agent of that name
    then starts from nothing. Returns the paths deleted. Raises `UnsafeEntry` at the first
    path that is not a real directory (what was deleted before it stays deleted)."""
    removed = []
    for parents in STATE_DIRS:
        if _remove_under(paths, parents, agent):
            removed.append(str(paths.home.joinpath(*parents, agent)))
    return removed


# Where an agent's state lives, under LEGION_HOME: <parents...>/NAME (`remove_state`).
STATE_DIRS: tuple[tuple[str, ...], ...] = (
    (AGENTS_DIR,),
    ("run", "agents"),
    ("identity",),
    ("browsers",),
    ("skills", "agents"),
)
