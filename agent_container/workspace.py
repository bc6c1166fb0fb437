"""File access confined to the agent's workspace (/data/workspace).

A path is resolved (symlinks included) and must stay inside the workspace: absolute
paths elsewhere, `..` traversal and symlinks pointing out are refused.
"""

from __future__ import annotations

import os
from pathlib import Path

MAX_READ_BYTES = 256 * 1024
MAX_LIST = 500


class WorkspaceError(Exception):
    pass


class Workspace:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.real_root = self.root.resolve()

    def resolve(self, relative: str) -> Path:
        if not relative or "\x00" in relative:
            raise WorkspaceError("give a path inside the workspace")
        candidate = Path(relative)
        if candidate.is_absolute():
            try:
                candidate = candidate.relative_to(self.root)
            except ValueError:
                try:
                    candidate = candidate.relative_to(self.real_root)
                except ValueError:
                    raise WorkspaceError(
                        f"{relative} is outside the workspace {self.root}"
                    ) from None
        resolved = (self.real_root / candidate).resolve()
        if resolved != self.real_root and self.real_root not in resolved.parents:
            raise WorkspaceError(f"{relative} leads outside the workspace")
        return resolved

    def display(self, path: Path) -> str:
        return str(path.relative_to(self.real_root)) if path != self.real_root else "."

    def read(self, relative: str, max_bytes: int = MAX_READ_BYTES) -> str:
        path = self.resolve(relative)
        if not path.is_file():
            raise WorkspaceError(f"{relative}: no such file")
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
        text = data[:max_bytes].decode("utf-8", errors="replace")
        if len(data) > max_bytes:
            text += f"\n[truncated at {max_bytes} bytes]"
        return text

    def write(self, relative: str, content: str, append: bool = False) -> str:
        path = self.resolve(relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        # refuse to write through a symlink even if it points inside (no games with targets)
        if path.is_symlink():
            raise WorkspaceError(f"{relative} is a symlink; write to a regular file")
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
        flags |= getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(path, flags, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(content)
        return f"wrote {len(content.encode())} bytes to {self.display(path)}"

    def list(self, relative: str = ".") -> list[str]:
        path = self.resolve(relative or ".")
        if not path.is_dir():
            raise WorkspaceError(f"{relative}: not a directory")
        out = []
        for entry in sorted(path.iterdir())[:MAX_LIST]:
            kind = "/" if entry.is_dir() else ""
            out.append(self.display(entry) + kind)
        return out
