"""An agent's bootstrap files, owned by the host: SOUL.md, INSTRUCTIONS.md (the operator's),
USER.md, MEMORY.md and HEARTBEAT.md (the agent's, through `update_workspace`).

They live outside the agent's volume, in `LEGION_HOME/identity/NAME/`:

* `files/`: the current text of each file. The Docker backend mounts this folder
  read-only at /etc/legion/identity, where the runtime reads its bootstrap prompt from;
  the agent can neither change nor replace nor shadow it (the root filesystem is
  read-only too, and the runtime never reads these names from its workspace).
* `versions/FILE/NNNNNN.json`: every change as a version ({version, at, by, bytes,
  sha256, note, content}), the last KEEP_VERSIONS per file. This folder is never mounted:
  the operator's `legion agents files` and `restore` see what the agent and the operator
  wrote, and nothing the agent can tamper with.

Every write checks the file's cap (`WORKSPACE_FILE_CAPS`), that it is UTF-8 and has no
NUL, then writes atomically; a lock file serializes writers (the host and the CLI may
both write). Nothing here follows a link: a folder or file that is a link, or not what it
should be, is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from legion.errors import LegionError, NotFound
from legion.paths import Paths
from legion.wire.agent import (
    AGENT_EDITABLE_FILES,
    WORKSPACE_FILE_CAPS,
    WorkspaceVersion,
)

KEEP_VERSIONS = 100
MOUNT_POINT = "/etc/legion/identity"
FILES = tuple(WORKSPACE_FILE_CAPS)
NOFOLLOW = os.O_NOFOLLOW
# What `legion agents edit NAME WHICH` accepts, and the file each names.
ALIASES = {
    "soul": "SOUL.md",
    "instructions": "INSTRUCTIONS.md",
    "user": "USER.md",
    "memory": "MEMORY.md",
    "heartbeat": "HEARTBEAT.md",
}


class FileTooLarge(LegionError):
    status = 413
    code = "file_too_large"


class BadFile(LegionError):
    status = 400
    code = "bad_file"


def file_name(which: str) -> str:
    """`soul`, `SOUL.md`, `soul.md` -> `SOUL.md`; anything else is refused."""
    name = ALIASES.get(which.lower().removesuffix(".md"), "")
    if not name:
        raise BadFile(
            f"{which!r} is not a workspace file; use one of {', '.join(ALIASES)}",
            file=which,
        )
    return name


def validate(name: str, content: str | bytes) -> str:
    """The text to store, or a clear refusal: unknown file, over its cap, not UTF-8, NUL."""
    if name not in WORKSPACE_FILE_CAPS:
        raise BadFile(f"{name} is not a workspace file ({', '.join(FILES)})", file=name)
    if isinstance(content, bytes):
        try:
            content = content.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadFile(
                f"{name} is not UTF-8 text (byte {exc.start}); save it as UTF-8", file=name
            ) from None
    if "\x00" in content:
        raise BadFile(f"{name} contains a NUL character; remove it", file=name)
    try:
        size, cap = len(content.encode("utf-8")), WORKSPACE_FILE_CAPS[name]
    except UnicodeEncodeError as exc:  # a lone surrogate (JSON "\ud800")
        raise BadFile(
            f"{name} is not valid Unicode text (character {exc.start}); remove it", file=name
        ) from None
    if size > cap:
        raise FileTooLarge(
            f"{name} would be {size} bytes; its cap is {cap} bytes ({cap // 1024} KiB): shorten it",
            file=name,
            bytes=size,
            cap=cap,
        )
    return content


def _real_dir(path: Path, mode: int) -> Path:
    """Create `path` (mode) if missing; refuse it when it is a link or not a folder."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=mode)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise LegionError(
            f"{path} is not a folder (a link or a file?); move it aside", code="bad_path"
        )
    if stat.S_IMODE(info.st_mode) != mode and info.st_uid == os.geteuid():
        os.chmod(path, mode)
    return path


