"""The X display Chromium renders in (Xvfb), and x11vnc on a Unix socket while the
operator watches (the host relays noVNC to that socket; x11vnc never listens on TCP)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

DISPLAY = ":99"
X_SOCKET = Path("/tmp/.X11-unix/X99")

Process = asyncio.subprocess.Process


async def _wait_for(path: Path, proc: Process, what: str, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not os.path.exists(path):  # noqa: ASYNC240 - a stat on the container's tmpfs
        if proc.returncode is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        if loop.time() > deadline:
            raise RuntimeError(f"{what} did not create {path} within {timeout_s:g}s")
        await asyncio.sleep(0.02)


async def _spawn(*argv: str) -> Process:
    return await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )


async def _stop(proc: Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 3)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


class Display:
    def __init__(self, width: int, height: int, vnc_socket: str) -> None:
        self.width = width
        self.height = height
        self.vnc_socket = Path(vnc_socket)
        self._xvfb: Process | None = None
        self._vnc: Process | None = None

    async def start(self) -> None:
        self._xvfb = await _spawn(
            "Xvfb",
            DISPLAY,
            "-screen",
            "0",
            f"{self.width}x{self.height}x24",
            "-nolisten",
            "tcp",
            "-nolisten",
            "local",
            "-extension",
            "GLX",
            "-noreset",
        )
        await _wait_for(X_SOCKET, self._xvfb, "Xvfb", 20)
        os.environ["DISPLAY"] = DISPLAY

    async def vnc_start(self) -> None:
        """x11vnc on the Unix socket (no password: only the host can reach the socket)."""
        if self._vnc is not None and self._vnc.returncode is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.vnc_socket)
        self._vnc = await _spawn(
            "x11vnc",
            "-display",
            DISPLAY,
            "-unixsock",
            str(self.vnc_socket),
            "-rfbport",
            "0",
            "-forever",
            "-shared",
            "-nopw",
            "-quiet",
            "-noxdamage",
        )
        await _wait_for(self.vnc_socket, self._vnc, "x11vnc", 20)

    async def vnc_stop(self) -> None:
        if self._vnc is not None:
            await _stop(self._vnc)
            self._vnc = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.vnc_socket)

    async def close(self) -> None:
        await self.vnc_stop()
        if self._xvfb is not None:
            await _stop(self._xvfb)
            self._xvfb = None
