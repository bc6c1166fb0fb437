"""Raw HTTP over a Unix socket for the server tests: bytes out, parsed responses back.

Responses are parsed with h11 in client mode (a parser we did not write), so a test
reads exactly what a strict client would.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import h11


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class RawConn:
    """One connection; `send` raw bytes, `answer()` the next response (h11-parsed)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, path: Path | str) -> RawConn:
        reader, writer = await asyncio.open_unix_connection(str(path))
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self, timeout_s: float = 5.0, *, head: bool = False) -> Answer:
        """The next final response (interim 1xx responses are skipped)."""
        if self.parser.our_state is h11.IDLE:
            # h11 parses a response to a request it saw: show it one (never sent). A HEAD
            # response has no body whatever its headers say.
            if head:
                sent = h11.Request(method="HEAD", target="/", headers=[("host", "x")])
            else:
                chunked = [("host", "x"), ("transfer-encoding", "chunked")]
                sent = h11.Request(method="POST", target="/", headers=chunked)
            self.parser.send(sent)
            self.parser.send(h11.EndOfMessage())
        status = 0
        headers: dict[str, str] = {}
        body = bytearray()
        async with asyncio.timeout(timeout_s):
            while True:
                event = self.parser.next_event()
                if event is h11.NEED_DATA:
                    data = await self.reader.read(65536)
                    self.parser.receive_data(data)
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                    headers = {k.decode(): v.decode() for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
        if self.parser.our_state is h11.DONE and self.parser.their_state is h11.DONE:
            self.parser.start_next_cycle()
        return Answer(status, headers, bytes(body))

    async def closed(self, timeout_s: float = 5.0) -> bool:
        """Whether the server closes the connection (EOF) within `timeout_s`."""
        try:
            async with asyncio.timeout(timeout_s):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        self.writer.close()


async def exchange(path: Path | str, data: bytes, timeout_s: float = 5.0) -> Answer:
    """Send `data` on a fresh connection and parse the first response."""
    conn = await RawConn.open(path)
    try:
        await conn.send(data)
        return await conn.answer(timeout_s)
    finally:
        conn.close()


def request(
    method: str, target: str, body: bytes = b"", *, headers: list[tuple[str, str]] | None = None
) -> bytes:
    """A well-formed request's bytes (Content-Length set from `body` unless given)."""
    lines = [f"{method} {target} HTTP/1.1", "host: legion"]
    given = {k.lower() for k, _ in headers or []}
    for name, value in headers or []:
        lines.append(f"{name}: {value}")
    if "content-length" not in given and "transfer-encoding" not in given and body:
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
