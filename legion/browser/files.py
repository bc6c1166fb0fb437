"""The folders of an agent's browser, made and removed without following anything planted.

* `LEGION_HOME/browsers/NAME/profile`: the browser's profile (cookies, storage), mounted at
  `/profile` in the browser container only. It belongs to the agent (no other agent's
  browser ever mounts it, and it survives restarts) but the agent's own container never
  sees it: a page's storage may hold what the agent must not read (a credential typed by
  handle, the session of a login the operator did). `browsers/` and `browsers/NAME` are
  the host's; only `profile` and what is inside it can be written by the container.
* `LEGION_HOME/run/browsers/NAME/`: the sockets (control, proxy: the host listens on both;
  vnc: x11vnc's, which the host reaches with a no-follow open), made afresh at every start.
"""

from __future__ import annotations

import os
import stat
from contextlib import ExitStack
from pathlib import Path

from legion.fleet.volume import _check_name
from legion.fsutil import (
    UnsafeEntry,
    check_owner,
    ensure_dir_nofollow,
    kind,
    open_dir_nofollow,
    remove_tree_nofollow,
)
from legion.paths import Paths

BROWSERS = "browsers"
PROFILE = "profile"


def profile_dir(paths: Paths, agent: str) -> Path:
    return paths.home / BROWSERS / agent / PROFILE


def socket_dir(paths: Paths, agent: str) -> Path:
    return paths.run / BROWSERS / agent


def vnc_dir(paths: Paths) -> Path:
    return paths.run / "vnc"


def _open(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def prepare_profile(paths: Paths, agent: str, owner: tuple[int, int] | None) -> Path:
    """Create or check `browsers/NAME/profile` (a real directory of the host's or the
    agent's uid), handing it to `owner`. Raises UnsafeEntry for anything else."""
    _check_name(agent)
    host_uid = os.geteuid()
    allowed = {host_uid, owner[0] if owner else host_uid}
    top = paths.home / BROWSERS
    with ExitStack() as fds:
        home_fd = _open(paths.home)
        fds.callback(os.close, home_fd)
        browsers_fd = ensure_dir_nofollow(home_fd, BROWSERS, 0o700, shown=str(top))
        fds.callback(os.close, browsers_fd)
        check_owner(browsers_fd, {host_uid}, shown=str(top))
        agent_fd = ensure_dir_nofollow(browsers_fd, agent, 0o700, shown=str(top / agent))
        fds.callback(os.close, agent_fd)
        check_owner(agent_fd, {host_uid}, shown=str(top / agent))
        where = profile_dir(paths, agent)
        profile_fd = ensure_dir_nofollow(agent_fd, PROFILE, 0o700, shown=str(where))
        fds.callback(os.close, profile_fd)
        check_owner(profile_fd, allowed, shown=str(where))
        if owner is not None:
            os.fchown(profile_fd, *owner)
        os.fchmod(profile_fd, 0o700)
    return profile_dir(paths, agent)


def fresh_socket_dir(paths: Paths, agent: str, owner: tuple[int, int] | None) -> Path:
    """`run/browsers/NAME/`, emptied of whatever an earlier container left (links
    included, unlinked, never followed) and made again: 0700, the agent's uid."""
    _check_name(agent)
    with ExitStack() as fds:
        run_fd = _open(paths.run)
        fds.callback(os.close, run_fd)
        top_fd = ensure_dir_nofollow(run_fd, BROWSERS, 0o700, shown=str(paths.run / BROWSERS))
        fds.callback(os.close, top_fd)
        check_owner(top_fd, {os.geteuid()}, shown=str(paths.run / BROWSERS))
        try:
            found = os.lstat(agent, dir_fd=top_fd)
        except FileNotFoundError:
            found = None
        if found is not None:
            if stat.S_ISDIR(found.st_mode):
                remove_tree_nofollow(top_fd, agent, shown=str(socket_dir(paths, agent)))
            else:
                os.unlink(agent, dir_fd=top_fd)
        os.mkdir(agent, 0o700, dir_fd=top_fd)
        fd = open_dir_nofollow(top_fd, agent, shown=str(socket_dir(paths, agent)))
        fds.callback(os.close, fd)
        if owner is not None:
            os.fchown(fd, *owner)
    return socket_dir(paths, agent)


def remove_profile(paths: Paths, agent: str) -> bool:
    """Delete `browsers/NAME` (purge); never follows anything inside it."""
    _check_name(agent)
    top = paths.home / BROWSERS
    try:
        browsers_fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        try:
            found = os.lstat(agent, dir_fd=browsers_fd)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(found.st_mode):
            raise UnsafeEntry(str(top / agent), kind(found.st_mode), "a directory")
        remove_tree_nofollow(browsers_fd, agent, shown=str(top / agent))
    finally:
        os.close(browsers_fd)
    return True


def open_socket_nofollow(path: Path, uid: int) -> int:
    """An O_PATH descriptor of the Unix socket at `path` (its last component never a link,
    it must be a socket owned by `uid`); connect through `/proc/self/fd/N`."""
    parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fd = os.open(path.name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    finally:
        os.close(parent)
    st = os.fstat(fd)
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != uid:
        os.close(fd)
        raise UnsafeEntry(
            str(path), f"{kind(st.st_mode)} owned by uid {st.st_uid}", f"a socket of uid {uid}"
        )
    return fd
