"""The RuntimeBackend interface: start, stop, status, logs and exec of one agent.

Backends are called from the host's event loop; every method is async, and a backend
that blocks (the Docker SDK) runs its work in a worker thread (invariant 7).
"""

from __future__ import annotations

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

    async def close(self) -> None: ...


class FakeBackend:
    """An in-memory backend for unit tests of the supervisor: containers are just states.

    Tests drive it: `crash(agent)` makes a running agent exit, `fail_starts` makes starts
    fail. It never runs anything.
    """

    name = "fake"

    def __init__(self) -> None:
        self.specs: dict[str, AgentSpec] = {}
        self.states: dict[str, ContainerStatus] = {}
        self.starts: dict[str, int] = {}
        self.fail_starts = False
        self.output: dict[str, list[bytes]] = {}  # what each "container" wrote

    async def start(self, spec: AgentSpec) -> ContainerStatus:
        if self.fail_starts:
            raise BackendUnavailable("fake backend told to fail starts")
        self.specs[spec.name] = spec
        self.starts[spec.name] = self.starts.get(spec.name, 0) + 1
        status = ContainerStatus("running", container_id=f"fake-{spec.name}")
        self.states[spec.name] = status
        return status

    async def stop(self, agent: str, timeout_s: float = 5.0) -> None:
        self.states.pop(agent, None)

    async def status(self, agent: str) -> ContainerStatus:
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

    async def close(self) -> None:
        self.states.clear()

    def crash(self, agent: str, exit_code: int = 137) -> None:
        self.states[agent] = ContainerStatus("exited", exit_code=exit_code)


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
