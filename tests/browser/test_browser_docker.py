"""issue 13: the browser, end to end in real containers (marker `docker`).

A real host with the Docker runtime starts each agent's browser container on first use;
the tests drive it through the agents' own sockets (as the agent runtime does) against a
loopback test site opened in `[egress] allow`.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from legion.config import parse_config
from legion.fleet.docker_backend import DockerBackend
from legion.gateway.vault import Vault
from legion.host import Host
from legion.mesh import audit
from legion.paths import Paths
from tests.conftest import agent_client, control_client

pytestmark = [pytest.mark.docker, pytest.mark.anyio, pytest.mark.slow]

SITE_PASSWORD = "pw-browser-test-Zq81Lm3Nx"
OTHER_PASSWORD = "pw-browser-other-Rt5Kd9Wc2"


def config_text(browser_image: str, site_port: int, extra: str = "") -> str:
    return f"""
[egress]
allow = ["127.0.0.1:{site_port}"]

[browser]
image = "{browser_image}"
max_running = 2
vnc_port = 0
handoff_ttl_s = 120

[agents.alice]
autostart = false
[agents.alice.permissions]
can_use_browser = true
egress_hosts = ["127.0.0.1", "localhost", "169.254.169.254"]
allowed_credentials = ["site-pw", "other-pw"]

[agents.bob]
autostart = false
[agents.bob.permissions]
can_use_browser = true
egress_hosts = ["127.0.0.1"]

[agents.carol]
autostart = false
{extra}
"""


@asynccontextmanager
async def browsing_host(home: Path, browser_image: str, site_port: int) -> AsyncIterator[Host]:
    paths = Paths.resolve(home)
    paths.home.mkdir(parents=True, exist_ok=True)
    vault = Vault(paths.vault_db, paths.vault_key)
    vault.set("site-pw", SITE_PASSWORD, tier="agent", bound_hosts=["127.0.0.1"])
    vault.set("other-pw", OTHER_PASSWORD, tier="agent", bound_hosts=["accounts.example.org"])
    vault.close()
    config = parse_config(config_text(browser_image, site_port))
    async with Host.running(config, paths, runtime=DockerBackend(str(home))) as host:
        yield host


async def act(host: Host, agent: str, action: str, body: dict[str, Any] | None = None) -> Any:
    async with agent_client(host.paths, agent, timeout=120) as client:
        response = await client.post(f"/v1/browser/{action}", json=body or {})
    return response.status_code, response.json()


def ref_of(snapshot: str, pattern: str) -> str:
    for line in snapshot.splitlines():
        if re.search(pattern, line):
            match = re.search(r"\[ref=([a-z0-9]+)\]", line)
            if match:
                return match.group(1)
    raise AssertionError(f"no line matching {pattern!r} with a ref in:\n{snapshot}")


async def test_navigate_snapshot_click_type_and_read_the_result(
    home: Path, browser_image: str, site: ThreadingHTTPServer
) -> None:
    port = int(site.server_address[1])
    base = f"http://127.0.0.1:{port}"
    async with browsing_host(home, browser_image, port) as host:
        status, page = await act(host, "alice", "navigate", {"url": base + "/"})
        assert status == 200, page
        assert page["title"] == "Order form" and page["url"] == base + "/"
        status, snap = await act(host, "alice", "snapshot")
        assert status == 200, snap
        tree = snap["snapshot"]
        assert 'heading "Order"' in tree
        name = ref_of(tree, r'textbox "Name"')
        password = ref_of(tree, r'textbox "Password"')
        color = ref_of(tree, r'combobox "Color"')
        assert (await act(host, "alice", "type", {"ref": name, "text": "Ada"}))[0] == 200
        status, typed = await act(
            host, "alice", "type", {"ref": password, "text": "$CRED{site-pw}"}
        )
        assert status == 200, typed
        assert (await act(host, "alice", "select", {"ref": color, "value": "blue"}))[0] == 200
        status, snap = await act(host, "alice", "snapshot")
        assert SITE_PASSWORD not in snap["snapshot"]
        assert re.search(r'textbox "Password" \[ref=\w+\]: \[masked\]', snap["snapshot"]), snap
        assert 'textbox "Name"' in snap["snapshot"] and ": Ada" in snap["snapshot"]
        status, shot = await act(host, "alice", "screenshot")
        assert status == 200 and shot["png_base64"] and shot["width"] == 1280
        send = ref_of(snap["snapshot"], r'button "Send"')
        status, after = await act(host, "alice", "click", {"ref": send})
        assert status == 200, after
        assert after["title"] == "Thanks"
        status, text = await act(host, "alice", "extract")
        assert "Thanks Ada, you chose b." in text["text"]
        with site.lock:  # type: ignore[attr-defined]
            posted = [s for s in site.seen if s[0] == "POST"]  # type: ignore[attr-defined]
        assert posted and f"pw={SITE_PASSWORD}" in posted[-1][2]  # the host typed the value
        # a stale ref: the form is gone
        status, stale = await act(host, "alice", "click", {"ref": name})
        assert status == 422 and stale["error"]["code"] == "stale_ref", stale
        assert "new browser_snapshot" in stale["error"]["message"]
        status, back = await act(host, "alice", "back")
        assert status == 200 and back["title"] == "Order form"
        records = audit.query(host.store.conn, actor="alice")
        assert ("browser.credential", "allow") in {(r.action, r.decision) for r in records}
        assert any(r.action == "browser.egress" and r.target == "127.0.0.1" for r in records)
