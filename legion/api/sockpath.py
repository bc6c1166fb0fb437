"""Socket paths in folders an agent can write, handled without ever following a link.

An agent's socket folder (`run/agents/NAME/`) is bind-mounted into its container, and
the host runs as root in production: whatever the agent leaves there (a directory, a
file, a symlink, a FIFO where the socket goes, or the folder itself swapped for a link)
must neither crash the host nor be followed. So:

* the walk from a trusted folder (`run/`, the host's own) opens each component with
  `O_NOFOLLOW | O_DIRECTORY` relative to its parent's descriptor; a component that is
  not a real directory is moved aside and made afresh;
* the socket's own name is looked at with `lstat`: an old socket is unlinked, anything
  else is moved aside into `run/quarantine/` (out of the agent's reach, kept for the
  operator to look at), or removed with fd-relative calls when it cannot be moved;
* the socket is bound through `/proc/self/fd/N/`, inside the folder the walk opened,
  so no component can be swapped between the check and the bind;
* ownership and mode of the folder are set through its descriptor (`fchown`,
  `fchmod`), never by path; the socket itself is never chowned or chmodded by path
  (it is born with its mode, under a umask).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import socket
import stat
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from legion.errors import LegionError

QUARANTINE = "quarantine"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_ATTEMPTS = 5


class SocketPathError(LegionError):
    status = 500
    code = "socket_path"


@dataclass(frozen=True)
class Moved:
    """Something that stood where a socket folder or socket had to be."""

    path: str
    kind: str  # symlink | directory | file | fifo | device | socket | other
    moved_to: str | None  # where it went; None: it was removed


@dataclass
class SocketDir:
    """An open, verified socket folder (a descriptor), and what was moved to get it."""

    fd: int
    path: Path
    root: Path
    moved: list[Moved] = field(default_factory=list)


def kind_of(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "other"


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _open_dir(name: str, dir_fd: int) -> int | None:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
            return None  # replaced or removed since we looked: look again
        raise


def _quarantine_fd(root_fd: int) -> int:
    for _ in range(_ATTEMPTS):
        st = _lstat(QUARANTINE, root_fd)
        if st is None:
            with contextlib.suppress(FileExistsError):
                os.mkdir(QUARANTINE, 0o700, dir_fd=root_fd)
            continue
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(QUARANTINE, dir_fd=root_fd)  # run/ is the host's: never an agent's
            continue
        fd = _open_dir(QUARANTINE, root_fd)
        if fd is not None:
            return fd
    raise SocketPathError(f"cannot make a quarantine folder in run/ ({QUARANTINE})")


def _move_aside(
    name: str, dir_fd: int, where: Path, st: os.stat_result, root: Path, root_fd: int, label: str
) -> Moved:
    """Move `name` (in `dir_fd`, shown as `where`) into run/quarantine, or remove it."""
    kind = kind_of(st.st_mode)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = f"{label}.{name}.{kind}.{stamp}.{secrets.token_hex(3)}"
    qfd = _quarantine_fd(root_fd)
    try:
        os.rename(name, target, src_dir_fd=dir_fd, dst_dir_fd=qfd)
        return Moved(str(where), kind, str(root / QUARANTINE / target))
    except OSError:
        pass  # another filesystem, a busy name: remove it without following anything
    finally:
        os.close(qfd)
    try:
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=dir_fd)  # the fd-based walk: never follows a link
        else:
            os.unlink(name, dir_fd=dir_fd)
    except OSError as exc:
        raise SocketPathError(
            f"{where} is a {kind} that can be neither moved aside nor removed ({exc}); "
            "remove it by hand and restart the agent",
            path=str(where),
        ) from None
    return Moved(str(where), kind, None)


def open_socket_dir(
    root: Path,
    components: Sequence[str],
    *,
    label: str,
    owner: tuple[int, int] | None = None,
    mode: int = 0o700,
) -> SocketDir:
    """Open (creating or clearing as needed) `root/components...` with no-follow opens.

    `root` is trusted (the host's own `run/`). Each component that is not a real
    directory is moved aside and created again. The last folder gets `owner` and `mode`
    through its descriptor. Close the result with `close_socket_dir`.
    """
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    moved: list[Moved] = []
    fd = os.dup(root_fd)
    where = root
    try:
        for name in components:
            where = where / name
            for _ in range(_ATTEMPTS):
                st = _lstat(name, fd)
                if st is None:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, 0o700, dir_fd=fd)
                    continue
                if not stat.S_ISDIR(st.st_mode):
                    moved.append(_move_aside(name, fd, where, st, root, root_fd, label))
                    continue
                child = _open_dir(name, fd)
                if child is not None:
                    os.close(fd)
                    fd = child
                    break
            else:
                raise SocketPathError(
                    f"{where} keeps changing under the host; stop whatever writes there "
                    "and restart",
                    path=str(where),
                )
        if owner is not None:
            os.fchown(fd, *owner)
        if components:
            os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    finally:
        os.close(root_fd)
    return SocketDir(fd, where, root, moved)


def close_socket_dir(sdir: SocketDir) -> None:
    os.close(sdir.fd)


def clear_name(sdir: SocketDir, name: str, *, label: str) -> None:
    """Make `name` free in the folder: an old socket is unlinked, anything else moved aside."""
    for _ in range(_ATTEMPTS):
        st = _lstat(name, sdir.fd)
        if st is None:
            return
        if stat.S_ISSOCK(st.st_mode):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=sdir.fd)
            continue
        root_fd = os.open(sdir.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            sdir.moved.append(
                _move_aside(name, sdir.fd, sdir.path / name, st, sdir.root, root_fd, label)
            )
        finally:
            os.close(root_fd)
    if _lstat(name, sdir.fd) is not None:
        raise SocketPathError(
            f"{sdir.path / name} keeps coming back; stop whatever writes there and restart",
            path=str(sdir.path / name),
        )


def bind_in(sdir: SocketDir, name: str, mode: int, backlog: int) -> tuple[socket.socket, int]:
    """A listening Unix socket named `name` inside the open folder, born with `mode`.

    Returns the socket and the inode of its file (to recognise it later).
    """
    via_proc = f"/proc/self/fd/{sdir.fd}/{name}"
    address = via_proc if os.path.isdir(f"/proc/self/fd/{sdir.fd}") else str(sdir.path / name)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        old_umask = os.umask(0o777 & ~mode)  # the socket is born with its mode, no window
        try:
            sock.bind(address)
        finally:
            os.umask(old_umask)
        st = _lstat(name, sdir.fd)
        if st is None or not stat.S_ISSOCK(st.st_mode):
            raise SocketPathError(
                f"{sdir.path / name} was replaced right after the host created it; stop "
                "whatever writes there and restart",
                path=str(sdir.path / name),
            )
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock, st.st_ino


def _walk_existing(root: Path, components: Sequence[str]) -> int | None:
    """The folder `root/components...` opened with no-follow opens, or None (changed)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    for name in components:
        child = _open_dir(name, fd)
        os.close(fd)
        if child is None:
            return None
        fd = child
    return fd


@contextlib.contextmanager
def _existing(root: Path, components: Sequence[str]) -> Iterator[int | None]:
    try:
        fd = _walk_existing(root, components)
    except OSError:
        fd = None
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


def is_our_socket(root: Path, components: Sequence[str], name: str, inode: int) -> bool:
    """Whether `name` in that folder is still the socket file with `inode`."""
    with _existing(root, components) as fd:
        if fd is None:
            return False
        st = _lstat(name, fd)
        return st is not None and stat.S_ISSOCK(st.st_mode) and st.st_ino == inode


def unlink_if_ours(root: Path, components: Sequence[str], name: str, inode: int) -> None:
    """Remove the socket file we created, and nothing else (no link followed)."""
    with _existing(root, components) as fd:
        if fd is None:
            return
        st = _lstat(name, fd)
        if st is not None and stat.S_ISSOCK(st.st_mode) and st.st_ino == inode:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=fd)
