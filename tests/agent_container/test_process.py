"""`python -m agent_container` as a process: environment, JSON logs, SIGTERM, cold imports."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from legion.host import Host
from tests.agent_container.harness import ask, config_text, running_host, send, until
from tests.fakes.provider import FakeProvider, Reply

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def test_importing_the_runtime_does_not_load_pydantic(tmp_path: Path) -> None:
    """The first inbox poll goes out before pydantic is imported (docs/decisions.md)."""
    code = (
        "import sys\n"
        "from agent_container import AgentRuntime\n"
        f"AgentRuntime('/nonexistent.sock', {str(tmp_path / 'ws')!r})\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('pydantic', 'litellm', 'docker', 'textual') or m.startswith('legion.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@asynccontextmanager
async def agent_process(host: Host, workspace: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent_container",
        env={
            **os.environ,
            "LEGION_SOCKET": str(host.paths.agent_socket("alice")),
            "LEGION_WORKSPACE": str(workspace),
        },
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def terminate(proc: asyncio.subprocess.Process) -> tuple[int, float, list[str]]:
    """SIGTERM; (exit code, seconds it took, stderr lines)."""
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.stderr is not None
    err = await asyncio.wait_for(proc.stderr.read(), 10)
    code = await asyncio.wait_for(proc.wait(), 10)
    return code, time.monotonic() - started, err.decode().splitlines()


async def test_the_process_answers_logs_json_and_stops_on_sigterm(home: Path) -> None:
    async with (
        FakeProvider() as fake,
        running_host(home, config_text(fake.base_url)) as host,
        agent_process(host, home / "ws") as proc,
    ):
        reply = await ask(host, "hello from the operator", timeout_s=30)
        assert reply.text == "echo: hello from the operator"
        assert await until(lambda: host.inboxes.depth("alice") == 0)
        code, took, lines = await terminate(proc)  # idle in a long poll: stops at once
        assert code == 0 and took < 2, (code, took, lines)
        records = [json.loads(line) for line in lines]  # every line is JSON
        assert {"ts", "level", "logger", "msg"} <= set(records[0])
        assert any(r["msg"].startswith("started as alice") for r in records)
        assert records[-1]["msg"] == "agent runtime stopped"


async def test_sigterm_during_a_turn_leaves_the_item_for_the_next_start(home: Path) -> None:
    async with (
        FakeProvider() as fake,
        running_host(home, config_text(fake.base_url)) as host,
        agent_process(host, home / "ws") as proc,
    ):
        fake.script(Reply(content="too slow", first_byte_delay_s=30))
        await send(host, "alice", "take your time")
        assert await until(lambda: len(fake.requests) == 1, timeout_s=30)
        code, took, lines = await terminate(proc)
        assert code == 0 and 1.5 < took < 4.5  # the grace, then cancelled
        records = [json.loads(line) for line in lines]
        assert not [r for r in records if r["level"] in ("error", "critical")], records
        assert any("stopping" in r["msg"] for r in records)
        assert host.inboxes.depth("alice") == 1  # not acked: handled again on restart
