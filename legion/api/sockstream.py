"""An httpcore network stream on a plain socket, driven by asyncio's own socket calls.

The HostClient's connections to the control socket (and the ssh transport's socket pairs,
legion/api/remote.py) use it instead of anyio's UNIX socket stream, whose read waits on a
future that a readable socket completes from a reader callback: when the read is cancelled
(a TUI worker stopping its event stream), the callback can still fire on the cancelled
future before it is removed, and the loop reports `InvalidStateError` (the flake of the
attached TUI tests). `loop.sock_recv` and `loop.sock_sendall` handle cancellation."""

from __future__ import annotations

import asyncio
import select
import socket
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx


def is_readable(sock: socket.socket) -> bool:
    """Whether the socket has data or EOF waiting: for httpcore, an idle connection that the
    far side closed (it then opens a new one instead of reusing it)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class AsyncSocketStream(httpcore.AsyncNetworkStream):
    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109 (httpcore's interface)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                return await loop.sock_recv(self.sock, max_bytes)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ReadError(str(exc)) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_sendall(self.sock, buffer)
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.WriteError(str(exc)) from exc

    async def aclose(self) -> None:
        self.sock.close()

    async def start_tls(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("TLS is not used on a local socket")

    def get_extra_info(self, info: str) -> Any:
        return is_readable(self.sock) if info == "is_readable" else None


class UnixSocketBackend(httpcore.AsyncNetworkBackend):
    """Every connection to one Unix socket path, whatever host the URL names."""

    def __init__(self, path: str) -> None:
        self.path = path

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return await self.connect_unix_socket(self.path, timeout)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.get_running_loop().sock_connect(sock, path)
        except TimeoutError as exc:
            sock.close()
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except OSError as exc:
            sock.close()
            raise httpcore.ConnectError(str(exc)) from exc
        except BaseException:
            sock.close()
            raise
        return AsyncSocketStream(sock)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class UnixSocketTransport(httpx.AsyncHTTPTransport):
    """httpx over a Unix socket, on `AsyncSocketStream` (see the module's docstring)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self._pool = httpcore.AsyncConnectionPool(
            network_backend=UnixSocketBackend(path), retries=0
        )
