"""The control connection: this container dials the host's socket, says hello, then runs
the commands the host sends, one JSON object per line each way, in order."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any

from browser_container.display import Display
from browser_container.driver import Driver, Fault
from legion.wire.browser import Command, Hello, Outcome
from legion.wire.browser import Fault as WireFault

log = logging.getLogger("browser.service")

MAX_LINE = 1024 * 1024


async def serve(control: str, driver: Driver, display: Display, version: str) -> None:
    """Serve the host until it closes the connection (then the container exits)."""
    reader, writer = await asyncio.open_unix_connection(control, limit=MAX_LINE)
    hello = Hello(engine=driver.settings.engine, version=version, pid=os.getpid())
    writer.write(hello.model_dump_json().encode() + b"\n")
    await writer.drain()
    while True:
        try:
            line = await reader.readline()
        except (ConnectionError, ValueError):
            return
        if not line:
            return
        try:
            command = Command.model_validate_json(line)
        except ValueError as exc:
            log.warning("unreadable command from the host: %s", exc)
            return
        outcome = await run(command, driver, display)
        writer.write(outcome.model_dump_json().encode() + b"\n")
        await writer.drain()


async def run(command: Command, driver: Driver, display: Display) -> Outcome:
    started = time.perf_counter()
    try:
        result: dict[str, Any]
        if command.action == "vnc_start":
            await display.vnc_start()
            result = {}
        elif command.action == "vnc_stop":
            await display.vnc_stop()
            result = {}
        elif command.action == "state":
            result = await driver.state()
        else:
            result = await driver.run(command.action, command.args)
    except Fault as exc:
        return Outcome(
            id=command.id,
            ok=False,
            error=WireFault(code=exc.code, message=exc.message),
            elapsed_ms=(time.perf_counter() - started) * 1000,
        )
    except (TypeError, ValueError) as exc:
        return Outcome(
            id=command.id, ok=False, error=WireFault(code="bad_command", message=str(exc)[:500])
        )
    except Exception as exc:  # the browser itself failed: say so, keep serving
        log.exception("command %s failed", command.action)
        return Outcome(
            id=command.id,
            ok=False,
            error=WireFault(code="browser_error", message=f"{type(exc).__name__}: {exc}"[:500]),
        )
    return Outcome(
        id=command.id,
        ok=True,
        result=result,
        elapsed_ms=(time.perf_counter() - started) * 1000,
    )


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)
