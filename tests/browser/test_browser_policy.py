"""issue 13: the browser's gate and files, without Docker: can_use_browser and
browser_actions on the agent socket (decided and audited before anything starts), typed
bodies, the operator's routes, and the no-follow handling of the browser's folders."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from legion.browser import files
from legion.config import parse_config
from legion.errors import ConfigError
from legion.fsutil import UnsafeEntry
from legion.mesh import audit
from legion.paths import Paths
from legion.wire.events import BrowserHandoff, parse_event
from tests.conftest import HostFactory, agent_client, control_client

pytestmark = pytest.mark.anyio

CONFIG = """
[agents.alice.permissions]
can_use_browser = true

[agents.bob.permissions]
can_use_browser = true
browser_actions = ["navigate", "snapshot"]

[agents.carol]
"""


async def test_an_agent_without_can_use_browser_is_refused_and_audited(
    running_host: HostFactory,
) -> None:
    async with running_host(CONFIG) as host, agent_client(host.paths, "carol") as carol:
        response = await carol.post("/v1/browser/navigate", json={"url": "https://example.org/"})
        assert response.status_code == 403
        error = response.json()["error"]
        assert error["code"] == "permission_denied" and "can_use_browser" in error["message"]
        for action in ("snapshot", "request_human", "wait_human"):
            body = {"reason": "x"} if action == "request_human" else {}
            assert (await carol.post(f"/v1/browser/{action}", json=body)).status_code == 403
        denied = [
            (r.action, r.target, r.decision) for r in audit.query(host.store.conn, actor="carol")
        ]
        assert denied == [
            ("browser", "navigate", "deny"),
            ("browser", "snapshot", "deny"),
            ("browser", "request_human", "deny"),
            ("browser", "request_human", "deny"),
        ]
        assert "carol" not in host.browsers.slots  # nothing was started or prepared
        assert not (host.paths.home / "browsers").exists()


async def test_browser_actions_narrow_what_an_agent_may_do(running_host: HostFactory) -> None:
    async with running_host(CONFIG) as host, agent_client(host.paths, "bob") as bob:
        response = await bob.post("/v1/browser/click", json={"ref": "e5"})
        assert response.status_code == 403
        assert "browser_actions" in response.json()["error"]["message"]
        # allowed: the policy passes, and this host has no container runtime to run it on
        response = await bob.post("/v1/browser/navigate", json={"url": "https://example.org/"})
        assert response.status_code == 409, response.text
        assert response.json()["error"]["code"] == "no_browser_runtime"
        decisions = [(r.target, r.decision) for r in audit.query(host.store.conn, actor="bob")]
        assert decisions == [("click", "deny"), ("navigate", "allow")]


async def test_bodies_are_typed_and_cannot_name_another_agent(running_host: HostFactory) -> None:
    async with running_host(CONFIG) as host, agent_client(host.paths, "alice") as alice:
        bad = [
            ("navigate", {"url": "https://example.org/", "agent": "bob"}),
            ("navigate", {"url": ""}),
            ("click", {"ref": "../../etc"}),
            ("click", {"ref": "e5", "action": "navigate"}),
            ("type", {"ref": "e1", "text": "x" * 10_001}),
            ("scroll", {"pages": 0}),
        ]
        for action, body in bad:
            response = await alice.post(f"/v1/browser/{action}", json=body)
            assert response.status_code == 422, (action, body, response.text)
        response = await alice.post("/v1/browser/navigate", json={"url": "file:///etc/passwd"})
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_url"
        response = await alice.post("/v1/browser/navigate", json={"url": "javascript:alert(1)"})
        assert response.status_code == 400
        document = (await alice.get("/v1/openapi.json")).json()
        click = document["paths"]["/v1/browser/click"]["post"]
        assert click["x-legion-permission"] == "can_use_browser"
        assert "/v1/browser/wait_human" in document["paths"]


async def test_the_operator_sees_every_browser(running_host: HostFactory) -> None:
    async with running_host(CONFIG) as host, control_client(host.paths) as operator:
        listing = (await operator.get("/v1/browsers")).json()
        assert listing["running"] == 0 and listing["max_running"] == 4
        states = {b["agent"]: (b["enabled"], b["state"]) for b in listing["browsers"]}
        assert states == {
            "alice": (True, "stopped"),
            "bob": (True, "stopped"),
            "carol": (False, "stopped"),
        }
        assert (await operator.post("/v1/browsers/nobody/stop")).status_code == 404
        done = await operator.post("/v1/browsers/alice/done", json={"note": "nothing"})
        assert done.status_code == 200 and done.json()["waiting_for_human"] is False
        handoff = await operator.post("/v1/browsers/alice/handoff")
        assert handoff.status_code == 409  # websockify missing, or no container runtime
        assert handoff.json()["error"]["code"] in ("vnc_unavailable", "no_browser_runtime")


def test_events_and_config() -> None:
    event = BrowserHandoff(at=1.0, agent="alice", state="requested", reason="log in")
    assert parse_event(event.model_dump_json()) == event
    with pytest.raises(ConfigError) as info:
        parse_config('[agents.a.permissions]\nbrowser_actions = ["fly"]\n')
    assert "browser_actions" in info.value.render()
    with pytest.raises(ConfigError) as info:
        parse_config('[browser]\nengine = "netscape"\n')
    assert "browser.engine" in info.value.render()


def test_socket_dir_is_made_afresh_without_following_a_planted_link(tmp_path: Path) -> None:
    home = Path(__import__("tempfile").mkdtemp(prefix="lgb-", dir="/tmp"))
    try:
        paths = Paths.resolve(home)
        paths.run.mkdir(parents=True)
        victim = tmp_path / "victim"
        victim.mkdir()
        (victim / "keep").write_text("precious")
        folder = files.fresh_socket_dir(paths, "alice", None)
        os.symlink(victim, folder / "control.sock")  # what a container could leave
        (folder / "junk").mkdir()
        os.symlink(victim, folder / "junk" / "deeper")
        again = files.fresh_socket_dir(paths, "alice", None)
        assert sorted(os.listdir(again)) == []
        assert (victim / "keep").read_text() == "precious"
        # the whole folder replaced by a link: unlinked, the target untouched
        import shutil

        shutil.rmtree(again)
        os.symlink(victim, again)
        files.fresh_socket_dir(paths, "alice", None)
        assert again.is_dir() and not again.is_symlink()
        assert (victim / "keep").read_text() == "precious"
    finally:
        __import__("shutil").rmtree(home, ignore_errors=True)


def test_profile_and_vnc_socket_refuse_links(tmp_path: Path) -> None:
    paths = Paths.resolve(tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    (tmp_path / "browsers" / "alice").mkdir(parents=True)
    os.symlink(victim, tmp_path / "browsers" / "alice" / "profile")
    with pytest.raises(UnsafeEntry):
        files.prepare_profile(paths, "alice", None)
    os.unlink(tmp_path / "browsers" / "alice" / "profile")
    assert files.prepare_profile(paths, "alice", None).is_dir()
    (files.profile_dir(paths, "alice") / "link").symlink_to(victim)
    (victim / "keep").write_text("precious")
    assert files.remove_profile(paths, "alice") is True
    assert (victim / "keep").read_text() == "precious"
    # x11vnc's socket: a link or a file there is refused, a real socket is opened
    sockets = tmp_path / "s"
    sockets.mkdir()
    (sockets / "file").write_text("x")
    os.symlink(sockets / "file", sockets / "link")
    for name in ("file", "link"):
        with pytest.raises(UnsafeEntry):
            files.open_socket_nofollow(sockets / name, os.getuid())
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sockets / "vnc.sock"))
    server.listen()
    fd = files.open_socket_nofollow(sockets / "vnc.sock", os.getuid())
    client = socket.socket(socket.AF_UNIX)
    client.connect(f"/proc/self/fd/{fd}")
    os.close(fd)
    client.close()
    server.close()
    with pytest.raises(UnsafeEntry):
        files.open_socket_nofollow(sockets / "vnc.sock", os.getuid() + 1)


BROWSER_WALL = """
import json, os, sys, types

# A stand-in playwright (the real one lives in the browser image only).
fake = types.ModuleType("playwright")
api = types.ModuleType("playwright.async_api")
for name in ("Browser", "BrowserContext", "Dialog", "Error", "Locator", "Page", "Playwright",
             "TimeoutError", "async_playwright"):
    setattr(api, name, type(name, (Exception,), {}))
sys.modules["playwright"] = fake
sys.modules["playwright.async_api"] = api

import browser_container.__main__, browser_container.service, browser_container.driver

forbidden = ["legion.host", "legion.config", "legion.store", "legion.gateway", "legion.mesh",
             "legion.browser", "legion.api", "agent_container", "httpx", "docker", "apsw"]
print(json.dumps(sorted(m for m in forbidden if m in sys.modules)))
"""


def test_the_browser_container_imports_only_the_wire_models() -> None:
    """issue 13: the browser container's code pulls in nothing of the host."""
    import json
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", BROWSER_WALL], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
