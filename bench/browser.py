"""The browser in a real container: click-by-ref round trip, cold start, idle memory.

* Click by ref: `POST /v1/browser/click` on the agent's socket (host -> control socket ->
  the container's service -> Playwright -> Chromium, and back), against the same
  Playwright call (`page.locator("aria-ref=eN").click()`) made directly in the same
  container, by a script run there on the same page, measured in the same run.
  Target: <= 1.5x (p50).
* Cold start: an agent's first `browser_navigate` (container created and started,
  Chromium launched, the page loaded through the host's proxy) against starting the same
  image bare (`python3 -c pass`). Reported, no target.
* Idle memory: the browser container's cgroup memory (minus page cache) after 60 s idle.
  Target: < 200 MiB.

Needs a Docker engine and the browser image (`legion images build --only browser`).
All traffic stays on loopback and Unix sockets.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bench._common import Report, heading, line, run_alone, short_home

TARGET_RATIO = 1.5
TARGET_IDLE_MIB = 200.0
PAGE = (
    "<!doctype html><html><head><title>Bench</title></head><body><h1>Bench</h1>"
    "<button onclick=\"document.getElementById('n').textContent++\">Count</button>"
    "<p id=n>0</p></body></html>"
)
CONFIG = """
[egress]
allow = ["127.0.0.1:{port}"]
{host}
[browser]
image = "{image}"
idle_timeout_s = 600
[agents.bench]
autostart = false
[agents.bench.permissions]
can_use_browser = true
egress_hosts = ["127.0.0.1"]
"""
DIRECT = r"""
import asyncio, json, re, time
from browser_container.__main__ import settings
from browser_container.driver import Driver
async def main():
    # A second browser in the same container, launched exactly as the service launches
    # its own (same binary, flags, display), then the bare Playwright call, timed.
    config = settings({{"LEGION_BROWSER_PROFILE": "/tmp/bench-direct-profile"}})
    driver = Driver(config)
    await driver.start()
    page = await driver.page()
    await page.goto({url!r})  # the same page, through the same proxy
    snap = await page.aria_snapshot(mode="ai")
    ref = re.search(r'button "Count" \[ref=(\w+)\]', snap).group(1)
    button = page.locator(f"aria-ref={{ref}}")
    for _ in range({warmup}):
        await button.click()
    samples = []
    for _ in range({count}):
        started = time.perf_counter()
        await button.click()
        samples.append(time.perf_counter() - started)
    print(json.dumps(samples))
    await driver.close()
asyncio.run(main())
"""


class Page(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        data = PAGE.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def pick_image(default: str) -> str:
    """`legion-browser:latest` when current, else the test suite's build of this source."""
    import docker

    from legion.fleet.browser_image import browser_image_is_current, browser_source_digest
    from legion.fleet.images import image_exists

    client = docker.from_env(timeout=10)
    try:
        if browser_image_is_current(client, default):
            return default
        own = f"legion-browser:src-{browser_source_digest()}"
        if image_exists(client, own):
            return own
        if image_exists(client, default):
            return default
        raise RuntimeError("no browser image; run `legion images build --only browser`")
    finally:
        client.close()


def bare_runs(image: str, count: int) -> list[float]:
    import docker

    client = docker.from_env()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        container = client.containers.create(
            image, entrypoint=["python3", "-c", "pass"], network_mode="none", user="10001"
        )
        container.start()
        container.wait()
        container.remove()
        samples.append(time.perf_counter() - started)
    client.close()
    return samples


