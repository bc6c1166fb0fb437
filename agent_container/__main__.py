"""`python -m agent_container`: run the agent until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys

from agent_container.loop import AgentRuntime


class _Json(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "ts": round(record.created, 3),
                "level": record.levelname.lower(),
                "msg": record.getMessage(),
            }
        )


async def main() -> None:
    runtime = AgentRuntime(
        socket_path=os.environ.get("LEGION_SOCKET", "/run/legion/mesh.sock"),
        workspace=os.environ.get("LEGION_WORKSPACE", "/data/workspace"),
    )
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await runtime.run()


if __name__ == "__main__":
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Json())
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    asyncio.run(main())
