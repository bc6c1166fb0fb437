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


def remove(paths: Paths, agent: str) -> bool:
    """Delete the agent's volume (`legion agents rm --purge`): True when deleted, False
    when there was none. Nothing in it is followed (`remove_tree_nofollow` from a
    descriptor of `agents/`: links are unlinked, any depth); a volume path that is not a
    real directory is refused (`UnsafeEntry`), its target untouched.
    """
    _check_name(agent)
    data_path = paths.agent_data(agent)
    with ExitStack() as fds:
        home_fd = _open_home(paths)
        fds.callback(os.close, home_fd)
        try:
            agents_fd = open_dir_nofollow(home_fd, AGENTS_DIR, shown=str(paths.home / AGENTS_DIR))
        except FileNotFoundError:
            return False
        fds.callback(os.close, agents_fd)
        try:
            found = os.lstat(agent, dir_fd=agents_fd)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(found.st_mode):
            raise UnsafeEntry(
                str(data_path),
                kind(found.st_mode),
                "a directory",
                fix="legion deletes only a real directory there; check it and remove it yourself",
            )
        remove_tree_nofollow(agents_fd, agent, shown=str(data_path))
    return True
