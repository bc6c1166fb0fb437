"""issue 13: the TUI's browser panel on a real browser container (marker `docker`).

An agent's browser opens the loopback test site; the agent asks for a human on its socket
and waits; the TUI (embedded host, Docker runtime) notifies, shows the page and the reason,
`h` shows a VNC link that completes the RFB handshake, and `d` resumes the agent.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from legion.fleet.docker_backend import DockerBackend
from tests.browser.rfb import connect, rfb_handshake
from tests.conftest import agent_client
from tests.fakes.provider import FakeProvider
from tests.tui.test_browser_panel import (
    browser_config,
    cell,
    detail,
    open_panel,
    panel,
    select,
    toast,
)
from tui.screens.dialogs import FormScreen

pytestmark = [pytest.mark.docker, pytest.mark.anyio, pytest.mark.slow]


async def test_a_real_agent_asks_for_a_human_and_the_panel_hands_off_and_resumes(
    home: Path, browser_image: str, site: Any
) -> None:
    """issue 13, end to end: alice's real browser container opens the loopback site; she
    asks for a human on her socket and waits; the TUI notifies, the panel shows her page
    and the reason; `h` shows a working VNC link (noVNC on 127.0.0.1 with a token) and the
    `ssh -L` hint; `d` resumes her with the operator's note."""
    if shutil.which("websockify") is None:
        pytest.skip("needs websockify and novnc on the host: apt-get install websockify novnc")
    port = int(site.server_address[1])
    extra = f"""
[egress]
allow = ["127.0.0.1:{port}"]

[browser]
image = "{browser_image}"
vnc_port = 0
"""
    with FakeProvider() as fake:
        text = browser_config(fake.base_url, extra).replace(
            'backend = "none"', 'backend = "docker"'
        )
    text = text.replace(
        "[agents.alice.permissions]\n",
        '[agents.alice.permissions]\negress_hosts = ["127.0.0.1"]\n',
    )
    for name in ("alice", "bob", "carol"):
        text = text.replace(
            f'[agents.{name}]\nmodel = "m"', f'[agents.{name}]\nautostart = false\nmodel = "m"'
        )

    async def act(action: str, body: dict[str, Any]) -> Any:
        async with agent_client(run.paths, "alice", timeout=120) as client:
            response = await client.post(f"/v1/browser/{action}", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    async with panel(home, text, runtime=DockerBackend(str(home))) as (run, _host):
        screen = await open_panel(run)
        await select(run, screen, "alice")
        page = await act("navigate", {"url": f"http://127.0.0.1:{port}/login"})
        assert page["title"] == "Login"
        await run.until(lambda: cell(screen, "alice", "page") == "Login")
        assert cell(screen, "alice", "browser") == "running"
        await act("request_human", {"reason": "please log in"})
        waiter = asyncio.ensure_future(act("wait_human", {"wait_s": 30}))
        try:
            await run.until(lambda: toast(run.app, "alice asks for a human") is not None)
            await run.until(lambda: cell(screen, "alice", "human") == "WAITING")
            await run.pilot.press("h")
            await run.until(lambda: run.app.browser.board.views["alice"].link is not None, 120)
            link = run.app.browser.board.views["alice"].link
            assert link is not None
            await run.until(lambda: link.link in detail(screen).replace("\n", ""))
            assert f"ssh -N -L {link.port}:127.0.0.1:{link.port}" in detail(screen)
            token = re.search(r"token%3D([A-Za-z0-9_-]+)", link.link).group(1)  # type: ignore[union-attr]
            ws = await connect(link.port, f"/websockify?token={token}")
            assert not isinstance(ws, int), ws
            assert await rfb_handshake(ws) == (1280, 800)
            ws.close()
            assert not waiter.done()
            await run.pilot.press("d")
            await run.until(lambda: isinstance(run.app.screen, FormScreen))
            await run.pilot.press(*"logged in", "enter")
            resumed = await asyncio.wait_for(waiter, 30)
            assert resumed == {"state": "done", "reason": "please log in", "note": "logged in"}
            await run.until(lambda: run.app.browser.board.views["alice"].link is None)
            await run.until(lambda: link.link[:40] not in detail(screen))
        finally:
            waiter.cancel()
