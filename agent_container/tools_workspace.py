"""Tools that act inside the container: workspace files and shell commands.

`run_command` runs through `/bin/sh` with the workspace as its working directory, in its
own process group, so a timeout (or the turn being cancelled) kills the command and
everything it started. Output (stdout and stderr interleaved) is capped, and the result
says when it was cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass, field
from typing import Any

from agent_container.registry import Tool, number, obj, text
from agent_container.workspace import READ_LIMIT, Workspace

OUTPUT_CAP = 64 * 1024
COMMAND_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_MAX_S = 300.0
READ_CHUNK = 16 * 1024
# After the shell exits, how long to wait for background processes to close its output.
DRAIN_S = 1.0


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


@dataclass
class _Output:
    kept: bytearray = field(default_factory=bytearray)
    total: int = 0


async def _collect(stream: asyncio.StreamReader, out: _Output, cap: int) -> None:
    """Read `stream` to EOF, keeping the first `cap` bytes and counting all of them."""
    while chunk := await stream.read(READ_CHUNK):
        out.total += len(chunk)
        if len(out.kept) < cap:
            out.kept.extend(chunk[: cap - len(out.kept)])


async def _open_output() -> tuple[int, asyncio.StreamReader, asyncio.BaseTransport]:
    """A pipe for the command's output, read by us: the write end is the command's only,
    so `Process.wait()` returns when the shell exits, not when the last background process
    closes its copy of the output."""
    rfd, wfd = os.pipe()
    reader = asyncio.StreamReader()
    try:
        transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(rfd, "rb", buffering=0)
        )
    except BaseException:
        os.close(wfd)
        raise
    return wfd, reader, transport


async def run_command(
    command: str, cwd: str, timeout_s: float = COMMAND_TIMEOUT_S, cap: int = OUTPUT_CAP
) -> str:
    """Run `command` with a shell; `exit code N` then the output, or why it stopped."""
    timeout_s = min(max(timeout_s, 0.1), COMMAND_TIMEOUT_MAX_S)
    wfd, stream, transport = await _open_output()
    try:
        proc = await asyncio.create_subprocess_shell(
            command,
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=wfd,
            stderr=wfd,
            start_new_session=True,  # its own process group: killed whole on timeout
        )
    except BaseException:
        transport.close()
        raise
    finally:
        os.close(wfd)
    out = _Output()
    reader = asyncio.create_task(_collect(stream, out, cap))
    timed_out = False
    try:
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            timed_out = True
            _kill_group(proc)
            await proc.wait()
        except BaseException:  # cancelled: never leave the command running
            _kill_group(proc)
            raise
        lingering = False
        try:
            await asyncio.wait_for(asyncio.shield(reader), DRAIN_S)
        except TimeoutError:  # a background process still holds the output: stop reading
            lingering = True
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        transport.close()
    output = out.kept.decode("utf-8", errors="replace")
    note = ""
    if out.total > len(out.kept):
        note = f"\n[output truncated: showing the first {len(out.kept)} of {out.total} bytes]"
    if lingering:
        note += "\n[a background process still holds the output open; its output is not shown]"
    if timed_out:
        head = f"error: timed out after {timeout_s:g}s; the command's process group was killed"
        return f"{head}\n{output}{note}".rstrip("\n")
    return f"exit code {proc.returncode}\n{output}{note}"


def workspace_tools(workspace: Workspace) -> list[Tool]:
    path = text("Path relative to your workspace, e.g. notes/plan.md.")

    async def read_file(a: dict[str, Any]) -> str:
        offset = int(a.get("offset") or 0)
        limit = int(a.get("limit") or READ_LIMIT)
        return workspace.read(str(a["path"]), offset, limit)

    async def write_file(a: dict[str, Any]) -> str:
        return workspace.write(str(a["path"]), str(a["content"]), bool(a.get("append")))

    async def list_files(a: dict[str, Any]) -> str:
        entries = workspace.list(str(a.get("path") or "."), bool(a.get("recursive")))
        return "\n".join(entries) or "(empty)"

    async def command(a: dict[str, Any]) -> str:
        timeout = float(a.get("timeout_s") or COMMAND_TIMEOUT_S)
        return await run_command(str(a["command"]), str(workspace.real_root), timeout)

    return [
        Tool(
            "read_file",
            f"Read a text file of your workspace ({READ_LIMIT // 1024} KiB at most per call; "
            "use offset to read on).",
            obj(
                ["path"],
                path=path,
                offset=number("Byte offset to start at (default 0)."),
                limit=number(f"Bytes to read (default and maximum {READ_LIMIT})."),
            ),
            read_file,
        ),
        Tool(
            "write_file",
            "Create or replace a text file in your workspace (folders are created), "
            "or append to it.",
            obj(
                ["path", "content"],
                path=path,
                content=text("The text to write."),
                append={"type": "boolean", "description": "Append instead of replacing."},
            ),
            write_file,
        ),
        Tool(
            "list_files",
            "List a folder of your workspace: `dir/`, `link@`, `file (N bytes)`.",
            obj(
                path=text("Folder relative to the workspace (default: the workspace)."),
                recursive={"type": "boolean", "description": "Include subfolders."},
            ),
            list_files,
        ),
        Tool(
            "run_command",
            "Run a shell command in your container (cwd: your workspace; no network). "
            f"Output is capped at {OUTPUT_CAP // 1024} KiB; timeout {COMMAND_TIMEOUT_S:g} s "
            f"unless you set timeout_s (at most {COMMAND_TIMEOUT_MAX_S:g}).",
            obj(
                ["command"],
                command=text("The command line, run by /bin/sh."),
                timeout_s=number("Seconds before the command is killed."),
            ),
            command,
        ),
    ]
