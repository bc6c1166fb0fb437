"""Shared pieces of the benchmarks: a short LEGION_HOME, a raw HTTP/1.1 client over a
Unix socket, a minimal baseline server, a server child process, statistics and output.

Every loop here is bounded in count and in time; all traffic stays on Unix sockets.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import multiprocessing
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# --- results and output ----------------------------------------------------------------


@dataclass
class Target:
    name: str
    ok: bool
    detail: str


@dataclass
class Report:
    title: str
    targets: list[Target] = field(default_factory=list)

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.targets.append(Target(name, ok, detail))
        print(f"  {'PASS' if ok else 'MISS'}  {name}: {detail}", flush=True)


def heading(text: str) -> None:
    print(f"\n== {text} ==", flush=True)


def line(text: str = "") -> None:
    print(f"  {text}", flush=True)


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile of `samples` (q in 0..100)."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary_ms(samples_s: list[float]) -> dict[str, float]:
    return {
        "n": len(samples_s),
        "p50": percentile(samples_s, 50) * 1e3,
        "p90": percentile(samples_s, 90) * 1e3,
        "p99": percentile(samples_s, 99) * 1e3,
        "max": max(samples_s) * 1e3 if samples_s else float("nan"),
    }


def fmt_ms(s: dict[str, float]) -> str:
    return (
        f"p50 {s['p50']:.3f} ms  p90 {s['p90']:.3f} ms  p99 {s['p99']:.3f} ms  "
        f"max {s['max']:.3f} ms  (n={int(s['n'])})"
    )


def base_args(description: str, prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "--quick", action="store_true", help="fewer iterations (a smoke run, noisier figures)"
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="cProfile the host side and write .pstats files to DIR",
    )
    return parser


# --- a short LEGION_HOME -----------------------------------------------------------------


@contextlib.contextmanager
def short_home(prefix: str = "lgb-") -> Iterator[Path]:
    """A fresh LEGION_HOME under /tmp with a short path (Unix sockets allow 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    old = os.environ.get("LEGION_HOME")
    os.environ["LEGION_HOME"] = str(path)
    try:
        yield path
    finally:
        if old is None:
            os.environ.pop("LEGION_HOME", None)
        else:
            os.environ["LEGION_HOME"] = old
        shutil.rmtree(path, ignore_errors=True)


# --- the raw client ----------------------------------------------------------------------


class RawHttp(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection on a Unix socket, one request in flight.

    The arrival time of a response is taken in `data_received`, the moment its last
    byte is read, before any parsing by the caller.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes, float]] | None = None

    @classmethod
    async def connect(cls, path: str | Path) -> RawHttp:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_unix_connection(cls, str(path))
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        length = 0
        for h in head[1:]:
            name, _, value = h.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        total = end + 4 + length
        if len(self.buf) < total:
            return
        arrived = time.perf_counter()
        status = int(head[0].split(" ", 2)[1])
        body = bytes(self.buf[end + 4 : total])
        del self.buf[:total]
        waiter.set_result((status, body, arrived))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

    async def request(
        self, method: str, path: str, body: bytes = b"", limit_s: float = 10.0
    ) -> tuple[int, bytes, float, float]:
        """Send one request; returns (status, body, sent_at, arrived_at)."""
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        head = (
            f"{method} {path} HTTP/1.1\r\nhost: legion\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode()
        sent = time.perf_counter()
        self.transport.write(head + body)
        status, data, arrived = await asyncio.wait_for(self.waiter, limit_s)
        return status, data, sent, arrived

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


# --- a minimal baseline server -----------------------------------------------------------

Responder = Callable[[str, str, bytes], Awaitable[bytes]]


async def serve_minimal(path: str | Path, respond: Responder) -> asyncio.AbstractServer:
    """A bare HTTP/1.1 keep-alive server on a Unix socket: read head and body, answer
    `respond(method, target, body)` as JSON. No routing, validation, policy or storage."""

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                lines = head[:-4].decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                length = 0
                for h in lines[1:]:
                    name, _, value = h.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                out = await respond(method, target, body)
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\nconnection: keep-alive\r\n\r\n%s" % (len(out), out)
                )
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    return await asyncio.start_unix_server(on_connect, path=str(path))


