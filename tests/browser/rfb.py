"""A minimal WebSocket client (RFC 6455, binary frames) and the start of an RFB (VNC)
handshake over it: enough to prove a noVNC link reaches the browser's x11vnc."""

from __future__ import annotations

import asyncio
import base64
import os
import struct


class WebSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = b""

    async def send(self, data: bytes) -> None:
        mask = os.urandom(4)
        head = bytes([0x82])
        n = len(data)
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 65536:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.writer.write(head + mask + payload)
        await self.writer.drain()

    async def _frame(self) -> bytes:
        b0, b1 = await self.reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack(">H", await self.reader.readexactly(2))
        elif n == 127:
            (n,) = struct.unpack(">Q", await self.reader.readexactly(8))
        mask = await self.reader.readexactly(4) if b1 & 0x80 else b""
        data = await self.reader.readexactly(n)
        if mask:
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        if b0 & 0x0F == 0x8:
            raise ConnectionError("the server closed the websocket")
        return data

    async def recv(self, size: int, timeout_s: float = 10.0) -> bytes:
        async with asyncio.timeout(timeout_s):
            while len(self.buffer) < size:
                self.buffer += await self._frame()
        out, self.buffer = self.buffer[:size], self.buffer[size:]
        return out

    def close(self) -> None:
        self.writer.close()


async def connect(port: int, path: str) -> WebSocket | int:
    """A websocket to 127.0.0.1:port/path, or the HTTP status when it was refused."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: binary\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
        return 0
    status = int(head.split(b" ", 2)[1])
    if status != 101:
        writer.close()
        return status
    return WebSocket(reader, writer)


async def rfb_handshake(ws: WebSocket) -> tuple[int, int]:
    """Version, security (None), ClientInit; returns the framebuffer's width and height."""
    version = await ws.recv(12)
    if not version.startswith(b"RFB 003."):
        raise AssertionError(f"not an RFB server: {version!r}")
    await ws.send(b"RFB 003.008\n")
    (count,) = await ws.recv(1)
    types = await ws.recv(count)
    if 1 not in types:
        raise AssertionError(f"no 'None' security type offered: {list(types)}")
    await ws.send(b"\x01")
    if await ws.recv(4) != b"\x00\x00\x00\x00":
        raise AssertionError("security handshake failed")
    await ws.send(b"\x01")  # shared
    width, height = struct.unpack(">HH", await ws.recv(4))
    await ws.recv(16)  # pixel format
    (length,) = struct.unpack(">I", await ws.recv(4))
    await ws.recv(length)
    return width, height
