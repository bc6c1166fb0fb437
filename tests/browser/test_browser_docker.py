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
        assert re.search(r"textbox \"Password\".*\[ref=\w+\]: \[masked\]", snap["snapshot"]), snap[
            "snapshot"
        ]
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


async def denied_egress(host: Host, agent: str) -> list[tuple[str, int]]:
    return [
        (r.target, int(r.detail["port"]))
        for r in audit.query(host.store.conn, actor=agent)
        if r.action == "browser.egress" and r.decision == "deny"
    ]


async def until(predicate: Any, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def test_the_browser_cannot_reach_what_the_policy_refuses(
    home: Path, browser_image: str, site: ThreadingHTTPServer
) -> None:
    """A loopback port not allowed, the metadata address, a name resolving to loopback, and
    HTTP and JavaScript redirects from the allowed site to refused addresses: all blocked
    at the host's proxy, audited, and reported to the agent."""
    from tests.browser.conftest import Site
    from tests.conftest import loopback_server

    port = int(site.server_address[1])
    base = f"http://127.0.0.1:{port}"
    with loopback_server(Site) as hidden:
        hidden.seen = []  # type: ignore[attr-defined]
        hidden.lock = __import__("threading").Lock()  # type: ignore[attr-defined]
        other = int(hidden.server_address[1])
        async with browsing_host(home, browser_image, port) as host:
            cases = [
                (f"http://127.0.0.1:{other}/", ("127.0.0.1", other)),
                ("http://169.254.169.254/latest/meta-data/", ("169.254.169.254", 80)),
                (f"http://localhost:{other}/", ("localhost", other)),
            ]
            for url, expected in cases:
                status, body = await act(host, "alice", "navigate", {"url": url})
                assert status == 422, body
                assert body["error"]["code"] == "navigation_failed"
                assert "the host refused" in body["error"]["message"], body
                assert expected in await denied_egress(host, "alice")
            # an HTTP redirect from the allowed site to the metadata address
            target = "http://169.254.169.254/latest/meta-data/iam"
            status, body = await act(
                host, "alice", "navigate", {"url": f"{base}/redirect?to={target}"}
            )
            assert status == 422 and "the host refused" in body["error"]["message"], body
            # a JavaScript redirect from the allowed site to a refused loopback port
            before = len(await denied_egress(host, "alice"))
            status, body = await act(
                host,
                "alice",
                "navigate",
                {"url": f"{base}/jsredirect?to=http://127.0.0.1:{other}/js"},
            )
            denied: list[tuple[str, int]] = []

            async def refreshed() -> bool:
                denied[:] = await denied_egress(host, "alice")
                return len(denied) > before

            deadline = time.monotonic() + 20
            while not await refreshed():
                assert time.monotonic() < deadline, "the JS redirect was never refused"
                await asyncio.sleep(0.1)
            assert denied[-1] == ("127.0.0.1", other)
            with hidden.lock:  # type: ignore[attr-defined]
                assert hidden.seen == []  # type: ignore[attr-defined]  # nothing got through
            records = audit.query(host.store.conn, actor="alice")
            reasons = [
                r.detail["reason"]
                for r in records
                if r.action == "browser.egress" and r.decision == "deny"
            ]
            assert any("cloud metadata address" in r for r in reasons)
            assert any("loopback address" in r for r in reasons)


async def test_browsers_are_isolated_and_gated(
    home: Path, browser_image: str, site: ThreadingHTTPServer
) -> None:
    """Alice's cookie is invisible to Bob's browser and survives a restart of hers; Carol
    (no can_use_browser) is refused and audited; a $CRED{} typed on a page of a host the
    credential is not bound to is refused (audited) and nothing is typed."""
    port = int(site.server_address[1])
    base = f"http://127.0.0.1:{port}"
    async with browsing_host(home, browser_image, port) as host:
        assert (await act(host, "alice", "navigate", {"url": f"{base}/setcookie?v=alice1"}))[
            0
        ] == 200
        status, page = await act(host, "alice", "navigate", {"url": f"{base}/showcookie"})
        _, text = await act(host, "alice", "extract")
        assert "cookie=[who=alice1]" in text["text"]
        status, page = await act(host, "bob", "navigate", {"url": f"{base}/showcookie"})
        assert status == 200, page
        _, text = await act(host, "bob", "extract")
        assert "cookie=[]" in text["text"], text
        # a restart keeps the profile
        async with control_client(host.paths) as operator:
            stopped = (await operator.post("/v1/browsers/alice/stop")).json()
            assert stopped["state"] == "stopped", stopped
        await act(host, "alice", "navigate", {"url": f"{base}/showcookie"})
        _, text = await act(host, "alice", "extract")
        assert "cookie=[who=alice1]" in text["text"]
        # carol may not use a browser
        status, body = await act(host, "carol", "navigate", {"url": f"{base}/"})
        assert status == 403 and body["error"]["code"] == "permission_denied", body
        assert "can_use_browser" in body["error"]["message"]
        assert "carol" not in host.browsers.slots or host.browsers.slots["carol"].state == "stopped"
        denied = [r for r in audit.query(host.store.conn, actor="carol") if r.decision == "deny"]
        assert [(r.action, r.target) for r in denied] == [("browser", "navigate")]
        # a credential bound to another host
        await act(host, "alice", "navigate", {"url": f"{base}/login"})
        _, snap = await act(host, "alice", "snapshot")
        field = ref_of(snap["snapshot"], r'textbox "Secret"')
        status, body = await act(host, "alice", "type", {"ref": field, "text": "$CRED{other-pw}"})
        assert status == 403 and body["error"]["code"] == "credential_denied", body
        assert "accounts.example.org" in body["error"]["message"]
        _, snap = await act(host, "alice", "snapshot")
        assert OTHER_PASSWORD not in snap["snapshot"]
        assert re.search(r'textbox "Secret" \[ref=\w+\]$', snap["snapshot"], re.M), snap["snapshot"]
        (refused,) = [
            r
            for r in audit.query(host.store.conn, actor="alice")
            if r.action == "browser.credential"
        ]
        assert refused.decision == "deny" and refused.target == "other-pw"
        assert refused.detail["origin"] == base
        # two browsers ran, each its own container
        listing = host.browsers.list()
        assert listing.running == 2
        assert {b.agent for b in listing.browsers if b.state == "running"} == {"alice", "bob"}
        # a reload that revokes bob's browser stops it
        revoked = config_text(browser_image, port).replace(
            "[agents.bob.permissions]\ncan_use_browser = true",
            "[agents.bob.permissions]\ncan_use_browser = false",
        )
        await host.apply_config(parse_config(revoked))
        assert host.browsers.slots["bob"].state == "stopped"
        assert host.browsers.slots["bob"].reason == "can_use_browser was revoked"
        assert host.browsers.slots["alice"].state == "running"


async def test_browser_containers_are_hardened(
    home: Path, browser_image: str, site: ThreadingHTTPServer
) -> None:
    import docker

    port = int(site.server_address[1])
    async with browsing_host(home, browser_image, port) as host:
        assert (await act(host, "alice", "navigate", {"url": f"http://127.0.0.1:{port}/"}))[
            0
        ] == 200
        client = docker.from_env()
        try:
            attrs = client.containers.get(host.browsers.slots["alice"].container_id).attrs
            probe = client.containers.get(host.browsers.slots["alice"].container_id).exec_run(
                [
                    "python3",
                    "-c",
                    "import os, json; print(json.dumps([sorted(os.listdir('/sys/class/net')), "
                    "sorted(os.listdir('/run/legion-browser')), os.getuid(), "
                    "os.path.exists('/data')]))",
                ]
            )
        finally:
            client.close()
        hc = attrs["HostConfig"]
        assert attrs["Config"]["User"] == "10001:10001"
        assert hc["CapDrop"] == ["ALL"] and "no-new-privileges" in hc["SecurityOpt"]
        assert hc["ReadonlyRootfs"] is True and hc["NetworkMode"] == "none"
        assert "noexec" in hc["Tmpfs"]["/tmp"]
        assert hc["ShmSize"] == 256 * 2**20
        assert sorted(hc["Binds"]) == sorted(
            [
                f"{home}/browsers/alice/profile:/profile:rw",
                f"{home}/run/browsers/alice:/run/legion-browser:rw",
            ]
        )
        import json

        interfaces, sockets, uid, has_data = json.loads(
            probe.output.decode().strip().splitlines()[-1]
        )
        assert interfaces == ["lo"] and uid == 10001 and has_data is False
        assert sorted(sockets) == ["control.sock", "proxy.sock"]
        env = "\n".join(attrs["Config"]["Env"])
        assert SITE_PASSWORD not in env and OTHER_PASSWORD not in env


async def test_the_vnc_link_reaches_the_browser_with_its_token_only(
    home: Path, browser_image: str, site: ThreadingHTTPServer
) -> None:
    """noVNC through websockify on 127.0.0.1: the RFB handshake completes with the link's
    token; without it, with a wrong one, and after expiry it does not. The agent waiting
    in browser_request_human resumes on `done`."""
    import shutil

    from tests.browser.rfb import connect, rfb_handshake

    if shutil.which("websockify") is None:
        pytest.skip("needs websockify and novnc on the host: apt-get install websockify novnc")
    port = int(site.server_address[1])
    offset = [0.0]
    paths = Paths.resolve(home)
    config = parse_config(config_text(browser_image, port))
    async with Host.running(
        config, paths, runtime=DockerBackend(str(home)), clock=lambda: time.time() + offset[0]
    ) as host:
        assert (await act(host, "alice", "navigate", {"url": f"http://127.0.0.1:{port}/"}))[
            0
        ] == 200
        async with host.bus.subscribe() as events:
            status, asked = await act(host, "alice", "request_human", {"reason": "please log in"})
            assert status == 200 and asked["state"] == "waiting"
            waiter = asyncio.create_task(act(host, "alice", "wait_human", {"wait_s": 30}))
            async with control_client(host.paths) as operator:
                listing = (await operator.get("/v1/browsers")).json()
                (alice,) = [b for b in listing["browsers"] if b["agent"] == "alice"]
                assert alice["waiting_for_human"] and alice["human_reason"] == "please log in"
                handoff = (await operator.post("/v1/browsers/alice/handoff")).json()
                assert handoff["link"].startswith(f"http://127.0.0.1:{handoff['port']}/vnc.html")
                assert f"-L {handoff['port']}:127.0.0.1:{handoff['port']}" in handoff["ssh_hint"]
                token = re.search(r"token%3D([A-Za-z0-9_-]+)", handoff["link"]).group(1)  # type: ignore[union-attr]
                vnc = handoff["port"]
                ws = await connect(vnc, f"/websockify?token={token}")
                assert not isinstance(ws, int), ws
                assert await rfb_handshake(ws) == (1280, 800)
                ws.close()
                for path in ("/websockify", "/websockify?token=wrong-token"):
                    refused = await connect(vnc, path)
                    if not isinstance(refused, int):
                        with pytest.raises(
                            (ConnectionError, asyncio.IncompleteReadError, TimeoutError)
                        ):
                            await rfb_handshake(refused)
                        refused.close()
                # the link expires
                offset[0] += config.browser.handoff_ttl_s + 1
                while True:
                    event = await asyncio.wait_for(events.get(), 20)
                    if event.type == "browser_handoff" and event.state == "expired":
                        break
                late = await connect(vnc, f"/websockify?token={token}")
                if not isinstance(late, int):
                    with pytest.raises(
                        (ConnectionError, asyncio.IncompleteReadError, TimeoutError)
                    ):
                        await rfb_handshake(late)
                    late.close()
                assert not waiter.done()
                done = (
                    await operator.post("/v1/browsers/alice/done", json={"note": "logged in"})
                ).json()
                assert done["waiting_for_human"] is False
            status, resumed = await asyncio.wait_for(waiter, 30)
            assert status == 200 and resumed == {
                "state": "done",
                "reason": "please log in",
                "note": "logged in",
            }
        actions = [
            (r.actor, r.action)
            for r in audit.query(host.store.conn)
            if r.action.startswith("browser.")
        ]
        assert ("alice", "browser.human_requested") in actions
        assert ("operator", "browser.handoff_opened") in actions
        assert ("operator", "browser.vnc_connect") in actions
        assert ("host", "browser.handoff_expired") in actions
        assert ("operator", "browser.handoff_done") in actions


async def test_a_real_agent_browses_with_its_tools(
    home: Path, agent_image: str, browser_image: str, site: ThreadingHTTPServer
) -> None:
    """A real agent container, the fake provider scripting its tool calls: navigate and
    snapshot in one turn; type, select, click by ref and read the result page in the next.
    Page content reaches the model marked as untrusted."""
    import json

    from tests.fakes.provider import FakeProvider, Reply, ToolCall
    from tests.fleet.test_docker import reply_to, until_polling

    port = int(site.server_address[1])
    base = f"http://127.0.0.1:{port}"
    async with FakeProvider() as fake:
        extra = f"""
[runtime]
image = "{agent_image}"

[llm.models.m]
model = "openai/fake"
api_base = "{fake.base_url}"
input_cost_per_mtok = 0.0
output_cost_per_mtok = 0.0

[agents.dora]
model = "m"
[agents.dora.permissions]
can_use_browser = true
egress_hosts = ["127.0.0.1"]
"""
        paths = Paths.resolve(home)
        config = parse_config(config_text(browser_image, port, extra))
        async with Host.running(config, paths, runtime=DockerBackend(str(home))) as host:
            await until_polling(host, "dora")
            fake.script(
                Reply(tool_calls=[ToolCall("browser_navigate", {"url": base + "/"})]),
                Reply(tool_calls=[ToolCall("browser_snapshot", {})]),
                Reply(content="I see the order form."),
                model="fake",
            )
            first = await reply_to(host, "dora", "open the order form")
            assert first.text == "I see the order form."
            tool_results = [
                m["content"] for m in fake.requests[-1].body["messages"] if m["role"] == "tool"
            ]
            tree = tool_results[-1]
            assert tree.startswith("page: Order form <" + base + "/>")
            assert "[untrusted page content from " in tree and tree.endswith(
                "[end of untrusted page content]"
            )
            name = ref_of(tree, r'textbox "Name"')
            color = ref_of(tree, r'combobox "Color"')
            send = ref_of(tree, r'button "Send"')
            fake.script(
                Reply(tool_calls=[ToolCall("browser_type", {"ref": name, "text": "Grace"})]),
                Reply(tool_calls=[ToolCall("browser_select", {"ref": color, "value": "blue"})]),
                Reply(tool_calls=[ToolCall("browser_click", {"ref": send})]),
                Reply(tool_calls=[ToolCall("browser_extract", {})]),
                Reply(tool_calls=[ToolCall("browser_screenshot", {})]),
                Reply(content="Ordered."),
                model="fake",
            )
            second = await reply_to(host, "dora", "order a blue one for Grace")
            assert second.text == "Ordered."
            messages = fake.requests[-1].body["messages"]
            results = [m["content"] for m in messages if m["role"] == "tool"]
            assert any("Thanks Grace, you chose b." in r for r in results), json.dumps(results)
            shot = results[-1]
            match = re.search(r"saved (browser/screenshot-[\w.-]+\.png) \((\d+) bytes", shot)
            assert match, shot
            saved = paths.agent_data("dora") / "workspace" / match.group(1)
            assert saved.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert saved.stat().st_size == int(match.group(2))
            actions = [
                r.target
                for r in audit.query(host.store.conn, actor="dora")
                if r.action == "browser"
            ]
            assert actions == [
                "navigate",
                "snapshot",
                "type",
                "select",
                "click",
                "extract",
                "screenshot",
            ]


async def test_browsers_are_capped_evicted_when_idle_and_stopped_after_the_idle_timeout(
    home: Path, browser_image: str, site: ThreadingHTTPServer
) -> None:
    """max_running = 1: a second agent's start is refused while the first waits for a
    human (never evicted then), and evicts it once it is idle; the idle timeout stops the
    second (the host's monotonic clock is advanced, the reaper does the rest)."""
    port = int(site.server_address[1])
    url = f"http://127.0.0.1:{port}/next"
    paths = Paths.resolve(home)
    text = config_text(browser_image, port).replace("max_running = 2", "max_running = 1")
    text = text.replace("[browser]\n", "[browser]\nidle_timeout_s = 60\n")
    async with Host.running(parse_config(text), paths, runtime=DockerBackend(str(home))) as host:
        offset = [0.0]
        host.browsers.monotonic = lambda: time.monotonic() + offset[0]
        assert (await act(host, "alice", "navigate", {"url": url}))[0] == 200
        assert (await act(host, "alice", "request_human", {"reason": "captcha"}))[0] == 200
        status, body = await act(host, "bob", "navigate", {"url": url})
        assert status == 429 and body["error"]["code"] == "browsers_busy", body
        async with control_client(host.paths) as operator:
            await operator.post("/v1/browsers/alice/done", json={})
        async with host.bus.subscribe() as events:
            assert (await act(host, "bob", "navigate", {"url": url}))[0] == 200
            states = {b.agent: b.state for b in host.browsers.list().browsers}
            assert states["alice"] == "stopped" and states["bob"] == "running"
            assert "make room for bob" in host.browsers.slots["alice"].reason
            offset[0] += 61
            while True:
                event = await asyncio.wait_for(events.get(), 20)
                if (
                    event.type == "browser_state"
                    and event.agent == "bob"
                    and event.state == "stopped"
                ):
                    break
            assert event.reason.startswith("idle for")
        stops = [
            (r.target, r.detail["reason"])
            for r in audit.query(host.store.conn, actor="host")
            if r.action == "browser.stop"
        ]
        assert [t for t, _ in stops] == ["alice", "bob"]


async def test_a_browser_killed_while_idle_is_noticed_and_started_again(
    home: Path, browser_image: str, site: ThreadingHTTPServer
) -> None:
    """issue 13: a browser container that died (OOM, a crash, `docker kill`) between two
    actions is noticed by the host (stopped, audited) and the next action starts a new
    one, with the same profile."""
    import docker

    port = int(site.server_address[1])
    async with browsing_host(home, browser_image, port) as host:
        url = f"http://127.0.0.1:{port}/setcookie?v=kept"
        assert (await act(host, "alice", "navigate", {"url": url}))[0] == 200
        old = host.browsers.slots["alice"].container_id
        async with host.bus.subscribe() as events:
            client = docker.from_env()
            try:
                client.containers.get(old).kill()
            finally:
                client.close()
            while True:
                event = await asyncio.wait_for(events.get(), 20)
                if event.type == "browser_state" and event.state == "stopped":
                    break
        assert event.reason == "the browser exited"
        status, page = await act(
            host, "alice", "navigate", {"url": f"http://127.0.0.1:{port}/showcookie"}
        )
        assert status == 200, page
        assert host.browsers.slots["alice"].container_id != old