# --- the server side in a child process ----------------------------------------------------

# A server factory runs in the child: it enters what it starts into the exit stack and
# returns a picklable description (socket paths, ...) for the parent.
ServerFactory = Callable[[contextlib.AsyncExitStack, dict[str, Any]], Awaitable[Any]]

CHILD_MAX_S = 900.0  # a child never outlives this, whatever happens to the parent


def _child_main(conn: Any, factory: ServerFactory, kwargs: dict[str, Any], prof: str) -> None:
    profiler = cProfile.Profile() if prof else None

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        async with contextlib.AsyncExitStack() as stack:
            info = await factory(stack, kwargs)
            loop.add_reader(conn.fileno(), stop.set)
            conn.send(("ready", info))
            if profiler is not None:
                profiler.enable()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), CHILD_MAX_S)
            if profiler is not None:
                profiler.disable()
            loop.remove_reader(conn.fileno())

    try:
        asyncio.run(serve())
    except BaseException:
        with contextlib.suppress(Exception):
            conn.send(("error", traceback.format_exc()))
        raise
    finally:
        if profiler is not None:
            profiler.dump_stats(prof)


@contextlib.asynccontextmanager
async def server_process(
    factory: ServerFactory,
    kwargs: dict[str, Any],
    profile_to: str | None = None,
    ready_timeout_s: float = 60.0,
) -> AsyncIterator[Any]:
    """Run `factory`'s servers in a child process (as an agent container would talk to
    the host from another process); yields what the factory returned (within
    `ready_timeout_s`)."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(
        target=_child_main, args=(child, factory, kwargs, profile_to or ""), daemon=True
    )
    proc.start()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ready_timeout_s
        while not await loop.run_in_executor(None, parent.poll, 0.2):
            if not proc.is_alive():
                raise RuntimeError(f"server process exited with code {proc.exitcode}")
            if loop.time() > deadline:
                raise RuntimeError(f"server process did not start within {ready_timeout_s:.0f} s")
        kind, info = parent.recv()
        if kind != "ready":
            raise RuntimeError(f"server process failed:\n{info}")
        yield info
    finally:
        with contextlib.suppress(OSError):
            parent.send("stop")
        await loop.run_in_executor(None, proc.join, 30.0)
        if proc.is_alive():
            proc.terminate()  # our own child, by its handle
            await loop.run_in_executor(None, proc.join, 5.0)
        parent.close()


async def start_host(stack: contextlib.AsyncExitStack, config_text: str) -> Any:
    """Start a real legion Host on LEGION_HOME (inside a server child)."""
    from legion.config import parse_config
    from legion.host import Host
    from legion.paths import Paths

    config = parse_config(config_text)
    paths = Paths.resolve(os.environ["LEGION_HOME"])
    return await stack.enter_async_context(Host.running(config, paths))


def close_server(stack: contextlib.AsyncExitStack, server: asyncio.AbstractServer) -> None:
    async def close() -> None:
        server.close()
        await server.wait_closed()

    stack.push_async_callback(close)


def profile_path(profile: str | None, name: str) -> str | None:
    """Where to write the host-side profile `name` (None: no profiling)."""
    if not profile:
        return None
    os.makedirs(profile, exist_ok=True)
    return os.path.join(os.path.abspath(profile), f"{name}.pstats")


def run_alone(run: Callable[..., Report], doc: str | None, name: str) -> int:
    """`python -m bench.<name>`: parse the shared options and run one benchmark."""
    parser = base_args((doc or name).splitlines()[0], prog=f"python -m bench.{name}")
    args = parser.parse_args()
    run(quick=args.quick, profile=args.profile)
    return 0
