"""A RuntimeBackend that runs the real agent runtime (`python -m agent_container`) as a
local process per agent, pointed at the agent's socket on the host, as a container would be.

For tests that need the real runtime's behaviour across a stop or restart (its long polls,
its SIGTERM handling) without Docker; tests/fleet/test_docker.py runs real containers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from legion.fleet.backend import AgentSpec, ContainerStatus, ExecResult


class ProcessBackend:
    name = "process"

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs_dir: Path | None = None

    async def start(self, spec: AgentSpec) -> ContainerStatus:
        await self.stop(spec.name)
        workspace = spec.data_dir / "workspace"
        log = open(spec.data_dir / "runtime.log", "ab")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent_container"],
            env={
                **os.environ,
                "LEGION_SOCKET": str(spec.socket_dir / "mesh.sock"),
                "LEGION_WORKSPACE": str(workspace),
            },
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        log.close()
        self.procs[spec.name] = proc
        return ContainerStatus("running", container_id=f"pid-{proc.pid}")

    async def stop(self, agent: str, timeout_s: float = 5.0) -> None:
        proc = self.procs.pop(agent, None)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, 5)

    async def status(self, agent: str) -> ContainerStatus:
        proc = self.procs.get(agent)
        if proc is None:
            return ContainerStatus("missing")
        code = proc.poll()
        if code is None:
            return ContainerStatus("running", container_id=f"pid-{proc.pid}")
        return ContainerStatus("exited", exit_code=code)

    async def logs(self, agent: str, tail: int = 200) -> str:
        return ""

    async def exec(self, agent: str, command: list[str], timeout_s: float = 30.0) -> ExecResult:
        return ExecResult(1, "exec is not supported by the process backend")

    async def remove_others(self, keep: set[str]) -> list[str]:
        return []

    async def close(self) -> None:
        for agent in list(self.procs):
            await self.stop(agent)
