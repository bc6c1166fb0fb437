"""File helpers: atomic writes, and no-follow primitives for places an agent can write.

`atomic_write`: a temp file in the same folder, fsync, then os.replace.

The no-follow primitives are for the host (often root) working in a folder an agent
controls (its `/data` volume; see docs/decisions.md, "Host file operations on
agent-writable paths"). They walk one component at a time from a directory file
descriptor, open every component with `O_NOFOLLOW`, check the type and owner on the open
descriptor (`fstat`), and change owner and mode through that descriptor (`fchown`,
`fchmod`), so what is checked is what is changed: a link, a FIFO, a socket or a file
where a directory belongs is refused (`UnsafeEntry`), never followed, and a swap after
the check cannot redirect the change.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Collection
from pathlib import Path

from legion.errors import LegionError

# Opening a directory: never a link, never a controlling tty, never block on a FIFO.
_DIR_FLAGS = (
    os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
)
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK


def atomic_write(path: Path, text: str, mode: int = 0o600) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# --- no-follow primitives ----------------------------------------------------------------


class UnsafeEntry(LegionError):
    """A path in an agent-writable place is not what the host expects; nothing was done
    through it. `path` names it, `found` says what is there."""

    status = 409
    code = "unsafe_path"

    def __init__(self, path: str, found: str, expected: str, *, fix: str = "") -> None:
        message = f"{path} is {found}, not {expected}; legion did not follow or change it"
        super().__init__(message + (f". {fix}" if fix else ""), path=path, found=found)
        self.path = path
        self.found = found
        self.expected = expected


def kind(mode: int) -> str:
    """What a `st_mode` is, in words ("a symbolic link", "a FIFO", ...)."""
    for test, name in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return f"an unknown kind of file (mode {mode:o})"


def _one_component(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"{name!r} is not a single path component")


def _describe(dir_fd: int, name: str) -> str:
    try:
        return kind(os.lstat(name, dir_fd=dir_fd).st_mode)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"


def open_dir_nofollow(dir_fd: int, name: str, *, shown: str | None = None) -> int:
    """Open the directory `name` inside `dir_fd`, refusing anything that is not a real
    directory (a link, even to a directory, included). Returns a descriptor to close.
    Raises FileNotFoundError when nothing is there. `shown` is the path for messages."""
    _one_component(name)
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafeEntry(shown or name, _describe(dir_fd, name), "a directory") from None
        raise
    return fd


def ensure_dir_nofollow(dir_fd: int, name: str, mode: int, *, shown: str | None = None) -> int:
    """`open_dir_nofollow`, creating the directory (with `mode`) when nothing is there.
    `mkdirat` never follows a link: a dangling link in the way is refused, not created
    through."""
    _one_component(name)
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, mode, dir_fd=dir_fd)
    return open_dir_nofollow(dir_fd, name, shown=shown)


def check_owner(fd: int, allowed: Collection[int], *, shown: str) -> os.stat_result:
    """`fstat(fd)`, refusing an owner outside `allowed` (e.g. a folder another user made)."""
    st = os.fstat(fd)
    if st.st_uid not in allowed:
        raise UnsafeEntry(
            shown,
            f"{kind(st.st_mode)} owned by uid {st.st_uid}",
            "owned by uid " + " or ".join(str(u) for u in sorted(allowed)),
            fix=f"check who made it, then `chown {sorted(allowed)[-1]} {shown}`",
        )
    return st


def open_path_nofollow(root_fd: int, relative: str, *, shown_root: str = "") -> int:
    """Open the directory at `relative` (`a/b/c`) under `root_fd`, one component at a
    time, none of them a link. `..`, `.` and absolute paths are refused (ValueError)."""
    parts = relative.split("/")
    if relative.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{relative!r} is not a plain relative path")
    fd = os.dup(root_fd)
    shown = shown_root
    try:
        for part in parts:
            shown = f"{shown}/{part}" if shown else part
            next_fd = open_dir_nofollow(fd, part, shown=shown)
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular_file_nofollow(
    dir_fd: int, name: str, max_bytes: int, *, shown: str | None = None
) -> bytes:
    """The bytes of the regular file `name` inside `dir_fd`, at most `max_bytes`.

    A link, FIFO, socket, device or directory there is refused (`UnsafeEntry`) without
    being opened through (a FIFO is opened non-blocking, so it cannot stall the host); so
    is a file larger than `max_bytes`. Raises FileNotFoundError when nothing is there.
    For files the host reads from a folder an agent can write (or may one day): read them
    through this, never with `open()` or `Path.read_text()`.
    """
    _one_component(name)
    where = shown or name
    before = os.lstat(name, dir_fd=dir_fd)  # refuse devices and FIFOs before any open
    if not stat.S_ISREG(before.st_mode):
        raise UnsafeEntry(where, kind(before.st_mode), "a regular file")
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeEntry(where, "a symbolic link", "a regular file") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (
            before.st_dev,
            before.st_ino,
        ):
            raise UnsafeEntry(where, f"swapped for {kind(st.st_mode)}", "a regular file")
        if st.st_size > max_bytes:
            raise UnsafeEntry(where, f"{st.st_size} bytes", f"at most {max_bytes} bytes")
        chunks: list[bytes] = []
        left = max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:
            raise UnsafeEntry(where, "growing past the limit", f"at most {max_bytes} bytes")
        return data
    finally:
        os.close(fd)


def _ident(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _scan(fd: int) -> list[str]:
    """Unlink everything in `fd` that is not a directory (links as links); return the
    names of the directories."""
    subdirs: list[str] = []
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.name)
                continue
            try:
                os.unlink(entry.name, dir_fd=fd)
            except FileNotFoundError:
                pass
            except IsADirectoryError:  # became a directory since the scan
                subdirs.append(entry.name)
    return subdirs


def remove_tree_nofollow(dir_fd: int, name: str, *, shown: str | None = None) -> None:
    """`rm -rf --one-file-system` of the directory `name` inside `dir_fd`, never following
    a link (a link is unlinked, its target untouched), at any depth, with three
    descriptors at most and no recursion (an agent can nest folders thousands deep; the
    recursive `shutil.rmtree` then fails). It climbs back with `..` and checks it lands
    in the folder it came from; a folder moved meanwhile is refused (`UnsafeEntry`)."""
    where = shown or name
    top = open_dir_nofollow(dir_fd, name, shown=where)
    device = _ident(top)[0]
    ids = [_ident(top)]  # (dev, ino) of each level being deleted, top first
    names: list[str] = []  # each level's name in the level above
    cur = top
    try:
        pending = [_scan(top)]  # per level: the subfolders still to delete
        while True:
            if pending[-1]:
                child = pending[-1].pop()
                try:
                    nfd = open_dir_nofollow(cur, child, shown=f"{where}/.../{child}")
                except FileNotFoundError:
                    continue
                except UnsafeEntry:  # swapped for a link or a file: unlink that instead
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(child, dir_fd=cur)
                    continue
                if _ident(nfd)[0] != device:
                    os.close(nfd)
                    raise UnsafeEntry(f"{where}/.../{child}", "another file system", "a folder")
                if cur != top:
                    os.close(cur)
                cur = nfd
                ids.append(_ident(cur))
                names.append(child)
                pending.append(_scan(cur))
                continue
            if not names:
                break
            up = os.open("..", _DIR_FLAGS, dir_fd=cur)
            if _ident(up) != ids[-2]:
                os.close(up)
                raise UnsafeEntry(where, "changing while it was deleted", "a still folder")
            os.close(cur)
            cur = up
            ids.pop()
            pending.pop()
            done = names.pop()
            try:
                os.rmdir(done, dir_fd=cur)
            except OSError as exc:
                if exc.errno != errno.ENOTEMPTY:
                    raise
                pending[-1].append(done)  # something appeared in it: once more
            if not names:
                os.close(cur)
                cur = top
    finally:
        if cur != top:
            os.close(cur)
        os.close(top)
    os.rmdir(name, dir_fd=dir_fd)
