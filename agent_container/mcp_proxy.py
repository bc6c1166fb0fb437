"""The forwarder local MCP servers use as their HTTP(S) proxy: 127.0.0.1:PORT inside the
container, relayed byte for byte to the agent's egress proxy socket on the host
(`/run/legion/egress.sock`). No parsing and no policy here: the host parses every
request and CONNECT, applies the agent's `egress_hosts`, the address checks and
`[egress] allow`, and audits each destination; this only carries bytes across the
container boundary (the container has no network)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger("agent.mcp.proxy")

CHUNK = 64 * 1024
MAX_CONNECTIONS = 64


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(CHUNK):
            dst.write(data)
            await dst.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if dst.can_write_eof():
                dst.write_eof()


class Forwarder:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("egress proxy forwarder on 127.0.0.1:%d -> %s", self.port, self.upstream)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._tasks) >= MAX_CONNECTIONS:
            writer.close()
            return
        self._tasks.add(task)
        try:
            try:
                up_reader, up_writer = await asyncio.open_unix_connection(self.upstream)
            except OSError as exc:
                log.warning("the host's egress proxy is unreachable: %s", exc)
                return
            try:
                await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
            finally:
                up_writer.close()
        finally:
            writer.close()
            self._tasks.discard(task)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
