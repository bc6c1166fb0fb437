"""The X display Chromium renders in (Xvfb), and x11vnc on a Unix socket while the
operator watches (the host relays noVNC to that socket; x11vnc never listens on TCP)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from pathlib import Path

DISPLAY = ":99"
X_SOCKET = Path("/tmp/.X11-unix/X99")


async def _wait_for(path: Path, proc: subprocess.Popen[bytes], what: str, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        if loop.time() > deadline:
            raise RuntimeError(f"{what} did not create {path} within {timeout_s:g}s")
        await asyncio.sleep(0.02)


class Display:
    def __init__(self, width: int, height: int, vnc_socket: str) -> None:
        self.width = width
        self.height = height
        self.vnc_socket = Path(vnc_socket)
        self._xvfb: subprocess.Popen[bytes] | None = None
        self._vnc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self._xvfb = subprocess.Popen(
            [
                "Xvfb",
                DISPLAY,
                "-screen",
                "0",
                f"{self.width}x{self.height}x24",
                "-nolisten",
                "tcp",
                "-nolisten",
                "local",
                "-noreset",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await _wait_for(X_SOCKET, self._xvfb, "Xvfb", 20)
        os.environ["DISPLAY"] = DISPLAY

    async def vnc_start(self) -> None:
        """x11vnc on the Unix socket (no password: only the host can reach the socket)."""
        if self._vnc is not None and self._vnc.poll() is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.vnc_socket.unlink()
        self._vnc = subprocess.Popen(
            [
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
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await _wait_for(self.vnc_socket, self._vnc, "x11vnc", 20)

    async def vnc_stop(self) -> None:
        if self._vnc is not None:
            self._stop(self._vnc)
            self._vnc = None
        with contextlib.suppress(FileNotFoundError):
            self.vnc_socket.unlink()

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    async def close(self) -> None:
        await self.vnc_stop()
        if self._xvfb is not None:
            self._stop(self._xvfb)
            self._xvfb = None