async def measure(image: str, quick: bool) -> dict[str, Any]:
    import httpx

    from legion.config import parse_config
    from legion.fleet.docker_backend import DockerBackend
    from legion.host import Host
    from legion.paths import Paths

    count, warmup = (20, 5) if quick else (60, 10)
    idle_s = 10.0 if quick else 60.0
    starts = 2 if quick else 3
    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = int(server.server_address[1])
    out: dict[str, Any] = {"cold": []}
    try:
        with short_home() as home:
            durability = os.environ.get("LEGION_BENCH_DURABILITY", "full")
            host_section = f'[host]\ndurability = "{durability}"'
            config = parse_config(CONFIG.format(port=port, image=image, host=host_section))
            async with Host.running(
                config, Paths.resolve(home), runtime=DockerBackend(str(home))
            ) as host:
                transport = httpx.AsyncHTTPTransport(uds=str(host.paths.agent_socket("bench")))
                async with httpx.AsyncClient(
                    transport=transport, base_url="http://legion", timeout=120
                ) as agent:

                    async def post(action: str, body: dict[str, Any]) -> Any:
                        response = await agent.post(f"/v1/browser/{action}", json=body)
                        if response.status_code != 200:
                            raise RuntimeError(f"{action}: {response.text}")
                        return response.json()

                    for i in range(starts):
                        if i:
                            await host.browsers.stop("bench", "bench: cold start again")
                        started = time.perf_counter()
                        await post("navigate", {"url": f"http://127.0.0.1:{port}/"})
                        out["cold"].append(time.perf_counter() - started)
                    snap = (await post("snapshot", {}))["snapshot"]
                    ref = snap.split('button "Count" [ref=')[1].split("]")[0]
                    for _ in range(warmup):
                        await post("click", {"ref": ref})
                    ours = []
                    for _ in range(count):
                        started = time.perf_counter()
                        await post("click", {"ref": ref})
                        ours.append(time.perf_counter() - started)
                    out["ours"] = ours
                    runtime = host.browsers.runtime()
                    line(f"idling {idle_s:.0f} s before reading memory ...")
                    await asyncio.sleep(idle_s)
                    out["idle_bytes"] = await runtime.memory_bytes("bench")
                    script = DIRECT.format(
                        url=f"http://127.0.0.1:{port}/", warmup=warmup, count=count
                    )
                    out["direct"] = await asyncio.to_thread(
                        _exec_direct, host.browsers.slots["bench"].container_id, script
                    )
    finally:
        server.shutdown()
        server.server_close()
    return out


def _exec_direct(container_id: str | None, script: str) -> list[float]:
    import docker

    client = docker.from_env(timeout=300)
    try:
        container = client.containers.get(container_id)
        code, output = container.exec_run(
            ["python3", "-c", script], environment={"DISPLAY": ":99", "HOME": "/tmp/home"}
        )
    finally:
        client.close()
    text = output.decode(errors="replace")
    if code != 0:
        raise RuntimeError(f"the direct Playwright script failed: {text[-1500:]}")
    samples: list[float] = json.loads(text.strip().splitlines()[-1])
    return samples


def run(quick: bool = False, profile: Any = None, image: str = "legion-browser:latest") -> Report:
    report = Report("browser")
    heading("browser: click-by-ref round trip, cold start and idle memory of a real browser")
    try:
        image = pick_image(image)
    except Exception as exc:
        report.check("browser", False, f"not run: needs a Docker engine and {image} ({exc})")
        return report
    line(f"image {image}")
    bare = bare_runs(image, 3)
    result = asyncio.run(measure(image, quick))
    ours_p50 = statistics.median(result["ours"])
    direct_p50 = statistics.median(result["direct"])
    line(f"direct Playwright click in the container: p50 {direct_p50 * 1e3:.2f} ms")
    line(f"click through the agent socket:           p50 {ours_p50 * 1e3:.2f} ms")
    ratio = ours_p50 / direct_p50
    report.check(
        "click by ref vs direct Playwright",
        ratio <= TARGET_RATIO,
        f"{ratio:.2f}x (p50 {ours_p50 * 1e3:.1f} vs {direct_p50 * 1e3:.1f} ms; "
        f"target <= {TARGET_RATIO}x)",
    )
    bare_p50 = statistics.median(bare)
    cold = result["cold"]
    line(
        f"bare start of the image: p50 {bare_p50 * 1e3:.0f} ms; first browser_navigate: "
        + ", ".join(f"{s * 1e3:.0f}" for s in cold)
        + " ms"
    )
    report.check(
        "cold start (reported)",
        True,
        f"first navigate p50 {statistics.median(cold) * 1e3:.0f} ms vs bare "
        f"{bare_p50 * 1e3:.0f} ms ({statistics.median(cold) / bare_p50:.1f}x)",
    )
    idle = result.get("idle_bytes")
    if idle is None:
        report.check("idle memory", False, "could not read the container's memory")
    else:
        mib = idle / 2**20
        report.check(
            "idle memory",
            mib < TARGET_IDLE_MIB,
            f"{mib:.1f} MiB (target < {TARGET_IDLE_MIB:.0f} MiB)",
        )
    return report


if __name__ == "__main__":
    sys.exit(run_alone(run, __doc__, "browser"))
