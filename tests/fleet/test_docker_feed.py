"""The Docker backend's status feed and listing against a real engine (marker `docker`),
and the reading of engine events (pure)."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from pathlib import Path

import pytest

from legion.fleet.backend import AgentSpec, ContainerStatus, StatusChange
from legion.fleet.docker_backend import (
    DockerBackend,
    DockerStatusFeed,
    change_of_event,
    status_of_listing,
)


def event(action: str, cid: str = "c1", agent: str | None = "alice", **attrs: str) -> dict:
    labels = {"legion.agent": agent} if agent else {}
    return {
        "Type": "container",
        "Action": action,
        "Actor": {"ID": cid, "Attributes": {**labels, **attrs}},
    }


def test_issue_10_engine_events_become_status_changes() -> None:
    """issue 10: start, die (with its exit code, and the oom before it), health verdicts
    and destroy become StatusChange; other events and foreign containers are ignored."""
    oomed: OrderedDict[str, None] = OrderedDict()
    assert change_of_event(event("start"), oomed) == StatusChange(
        "alice", ContainerStatus("running", container_id="c1")
    )
    assert change_of_event(event("oom"), oomed) is None
    died = change_of_event(event("die", exitCode="137"), oomed)
    assert died == StatusChange(
        "alice", ContainerStatus("exited", 137, container_id="c1", error="out of memory")
    )
    assert not oomed  # remembered until its die only
    assert change_of_event(event("die", exitCode="1"), oomed) == StatusChange(
        "alice", ContainerStatus("exited", 1, container_id="c1")
    )
    sick = change_of_event(event("health_status: unhealthy"), oomed)
    assert sick is not None and sick.status.health == "unhealthy"
    gone = change_of_event(event("destroy"), oomed)
    assert gone is not None and gone.status.state == "missing"
    assert change_of_event(event("exec_start: sh"), oomed) is None
    assert change_of_event(event("die", agent=None), oomed) is None  # not one of ours
    assert change_of_event({"Action": "die"}, oomed) is None  # no actor at all
    for i in range(1000):  # oom memory stays bounded
        change_of_event(event("oom", cid=f"x{i}"), oomed)
    assert len(oomed) <= 256


def test_issue_10_listing_rows_become_statuses() -> None:
    """issue 10: one row of the engine's container list gives state, exit code, health."""
    up = status_of_listing({"Id": "a", "State": "running", "Status": "Up 3 minutes (unhealthy)"})
    assert (up.state, up.health, up.container_id) == ("running", "unhealthy", "a")
    dead = status_of_listing({"Id": "b", "State": "exited", "Status": "Exited (137) 2 seconds ago"})
    assert (dead.state, dead.exit_code) == ("exited", 137)
    made = status_of_listing({"Id": "c", "State": "created", "Status": "Created"})
    assert made.state == "created"
    odd = status_of_listing({"Id": "d", "State": "paused", "Status": "Up 1 second (Paused)"})
    assert odd.state == "exited"  # not serving: restarted, as before


@pytest.mark.docker
@pytest.mark.anyio
@pytest.mark.slow
async def test_issue_10_the_feed_reports_a_real_containers_death(
    home: Path, agent_image: str
) -> None:
    """issue 10: the feed reports a real container's start and its death by SIGKILL with
    code 137; the listing shows the same in one call; a removal is `destroy`."""
    import docker

    backend = DockerBackend(str(home), workers=2)
    (home / "data").mkdir()
    (home / "run").mkdir()
    spec = AgentSpec(
        name="feedy",
        image=agent_image,
        data_dir=home / "data",
        socket_dir=home / "run",
        uid=10001,
        gid=10001,
        memory_mb=64,
        cpus=0.2,
        pids=32,
    )
    feed = await backend.watch()
    assert isinstance(feed, DockerStatusFeed)
    try:
        status = await backend.start(spec)
        cid = status.container_id
        assert cid

        async def next_change() -> StatusChange:
            return await asyncio.wait_for(feed.__anext__(), 30)

        assert await next_change() == StatusChange(
            "feedy", ContainerStatus("running", container_id=cid)
        )
        listed = await backend.statuses()
        assert listed["feedy"].state == "running" and listed["feedy"].container_id == cid
        client = docker.from_env()
        try:
            client.containers.get(cid).kill()
        finally:
            client.close()
        died = await next_change()
        assert (died.agent, died.status.state, died.status.exit_code) == ("feedy", "exited", 137)
        assert died.status.container_id == cid
        listed = await backend.statuses()
        assert (listed["feedy"].state, listed["feedy"].exit_code) == ("exited", 137)
        await backend.stop("feedy")
        gone = await next_change()
        assert gone.status.state == "missing"
        assert await backend.statuses() == {}
    finally:
        await feed.aclose()
        await backend.stop("feedy")
        await backend.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(feed.__anext__(), 10)
