"""The egress proxy's transport: connections pinned to checked addresses, and bounded,
decoded response bodies (scrubbed by `legion.gateway.redact.EchoScrubber`). See
`legion.gateway.egress` for the policy around them."""

from __future__ import annotations

import asyncio
import socket
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpcore

from legion.errors import LegionError
from legion.gateway.netcheck import IPAddress

THREAD_SCRUB_BYTES = 256 * 1024  # scrub bigger bodies off the event loop


class EgressDenied(LegionError):
    status = 403
    code = "egress_denied"


class InvalidUrl(LegionError):
    status = 400
    code = "invalid_url"


class InvalidHeader(LegionError):
    status = 400
    code = "invalid_header"


class EgressTimeout(LegionError):
    status = 504
    code = "egress_timeout"


class EgressFailed(LegionError):
    status = 502
    code = "egress_failed"


# --- pinned connections ---------------------------------------------------------------


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects only to addresses checked for (host, port); ignores what DNS says now."""

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._pins: dict[tuple[str, int], list[IPAddress]] = {}
        self.connected: str | None = None

    def pin(self, host: str, port: int, addresses: list[IPAddress]) -> None:
        self._pins[(host, port)] = addresses

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = self._pins.get((host, port))
        if not addresses:
            raise httpcore.ConnectError(f"{host}:{port} has no checked address")
        error: Exception | None = None
        for ip in addresses:
            try:
                stream = await self._inner.connect_tcp(
                    str(ip), port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                error = exc
                continue
            self.connected = str(ip)
            return stream
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("egress never uses Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


async def system_resolver(host: str) -> list[str]:
    """Addresses of `host` from the system resolver, without blocking the event loop."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


# --- response bodies ------------------------------------------------------------------


class BodyReader:
    """Collects at most `cap` bytes of a body, decoding gzip/deflate on the way."""

    def __init__(self, cap: int, encoding: str) -> None:
        self.cap = cap
        self.data = bytearray()
        self.truncated = False
        coding = encoding.strip().lower()
        self.decoded = coding not in ("", "identity")
        if coding in ("gzip", "x-gzip", "deflate"):
            self._z: Any = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header
        elif self.decoded:
            raise EgressFailed(
                f"the server sent content-encoding {coding!r} although the host asked for "
                "identity; only gzip and deflate can be decoded"
            )
        else:
            self._z = None

    def feed(self, chunk: bytes) -> bool:
        """Add a chunk; False once the cap is reached (stop reading)."""
        if self._z is None:
            return self._add(chunk)
        data = chunk
        try:
            while data:
                if not self._add(self._z.decompress(data, self.cap + 1 - len(self.data))):
                    return False
                data = self._z.unconsumed_tail
        except zlib.error as exc:
            raise EgressFailed(f"the response body does not decode: {exc}") from None
        return True

    def finish(self) -> None:
        if self._z is not None and not self.truncated:
            try:
                self._add(self._z.flush())
            except zlib.error as exc:
                raise EgressFailed(f"the response body does not decode: {exc}") from None

    def _add(self, data: bytes) -> bool:
        room = self.cap - len(self.data)
        if len(data) > room:
            self.data += data[:room]
            self.truncated = True
            return False
        self.data += data
        return True


@dataclass
class Reply:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    truncated: bool = False
    decoded: bool = False

    def header(self, name: bytes) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value.decode("latin-1")
        return None


@dataclass
class Trace:
    """What the audit record says about one request."""

    host: str = ""
    url: str = ""
    final_url: str | None = None
    status: int | None = None
    sent: int = 0
    received: int = 0
    redirects: int = 0
    address: str | None = None
    credentials: list[str] = field(default_factory=list)


def _utf8(data: bytes, truncated: bool) -> str | None:
    for cut in range(4 if truncated else 1):
        try:
            return data[: len(data) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None
