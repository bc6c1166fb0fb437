"""The RuntimeBackend interface: start, stop, status, logs and exec of one agent, and the
status of every container of this home (one listing, and a feed of changes as they happen).

Backends are called from the host's event loop; every method is async, and a backend
that blocks (the Docker SDK) runs its work in worker threads of its own (invariant 7).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

State = Literal["running", "exited", "missing", "created"]


@dataclass(frozen=True)
class AgentSpec:
    """Everything a backend needs to run one agent; no secret is ever part of it."""

    name: str
    image: str
    data_dir: Path
    socket_dir: Path
    uid: int
    gid: int
    memory_mb: int
    cpus: float
    pids: int
    runtime: str | None = None
    # The host-owned bootstrap files (legion.fleet.identity), mounted read-only.
    identity_dir: Path | None = None
    labels: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    # The operator's skills (legion.fleet.skills): the fleet's and this agent's, read-only.
    fleet_skills_dir: Path | None = None
    skills_dir: Path | None = None
    # The host's folder of this agent's MCP egress proxy socket (legion.gateway.mcp_proxy).
    egress_dir: Path | None = None


@dataclass(frozen=True)
class ContainerStatus:
    state: State
    exit_code: int | None = None
    started_at: str | None = None
    container_id: str | None = None
    error: str | None = None
    # The engine's health verdict when the image declares a health check ("unhealthy" is
    # a reason to restart), else None.
    health: str | None = None


@dataclass(frozen=True)
class StatusChange:
    """One container of this home changed state (it started, died, went unhealthy, was
    removed), as the engine reported it; `status.container_id` says which container."""

    agent: str
    status: ContainerStatus


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    output: str


class BackendUnavailable(Exception):
    """The backend cannot be reached (e.g. no Docker engine); the message says what to do."""


class NoContainer(Exception):
    """The agent has no container (never started, stopped, or removed)."""


class TooManyLogStreams(Exception):
    """Every log stream slot is in use; the message says how many there are."""


class LogStream(Protocol):
    """One open read of a container's output: iterate it for chunks of bytes (a follow
    stream ends when the container does), and close it when done or abandoned."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def __anext__(self) -> bytes: ...

    async def aclose(self) -> None: ...


class StatusFeed(Protocol):
    """The engine's container changes as they happen: iterate it for StatusChange; it ends
    when the engine ends the stream (the engine restarted or went away). Close it when done."""

    def __aiter__(self) -> AsyncIterator[StatusChange]: ...

    async def __anext__(self) -> StatusChange: ...

    async def aclose(self) -> None: ...


class RuntimeBackend(Protocol):
    name: str

    async def start(self, spec: AgentSpec) -> ContainerStatus: ...

    async def stop(self, agent: str, timeout_s: float = 5.0) -> None: ...

    async def status(self, agent: str) -> ContainerStatus: ...

    async def logs(self, agent: str, tail: int = 200) -> str: ...

    async def open_logs(
        self,
        agent: str,
        *,
        tail: int | None = None,
        since: float | None = None,
        follow: bool = False,
    ) -> LogStream:
        """The agent's container output: the last `tail` lines (None: all) written after
        `since` (Unix seconds), then, with `follow`, what it writes until it stops.
        Raises NoContainer, BackendUnavailable or TooManyLogStreams before anything is read."""
        ...

    async def exec(self, agent: str, command: list[str], timeout_s: float = 30.0) -> ExecResult: ...

    async def remove_others(self, keep: set[str]) -> list[str]:
        """Remove containers this home started for agents not in `keep` (left by a crash)."""
        ...

    async def statuses(self) -> dict[str, ContainerStatus]:
        """The status of every container of this home, by agent, in one call (an agent
        without a container is absent). Raises BackendUnavailable."""
        ...

    async def watch(self) -> StatusFeed:
        """Follow the changes of this home's containers from now on (one stream for the
        fleet, no call per container). Raises BackendUnavailable."""
        ...

    async def close(self) -> None: ...


