"""`legion logs` against a real agent container (marker `docker`): tail, since, follow,
readable records, hostile output, and the stream's resources freed when the reader goes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from legion.fleet.docker_backend import DockerBackend
from legion.host import Host
from tests.fakes.provider import FakeProvider
from tests.fleet.test_docker import fleet, web  # noqa: F401 - `web` is a fixture

pytestmark = [pytest.mark.docker, pytest.mark.anyio, pytest.mark.slow]

STARTED = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info +agent: agent runtime starting on "
    r"/run/legion/mesh\.sock$",
    re.MULTILINE,
)


def cli_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "LEGION_HOME"}


async def legion(home: Path, *args: str, timeout: float = 60) -> tuple[int, str, str]:
    """The CLI as a subprocess, awaited (the host serving it runs on this loop)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "legion",
        "--home",
        str(home),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=cli_env(),
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def write_to_container_output(host: Host, agent: str, text: str) -> None:
    """What an agent with a shell can do: write anything to its own container output."""
    result = await host.fleet.backend.exec(  # type: ignore[union-attr]
        agent, ["sh", "-c", 'printf "%b" "$1" > /proc/1/fd/2', "sh", text]
    )
    assert result.exit_code == 0, result.output


async def until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_legion_logs_reads_a_real_container(
    home: Path,
    agent_image: str,
    web: ThreadingHTTPServer,  # noqa: F811
) -> None:
    """issue 8: `legion logs NAME [-f] [--since] [--tail N] [--json]` over the control
    socket: the runtime's JSON lines made readable, exact JSON with --json, an agent's
    escape sequences neutralised, follow until interrupted, and nothing left open after."""
    port = int(web.server_address[1])
    async with FakeProvider() as fake, fleet(home, agent_image, fake, port) as host:
        backend = host.fleet.backend
        assert isinstance(backend, DockerBackend)

        rc, out, err = await legion(home, "logs", "alice")
        assert rc == 0, err
        assert STARTED.search(out), out

        rc, out, err = await legion(home, "logs", "alice", "--json")
        assert rc == 0, err
        records = [json.loads(line) for line in out.splitlines()]
        assert all(isinstance(r, dict) for r in records)
        assert any(str(r.get("msg")).startswith("agent runtime starting") for r in records)
        assert all(isinstance(r["ts"], float) for r in records if "raw" not in r)

        rc, out, _ = await legion(home, "logs", "alice", "--tail", "1")
        assert rc == 0 and len(out.splitlines()) == 1, out

        # Hostile output: terminal escapes from a shell inside the container.
        mark = time.time()
        await write_to_container_output(host, "alice", "\\033]0;owned\\007\\033[2Jsince-mark\\n")
        rc, out, err = await legion(home, "logs", "alice", "--since", repr(mark - 0.5))
        assert rc == 0, err
        assert "since-mark" in out and not STARTED.search(out), out
        assert "\x1b" not in out and "\x07" not in out
        assert "\\x1b]0;owned\\x07\\x1b[2Jsince-mark" in out
        rc, out, _ = await legion(home, "logs", "alice", "--json", "--since", repr(mark - 0.5))
        assert "\x1b" not in out
        assert {"msg": "\x1b]0;owned\x07\x1b[2Jsince-mark", "raw": True} in [
            json.loads(line) for line in out.splitlines()
        ]

        # Follow: new output arrives while it runs; Ctrl-C ends it; the stream is freed.
        follow = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "legion",
            "--home",
            str(home),
            "logs",
            "alice",
            "-f",
            "--tail",
            "0",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=cli_env(),
        )
        try:
            await until(lambda: backend._log_streams == 1, 20, "the follow stream to open")
            await write_to_container_output(host, "alice", "follow-mark\\n")
            assert follow.stdout is not None
            line = await asyncio.wait_for(follow.stdout.readline(), 20)
            assert line == b"follow-mark\n", line
            follow.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(follow.wait(), 20) == 0
        finally:
            if follow.returncode is None:
                follow.kill()
                await follow.wait()
        await until(lambda: backend._log_streams == 0, 20, "the follow stream to be freed")

        rc, _, err = await legion(home, "logs", "ghost")
        assert rc == 1 and "no agent named 'ghost'" in err, err


async def test_an_agent_printing_without_end_cannot_fill_the_disk(
    home: Path,
    agent_image: str,
    web: ThreadingHTTPServer,  # noqa: F811
) -> None:
    """issue 8 (attack pass): a shell in the container writes 48 MB of output; Docker keeps
    at most 3 x 10 MB of it, and `legion logs --tail` still answers at once."""
    import docker

    port = int(web.server_address[1])
    async with FakeProvider() as fake, fleet(home, agent_image, fake, port) as host:
        script = "head -c 48000000 /dev/zero | tr '\\0' x | fold -w 1000 > /proc/1/fd/1"
        result = await host.fleet.backend.exec(  # type: ignore[union-attr]
            "alice", ["sh", "-c", script], timeout_s=120
        )
        assert result.exit_code == 0, result.output
        client = docker.from_env()
        try:
            attrs = client.containers.get(host.fleet.runs["alice"].container_id).attrs
        finally:
            client.close()
        assert attrs["HostConfig"]["LogConfig"] == {
            "Type": "json-file",
            "Config": {"max-file": "3", "max-size": "10m"},
        }
        log_dir = Path(attrs["LogPath"]).parent
        if os.access(log_dir, os.R_OK):  # the engine's files (readable as root)
            kept = sum(p.stat().st_size for p in log_dir.glob("*-json.log*"))
            assert 10 * 2**20 < kept < 35 * 2**20, f"{kept} bytes of container log kept"
        started = time.monotonic()
        rc, out, err = await legion(home, "logs", "alice", "--tail", "3")
        assert rc == 0, err
        assert time.monotonic() - started < 15
        # The runtime may have logged after the flood (on a loaded machine its stdout was
        # blocked long enough to miss a heartbeat): what legion shows is the engine's own
        # last three lines, the flood's lines among them verbatim.
        client = docker.from_env()
        try:
            raw = client.containers.get(host.fleet.runs["alice"].container_id).logs(tail=3)
        finally:
            client.close()
        engine = raw.decode().splitlines()
        shown = out.splitlines()
        assert len(shown) == len(engine) == 3
        assert [a == "x" * 1000 for a in shown] == [b == "x" * 1000 for b in engine]
        if engine[-1] == "x" * 1000:  # nothing after the flood: it is all that is shown
            assert shown == ["x" * 1000] * 3
