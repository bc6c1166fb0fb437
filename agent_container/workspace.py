"""File access confined to the agent's workspace (default /data/workspace).

Every path the model gives is resolved (symlinks included) and must land inside the
workspace: absolute paths elsewhere, `..` traversal and symlinks whose target is outside
are refused, with a message the model can act on. Writes never follow a symlink in the
last component and replace files atomically, so a crash never leaves half a file.

This is a guardrail for the model's file tools, not the security boundary: the container
is (no network, read-only root, its own volume), and `run_command` can touch anything the
container's user can.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

READ_LIMIT = 64 * 1024
MAX_LIST = 500
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class WorkspaceError(Exception):
    """A path the tools refuse (outside the workspace, missing, wrong kind)."""


class Workspace:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.real_root = self.root.resolve()

    def resolve(self, relative: str) -> Path:
        """The real path of `relative` (relative to the workspace, or absolute inside it)."""
        if not relative or "\x00" in relative:
            raise WorkspaceError("give a path inside the workspace (relative, e.g. notes/a.md)")
        candidate = Path(relative)
        if candidate.is_absolute():
            for base in (self.root.absolute(), self.real_root):
                with contextlib.suppress(ValueError):
                    candidate = candidate.relative_to(base)
                    break
            else:
                raise WorkspaceError(
                    f"{relative} is outside the workspace {self.root}; use a relative path"
                )
        resolved = (self.real_root / candidate).resolve()
        if resolved != self.real_root and self.real_root not in resolved.parents:
            raise WorkspaceError(
                f"{relative} leads outside the workspace (through '..' or a symlink); refused"
            )
        return resolved

    def display(self, path: Path) -> str:
        """`path` as the model should write it: relative to the workspace."""
        return "." if path == self.real_root else str(path.relative_to(self.real_root))

    def read(self, relative: str, offset: int = 0, limit: int = READ_LIMIT) -> str:
        """Text of a file from byte `offset`, at most `limit` bytes; says when there is more."""
        path = self.resolve(relative)
        if not path.is_file():
            kind = "a directory" if path.is_dir() else "no such file"
            raise WorkspaceError(f"{relative}: {kind}")
        offset, limit = max(0, offset), max(1, min(limit, READ_LIMIT))
        fd = os.open(path, os.O_RDONLY | NOFOLLOW)
        with os.fdopen(fd, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            handle.seek(offset)
            data = handle.read(limit)
        text = data.decode("utf-8", errors="replace")
        end = offset + len(data)
        if end < size:
            text += (
                f"\n[truncated: the file is {size} bytes, this is bytes {offset}-{end}; "
                f"read on with offset={end}]"
            )
        return text

    def write(self, relative: str, content: str, append: bool = False) -> str:
        """Create or replace (atomically) a file, or append to it; parents are created."""
        path = self.resolve(relative)
        if path == self.real_root or path.is_dir():
            raise WorkspaceError(f"{relative} is a directory; give a file path")
        path.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode("utf-8")
        if append:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            return f"appended {len(data)} bytes to {self.display(path)}"
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)  # replaces a symlink itself, never writes through it
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return f"wrote {len(data)} bytes to {self.display(path)}"

    def list(self, relative: str = ".", recursive: bool = False) -> list[str]:
        """Entries under a folder: `dir/`, `link@`, `file (N bytes)`; at most MAX_LIST."""
        top = self.resolve(relative or ".")
        if not top.is_dir():
            raise WorkspaceError(f"{relative}: not a directory")
        out: list[str] = []
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for name in [*dirnames, *sorted(filenames)]:
                out.append(self._describe(Path(dirpath) / name))
                if len(out) >= MAX_LIST:
                    out.append(f"[stopped at {MAX_LIST} entries; list a subfolder]")
                    return out
            if not recursive:
                break
        return out

    def _describe(self, path: Path) -> str:
        shown = self.display(path)
        try:
            info = path.lstat()
        except OSError:
            return shown
        if stat.S_ISLNK(info.st_mode):
            return f"{shown}@"
        if stat.S_ISDIR(info.st_mode):
            return f"{shown}/"
        return f"{shown} ({info.st_size} bytes)"
