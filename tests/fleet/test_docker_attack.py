"""issue 7 (adversarial pass), from inside a real agent container: what an agent with a
shell does to its own volume, its socket folder and its socket, against the host's
restart, skills review, logs and purge; and a connection flood from inside the container
while the other agent and the operator are measured."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from legion.fleet import volume
from legion.paths import Paths
from tests.conftest import agent_client, control_client
from tests.fakes.provider import FakeProvider
from tests.fleet.test_docker import docker_exec, fleet, until_polling, web  # noqa: F401

pytestmark = [pytest.mark.docker, pytest.mark.anyio, pytest.mark.slow]

PLANT = r"""
import os, signal
os.makedirs("/data/workspace/skills/fifo", exist_ok=True)
os.mkfifo("/data/workspace/skills/fifo/SKILL.md")
os.symlink(VICTIM, "/data/workspace/skills/linked")
os.makedirs("/data/workspace/skills/deep/x", exist_ok=True)
os.symlink(VICTIM + "/passwd", "/data/workspace/skills/deep/SKILL.md")
os.symlink(VICTIM, "/data/workspace/host-etc")
os.mkfifo("/data/memory-fifo")
os.unlink("/run/legion/mesh.sock")
os.symlink(VICTIM + "/passwd", "/run/legion/mesh.sock")
os.mkfifo("/run/legion/junk-fifo")
print("planted", os.getuid(), flush=True)
os.kill(-1, signal.SIGKILL)
"""


def snapshot(folder: Path) -> list[tuple[str, int, int, int, int]]:
    out = []
    for path in sorted([folder, *folder.rglob("*")]):
        st = os.lstat(path)
        out.append((str(path), st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), st.st_size))
    return out


async def test_issue_7_links_and_fifos_planted_from_a_container_are_never_followed(
    home: Path,
    agent_image: str,
    web: ThreadingHTTPServer,  # noqa: F811
) -> None:
    """issue 7 (adversarial pass): alice, as its own uid, replaces its socket with a link to
    a host file, leaves a FIFO in its socket folder, plants a FIFO and links to a host
    folder among its skills and in its volume, and kills its runtime. The automatic
    restart binds a fresh socket (the link goes to quarantine) and alice polls again; the
    operator's skills review lists the planted skills as problems (no hang on the FIFO, no
    read through a link); logs answer; the purge deletes the volume, unlinking the links;
    the host folder the links name is unchanged throughout."""
    victim = home.parent / f"{home.name}-victim"
    victim.mkdir(mode=0o755)
    (victim / "passwd").write_text("root:x:0:0\n")
    before = snapshot(victim)
    try:
        async with (
            FakeProvider() as fake,
            fleet(home, agent_image, fake, web.server_address[1]) as host,
        ):
            old = host.fleet.runs["alice"].container_id
            host.last_seen.pop("alice", None)
            _, output = await docker_exec(host, "alice", PLANT.replace("VICTIM", repr(str(victim))))
            # Restarted on its own, serving. (The dead runtime's parked poll ending also
            # marks alice as last seen: wait for the new container, then for its poll.)
            deadline = time.monotonic() + 90
            while host.fleet.runs["alice"].container_id == old:
                assert time.monotonic() < deadline, output
                await asyncio.sleep(0.05)
            changed = host.clock()
            while host.last_seen.get("alice", 0.0) < changed:  # the new runtime's first poll
                assert time.monotonic() < deadline, output
                await asyncio.sleep(0.05)
            sock = host.paths.agent_socket("alice")
            assert stat.S_ISSOCK(os.lstat(sock).st_mode)
            assert snapshot(victim) == before
            async with control_client(host.paths) as operator:
                listed = (await asyncio.wait_for(operator.get("/v1/skills"), 20)).json()
                own = {s["name"]: s for s in listed["skills"] if s["source"] != "fleet"}
                for name in ("fifo", "linked", "deep"):
                    assert own[name]["problem"], own
                logs = await asyncio.wait_for(operator.get("/v1/agents/alice/logs?tail=50"), 20)
                assert logs.status_code == 200
            assert snapshot(victim) == before
            async with agent_client(host.paths, "bob") as bob:
                assert (await bob.get("/v1/whoami")).json()["agent"] == "bob"
        # the purge (`legion agents rm --purge` with the host stopped): links unlinked only
        assert volume.remove(Paths.resolve(home), "alice") is True
        assert not os.path.lexists(Paths.resolve(home).agent_data("alice"))
        assert snapshot(victim) == before
    finally:
        shutil.rmtree(victim, ignore_errors=True)


async def test_issue_7_a_flood_from_inside_a_container_leaves_the_others_answering(
    home: Path,
    agent_image: str,
    web: ThreadingHTTPServer,  # noqa: F811
) -> None:
    """issue 7 (adversarial pass): alice's container runs the flooder (tests/api/flooder.py)
    against its own socket: 2000 connections, silent, half-sent heads and bodies trickled
    a byte at a time, reconnecting at once. Meanwhile bob's socket and the control socket
    are asked in turn; every answer comes, p99 under 50 ms."""
    source = (Path(__file__).parent.parent / "api" / "flooder.py").read_text()
    async with (
        FakeProvider() as fake,
        fleet(home, agent_image, fake, web.server_address[1]) as host,
    ):
        flood = asyncio.create_task(
            host.fleet.backend.exec(  # type: ignore[union-attr]
                "alice",
                ["python3", "-c", source, "/run/legion/mesh.sock", "10", "2000"],
                timeout_s=60,
            )
        )
        try:
            await asyncio.sleep(2.0)  # let the flood build up (it runs for 10 s)
            latencies: list[float] = []
            async with (
                agent_client(host.paths, "bob") as bob,
                control_client(host.paths) as operator,
            ):
                deadline = time.monotonic() + 6.0
                while time.monotonic() < deadline and not flood.done():
                    for client, path in ((bob, "/v1/whoami"), (operator, "/v1/status")):
                        started = time.perf_counter()
                        response = await client.get(path)
                        latencies.append((time.perf_counter() - started) * 1000)
                        assert response.status_code == 200
            result = await flood
        finally:
            if not flood.done():
                flood.cancel()
        stats = json.loads(result.output.strip().splitlines()[-1])
        latencies.sort()
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        print(
            f"\nflood from the container: {stats}; {len(latencies)} calls, p50 "
            f"{latencies[len(latencies) // 2]:.1f} ms, p99 {p99:.1f} ms, max {latencies[-1]:.1f} ms"
        )
        assert stats["attempted"] >= 2000  # the flood ran: at least every connection once
        assert p99 < 50.0, latencies[-20:]