def _read_regular(path: Path) -> bytes | None:
    """A regular file's bytes without following a link; None when it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY | NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LegionError(
            f"{path} cannot be read ({exc.strerror}); is it a link?", code="bad_path"
        ) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise LegionError(f"{path} is not a regular file; move it aside", code="bad_path")
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Temp file in the same folder (O_EXCL: never an existing file or link), fsync,
    rename over the target (which replaces a link itself, never writes through it)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | NOFOLLOW)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class AgentFiles:
    """One agent's host-owned files and their versions."""

    def __init__(self, root: Path, clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self.clock = clock

    @classmethod
    def of(cls, paths: Paths, agent: str, clock: Callable[[], float] = time.time) -> AgentFiles:
        return cls(paths.agent_identity(agent), clock)

    @property
    def files_dir(self) -> Path:
        return self.root / "files"

    @property
    def versions_dir(self) -> Path:
        return self.root / "versions"

    def ensure(self) -> Path:
        """Create the folders (files/ readable by the container, versions/ by nobody else);
        returns the folder to mount."""
        _real_dir(self.root.parent, 0o755)
        _real_dir(self.root, 0o755)
        _real_dir(self.versions_dir, 0o700)
        return _real_dir(self.files_dir, 0o755)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.ensure()
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT | NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # --- reading ------------------------------------------------------------------------

    def read(self, name: str) -> str:
        """The current text of a file ('' when it was never written)."""
        validate(name, "")
        data = _read_regular(self.files_dir / name) if self.files_dir.is_dir() else None
        return (data or b"").decode("utf-8", errors="replace")

    def _version_dir(self, name: str) -> Path:
        return self.versions_dir / name

    def _numbers(self, name: str) -> list[int]:
        folder = self._version_dir(name)
        if not folder.is_dir() or folder.is_symlink():
            return []
        return sorted(
            int(p.name[:-5])
            for p in folder.iterdir()
            if p.name.endswith(".json") and p.name[:-5].isdigit()
        )

    def _load(self, name: str, number: int) -> dict[str, object]:
        data = _read_regular(self._version_dir(name) / f"{number:06d}.json")
        if data is None:
            kept = self._numbers(name)
            raise NotFound(
                f"{name} has no version {number}"
                + (f"; kept: {kept[0]}..{kept[-1]}" if kept else "; it has no versions yet"),
                code="no_such_version",
            )
        record = json.loads(data)
        if not isinstance(record, dict):
            raise LegionError(f"version {number} of {name} is damaged", code="bad_version")
        return record

    def versions(self, name: str | None = None) -> list[WorkspaceVersion]:
        """Kept versions, oldest first (of one file, or of all)."""
        names = [file_name(name)] if name else list(FILES)
        out: list[WorkspaceVersion] = []
        for each in names:
            for number in self._numbers(each):
                record = self._load(each, number)
                record.pop("content", None)
                out.append(WorkspaceVersion.model_validate(record))
        return out

    def content(self, name: str, number: int) -> str:
        return str(self._load(file_name(name), number)["content"])

    # --- writing ------------------------------------------------------------------------

    def write(self, name: str, content: str | bytes, by: str, note: str = "") -> WorkspaceVersion:
        """Validate and store a new text of `name` as its next version."""
        text = validate(name, content)
        with self._locked():
            return self._store(name, text, by, note)

    def update(self, name: str, content: str, mode: str, by: str) -> WorkspaceVersion:
        """`update_workspace`: replace, or append to, an agent-editable file."""
        if name not in AGENT_EDITABLE_FILES:
            raise LegionError(
                f"{name} belongs to the operator; an agent may edit "
                f"{', '.join(AGENT_EDITABLE_FILES)}",
                code="file_not_editable",
                status=403,
            )
        with self._locked():
            if mode == "append":
                current = self.read(name)
                joined = current + ("\n" if current and not current.endswith("\n") else "")
                content = joined + content
            return self._store(name, validate(name, content), by, mode)

    def restore(self, name: str, number: int, by: str) -> WorkspaceVersion:
        name = file_name(name)
        with self._locked():
            text = str(self._load(name, number)["content"])
            return self._store(name, validate(name, text), by, f"restored version {number}")

    def _store(self, name: str, text: str, by: str, note: str) -> WorkspaceVersion:
        data = text.encode("utf-8")
        numbers = self._numbers(name)
        version = WorkspaceVersion(
            file=name,
            version=(numbers[-1] + 1) if numbers else 1,
            at=self.clock(),
            by=by,
            bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            note=note[:200],
        )
        folder = _real_dir(self._version_dir(name), 0o700)
        record = version.model_dump() | {"content": text}
        _write_atomic(folder / f"{version.version:06d}.json", json.dumps(record).encode(), 0o600)
        _write_atomic(self.files_dir / name, data, 0o644)
        for old in numbers[: max(0, len(numbers) + 1 - KEEP_VERSIONS)]:
            (folder / f"{old:06d}.json").unlink(missing_ok=True)
        return version