class FakeBackend:
    """An in-memory backend for unit tests of the supervisor: containers are just states.

    Tests drive it: `crash(agent)` makes a running agent exit and tells the open status
    feeds, as the engine's event stream would (`crash(agent, tell=False)`: an event the
    feed lost, which only the listing shows); `fail_starts` makes starts fail; `end_feeds()`
    ends the open feeds, as an engine restart does; `tell_starts = False` keeps starts
    from the feeds (an event still on its way); `start_delay_s` makes each start take
    that long; `hold_listing` (an Event) holds `statuses()` after it took its snapshot until
    it is set. It never runs anything; `calls` counts each method's calls, `max_starting`
    is the most starts that ran at once, and `log` records ("start"|"started"|"stop", agent).
    """

    name = "fake"

    def __init__(self) -> None:
        self.specs: dict[str, AgentSpec] = {}
        self.states: dict[str, ContainerStatus] = {}
        self.starts: dict[str, int] = {}
        self.fail_starts = False
        self.output: dict[str, list[bytes]] = {}  # what each "container" wrote
        self.calls: dict[str, int] = {}
        self.feeds: list[_FakeFeed] = []
        self.fail_watch = False
        self.start_delay_s = 0.0
        self.tell_starts = True  # False: a start event not (yet) delivered
        self.starting = 0
        self.max_starting = 0
        self.hold_listing: asyncio.Event | None = None
        self.log: list[tuple[str, str]] = []
        self._serial = 0

    def _count(self, method: str) -> None:
        self.calls[method] = self.calls.get(method, 0) + 1

    def _tell(self, agent: str, status: ContainerStatus) -> None:
        for feed in self.feeds:
            feed.put(StatusChange(agent, status))

    async def start(self, spec: AgentSpec) -> ContainerStatus:
        self._count("start")
        if self.fail_starts:
            raise BackendUnavailable("fake backend told to fail starts")
        self.log.append(("start", spec.name))
        self.starting += 1
        self.max_starting = max(self.max_starting, self.starting)
        try:
            if self.start_delay_s:
                await asyncio.sleep(self.start_delay_s)
        finally:
            self.starting -= 1
        self.log.append(("started", spec.name))
        self.specs[spec.name] = spec
        self.starts[spec.name] = self.starts.get(spec.name, 0) + 1
        self._serial += 1
        status = ContainerStatus("running", container_id=f"fake-{spec.name}-{self._serial}")
        old = self.states.get(spec.name)
        if old is not None and old.container_id and old.state == "running":
            self._tell(spec.name, ContainerStatus("exited", 137, container_id=old.container_id))
        self.states[spec.name] = status
        if self.tell_starts:
            self._tell(spec.name, status)
        return status

    async def stop(self, agent: str, timeout_s: float = 5.0) -> None:
        self._count("stop")
        self.log.append(("stop", agent))
        old = self.states.pop(agent, None)
        if old is not None and old.container_id:
            self._tell(agent, ContainerStatus("missing", container_id=old.container_id))

    async def status(self, agent: str) -> ContainerStatus:
        self._count("status")
        return self.states.get(agent, ContainerStatus("missing"))

    async def logs(self, agent: str, tail: int = 200) -> str:
        return b"".join(self.output.get(agent, [])[-tail:]).decode(errors="replace")

    async def open_logs(
        self,
        agent: str,
        *,
        tail: int | None = None,
        since: float | None = None,
        follow: bool = False,
    ) -> LogStream:
        if agent not in self.states:
            raise NoContainer(f"{agent} has no container")
        lines = self.output.get(agent, [])
        return _ListStream(lines if tail is None else lines[len(lines) - tail :] if tail else [])

    async def exec(self, agent: str, command: list[str], timeout_s: float = 30.0) -> ExecResult:
        return ExecResult(0, "")

    async def remove_others(self, keep: set[str]) -> list[str]:
        gone = sorted(set(self.states) - keep)
        for agent in gone:
            del self.states[agent]
        return gone

    async def statuses(self) -> dict[str, ContainerStatus]:
        self._count("statuses")
        snapshot = dict(self.states)
        if self.hold_listing is not None:
            await self.hold_listing.wait()
        return snapshot

    async def watch(self) -> StatusFeed:
        self._count("watch")
        if self.fail_watch:
            raise BackendUnavailable("fake backend told to fail watches")
        feed = _FakeFeed(self)
        self.feeds.append(feed)
        return feed

    async def close(self) -> None:
        self.states.clear()
        self.end_feeds()

    def crash(self, agent: str, exit_code: int = 137, *, tell: bool = True) -> None:
        old = self.states.get(agent)
        status = ContainerStatus(
            "exited", exit_code=exit_code, container_id=old.container_id if old else None
        )
        self.states[agent] = status
        if tell:
            self._tell(agent, status)

    def unhealthy(self, agent: str) -> None:
        old = self.states[agent]
        status = ContainerStatus("running", container_id=old.container_id, health="unhealthy")
        self.states[agent] = status
        self._tell(agent, status)

    def end_feeds(self) -> None:
        for feed in self.feeds:
            feed.put(None)
        self.feeds.clear()


class _FakeFeed:
    """The fake backend's status feed: what it was told, until it is ended or closed."""

    def __init__(self, backend: FakeBackend) -> None:
        self._backend = backend
        self._queue: asyncio.Queue[StatusChange | None] = asyncio.Queue()
        self.closed = False

    def put(self, change: StatusChange | None) -> None:
        self._queue.put_nowait(change)

    def __aiter__(self) -> _FakeFeed:
        return self

    async def __anext__(self) -> StatusChange:
        if self.closed:
            raise StopAsyncIteration
        change = await self._queue.get()
        if change is None:
            self.closed = True
            raise StopAsyncIteration
        return change

    async def aclose(self) -> None:
        self.closed = True
        if self in self._backend.feeds:
            self._backend.feeds.remove(self)
        self._queue.put_nowait(None)


class _ListStream:
    """The fake backend's log stream: the lines it holds, then the end (no follow)."""

    def __init__(self, lines: list[bytes]) -> None:
        self._lines = list(lines)
        self.closed = False

    def __aiter__(self) -> _ListStream:
        return self

    async def __anext__(self) -> bytes:
        if self.closed or not self._lines:
            raise StopAsyncIteration
        return self._lines.pop(0)

    async def aclose(self) -> None:
        self.closed = True
