"""`python -m browser_container`: the display, the proxy forwarder, the browser, then the
control connection to the host; exits when the host closes it (or on SIGTERM).

Environment (set by the host): `LEGION_BROWSER_DIR` (the socket folder, default
/run/legion-browser), `LEGION_BROWSER_ENGINE` (chromium | camoufox),
`LEGION_BROWSER_EXECUTABLE`, `LEGION_BROWSER_PROFILE` (default /profile),
`LEGION_BROWSER_VIEWPORT` (WxH), `LEGION_BROWSER_TIMEOUT_S`, `LEGION_BROWSER_SNAPSHOT_MAX`,
`LEGION_BROWSER_EXTRACT_MAX`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path

from browser_container.display import Display
from browser_container.driver import Driver, Settings
from browser_container.forwarder import Forwarder
from browser_container.service import serve

PROXY_PORT = 3128
DEFAULT_EXECUTABLES = {"chromium": "/usr/bin/chromium", "camoufox": "/opt/camoufox/camoufox"}
log = logging.getLogger("browser")


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def settings(env: dict[str, str]) -> Settings:
    engine = env.get("LEGION_BROWSER_ENGINE") or "chromium"
    width, _, height = (env.get("LEGION_BROWSER_VIEWPORT") or "1280x800").partition("x")
    return Settings(
        engine=engine,
        executable=env.get("LEGION_BROWSER_EXECUTABLE") or DEFAULT_EXECUTABLES.get(engine, ""),
        profile=env.get("LEGION_BROWSER_PROFILE") or "/profile",
        proxy=f"http://127.0.0.1:{PROXY_PORT}",
        width=int(width),
        height=int(height),
        timeout_s=float(env.get("LEGION_BROWSER_TIMEOUT_S") or 30),
        snapshot_max=int(env.get("LEGION_BROWSER_SNAPSHOT_MAX") or 20000),
        extract_max=int(env.get("LEGION_BROWSER_EXTRACT_MAX") or 20000),
    )


async def main(env: dict[str, str]) -> None:
    folder = Path(env.get("LEGION_BROWSER_DIR") or "/run/legion-browser")
    config = settings(env)
    os.makedirs(env.get("HOME") or "/tmp/home", exist_ok=True)
    display = Display(config.width, config.height, str(folder / "vnc.sock"))
    forwarder = Forwarder(str(folder / "proxy.sock"), PROXY_PORT)
    driver = Driver(config)
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    closing = [False]

    def on_signal() -> None:
        # SIGTERM (docker stop) while the browser is already closing (the host hung up
        # first) must not cut that short: closing is what writes cookies to the profile.
        if not closing[0]:
            task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        await display.start()
        await forwarder.start()
        await driver.start()
        from playwright._repo_version import version

        log.info("browser ready (%s %s)", config.engine, config.executable)
        await serve(str(folder / "control.sock"), driver, display, str(version))
    finally:
        closing[0] = True
        with contextlib.suppress(Exception):
            await driver.close()
        await forwarder.close()
        await display.close()


def run() -> int:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    logging.basicConfig(level="INFO", handlers=[handler], force=True)
    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(main(dict(os.environ)))
    return 0


if __name__ == "__main__":
    sys.exit(run())
