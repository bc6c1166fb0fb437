"""The host's end of one browser's control socket (`run/browsers/NAME/control.sock`).

The host listens; the browser container dials in and says hello (`legion.wire.browser.Hello`);
then the host sends `Command`s and reads `Outcome`s, one JSON object per line, one command
at a time. A second connection while one is attached is refused: one browser per socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from pathlib import Path
from typing import Any

from legion.errors import LegionError
from legion.paths import MAX_SOCKET_PATH
from legion.wire.browser import Command, Hello, Outcome

MAX_LINE = 16 * 1024 * 1024  # a screenshot, base64


class BrowserLost(LegionError):
    status = 502
    code = "browser_lost"


class BrowserFault(LegionError):
    """The browser answered with an error (a stale ref, a failed navigation...)."""

    status = 422
    code = "browser_error"


class Channel:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.hello: Hello | None = None
        self._server: asyncio.AbstractServer | None = None
        self._attached = asyncio.Event()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self.closed = False

    async def listen(self, owner: tuple[int, int] | None) -> None:
        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH:
            raise LegionError(
                f"socket path {self.path} is too long for a Unix socket; use a shorter LEGION_HOME",
                code="socket_path_too_long",
            )
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._on_connect, path=str(self.path), limit=MAX_LINE
            )
        finally:
            os.umask(old)
        if owner is not None:
            os.chown(self.path, *owner, follow_symlinks=False)

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._writer is not None or self.closed:
            writer.close()
            return
        try:
            line = await asyncio.wait_for(reader.readline(), 30)
            hello = Hello.model_validate_json(line)
        except (TimeoutError, ValueError, ConnectionError):
            writer.close()
            return
        self.hello = hello
        self._reader, self._writer = reader, writer
        self._attached.set()

    async def wait_attached(self, timeout_s: float) -> Hello:
        await asyncio.wait_for(self._attached.wait(), timeout_s)
        assert self.hello is not None
        return self.hello

    @property
    def attached(self) -> bool:
        """Connected and not hung up (the stream sees the container's end close even while
        no command is in flight, so a browser that died idle is restarted, not called)."""
        if self._writer is None or self._reader is None or self.closed:
            return False
        return not self._reader.at_eof() and not self._writer.is_closing()

    async def call(self, action: str, args: dict[str, Any], timeout_s: float) -> Outcome:
        """Send one command and wait for its outcome; BrowserLost when the browser is gone
        or does not answer in time (the caller then stops it)."""
        async with self._lock:
            if self._writer is None or self._reader is None or self.closed:
                raise BrowserLost("the browser is not connected; it starts again on next use")
            command = Command(id=next(self._ids), action=action, args=args)
            try:
                self._writer.write(command.model_dump_json().encode() + b"\n")
                await self._writer.drain()
                line = await asyncio.wait_for(self._reader.readline(), timeout_s)
            except TimeoutError:
                self.closed = True
                raise BrowserLost(
                    f"the browser did not answer {action} within {timeout_s:g}s; it was "
                    "stopped and starts again on next use",
                    action=action,
                ) from None
            except (ConnectionError, ValueError, asyncio.IncompleteReadError) as exc:
                self.closed = True
                raise BrowserLost(f"the browser went away during {action}: {exc}") from None
            if not line:
                self.closed = True
                raise BrowserLost(f"the browser went away during {action}")
            try:
                outcome = Outcome.model_validate_json(line)
            except ValueError:
                self.closed = True
                raise BrowserLost("the browser sent an unreadable answer; it was stopped") from None
            if outcome.id != command.id:
                self.closed = True
                raise BrowserLost("the browser answered out of order; it was stopped")
            return outcome

    async def close(self) -> None:
        self.closed = True
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await self._writer.wait_closed()
        if self._server is not None:
            self._server.close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
