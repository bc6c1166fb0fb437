"""Shared fixtures: a real host on a temporary LEGION_HOME, clients over its real sockets."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from legion.config import parse_config
from legion.host import Host
from legion.paths import Paths


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def home() -> Iterator[Path]:
    """A short LEGION_HOME (Unix socket paths are limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="lg-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def agent_client(paths: Paths, agent: str, timeout: float = 40.0) -> httpx.AsyncClient:
    """An HTTP client on `agent`'s own socket, as the agent runtime will use it."""
    return httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(uds=str(paths.agent_socket(agent))),
        base_url="http://legion",
        timeout=timeout,
    )


def control_client(paths: Paths, timeout: float = 40.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(uds=str(paths.control_socket)),
        base_url="http://legion",
        timeout=timeout,
    )


@contextmanager
def loopback_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[ThreadingHTTPServer]:
    """A real HTTP server on 127.0.0.1 (an ephemeral port), in a thread, for egress tests."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


HostFactory = Callable[[str], AbstractAsyncContextManager[Host]]


@pytest.fixture
def running_host(home: Path) -> HostFactory:
    """`async with running_host(toml_text) as host:` starts a real host on `home`."""

    @asynccontextmanager
    async def start(config_text: str) -> AsyncIterator[Host]:
        config = parse_config(config_text)
        async with Host.running(config, Paths.resolve(home)) as host:
            yield host

    return start


class Daemon:
    """`legion daemon` as a subprocess on a given home."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.paths = Paths.resolve(home)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "legion", "--home", str(self.home), "daemon", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.paths.control_socket.exists():
                return self.proc
            if self.proc.poll() is not None:
                _, err = self.proc.communicate()
                raise AssertionError(f"daemon exited {self.proc.returncode}: {err.decode()}")
            time.sleep(0.02)
        raise AssertionError("daemon did not open its control socket within 20 s")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()


@pytest.fixture
def daemon(home: Path) -> Iterator[Callable[[], Daemon]]:
    started: list[Daemon] = []

    def make() -> Daemon:
        d = Daemon(home)
        started.append(d)
        return d

    yield make
    for d in started:
        if d.proc is not None:  # also a daemon that exited already: its pipes are closed
            d.stop(signal.SIGKILL)


# --- Docker ------------------------------------------------------------------------


def docker_available() -> str | None:
    """None when a Docker engine answers, else why not."""
    try:
        import docker

        client = docker.from_env(timeout=5)
        client.ping()
        client.close()
    except Exception as exc:
        return f"no Docker engine ({exc.__class__.__name__}: {exc})"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`docker` tests skip without an engine, unless LEGION_REQUIRE_DOCKER=1 (CI): then fail."""
    docker_items = [i for i in items if i.get_closest_marker("docker")]
    if not docker_items:
        return
    reason = docker_available()
    if reason is None:
        return
    if os.environ.get("LEGION_REQUIRE_DOCKER") == "1":
        for item in docker_items:
            item.add_marker(pytest.mark.xfail(reason="unreachable", run=False, strict=True))
        pytest.exit(f"LEGION_REQUIRE_DOCKER=1 but {reason}; docker tests cannot run", 1)
    for item in docker_items:
        item.add_marker(pytest.mark.skip(reason=f"{reason}; CI runs these"))


AGENT_IMAGE = "legion-agent:latest"


@pytest.fixture(scope="session")
def agent_image() -> str:
    """The agent image for this source: `legion-agent:latest` when it is current (CI builds
    it first), else a tag named after the source digest, built once when missing. Checkouts
    with different agent code on one engine never retag each other's image mid-run."""
    import docker

    from legion.fleet.images import build_agent_image, image_exists, image_is_current, source_digest

    own = f"legion-agent:src-{source_digest()}"
    client = docker.from_env()
    try:
        if image_is_current(client, AGENT_IMAGE):
            return AGENT_IMAGE
        if image_exists(client, own):
            return own
    finally:
        client.close()
    cache = Path(tempfile.gettempdir()) / "legion-test-wheels"
    build_agent_image(
        tag=own,
        base=None,
        mirror=None,
        uid=10001,
        cache=cache,
        progress=lambda line: print(line, file=sys.stderr),
    )
    return own
