"""`python -m agent_container`: run this container's agent until SIGTERM or SIGINT.

Environment:

* `LEGION_SOCKET`: the host socket (default /run/legion/mesh.sock);
* `LEGION_WORKSPACE`: the workspace folder (default /data/workspace);
* `LEGION_DATA`: where memory.db lives (default /data);
* `LEGION_IDENTITY`: the read-only folder of the bootstrap files (default
  /etc/legion/identity, where the host mounts them);
* `LEGION_SKILLS`: the read-only folder of the operator's skills (default
  /etc/legion/skills: `fleet/` and `agent/`);
* `LEGION_EGRESS_PROXY`: the host's egress proxy socket for local MCP servers with
  `egress = true` (set by the host only when it serves one);
* `LEGION_LOG_LEVEL`: debug, info (default), warning or error.

Logs go to stderr as JSON lines (the host collects container logs). SIGTERM stops the
work loop: at once when idle; a turn in progress gets STOP_GRACE_S to finish, then is
cancelled, unacked, so the next start handles that item again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys

from agent_container.loop import AgentRuntime
from agent_container.tools_skills import DEFAULT_SKILLS

log = logging.getLogger("agent")

DEFAULT_SOCKET = "/run/legion/mesh.sock"
DEFAULT_WORKSPACE = "/data/workspace"
DEFAULT_DATA = "/data"
DEFAULT_IDENTITY = "/etc/legion/identity"
# SIGTERM: an idle agent stops at once; a busy one gets this long to finish the item in
# hand (answered and acked: no redelivery), then is cancelled (the item comes back).
# `docker stop` waits 5 s before SIGKILL (legion/fleet/docker_backend.py).
STOP_GRACE_S = 2.0


class JsonLines(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg (and exc when there is one)."""

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


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    logging.getLogger("httpcore").setLevel(logging.WARNING)


async def main(env: dict[str, str]) -> None:
    runtime = AgentRuntime(
        socket_path=env.get("LEGION_SOCKET") or DEFAULT_SOCKET,
        workspace=env.get("LEGION_WORKSPACE") or DEFAULT_WORKSPACE,
        data_dir=env.get("LEGION_DATA") or DEFAULT_DATA,
        identity_dir=env.get("LEGION_IDENTITY") or DEFAULT_IDENTITY,
        skills_dir=env.get("LEGION_SKILLS") or DEFAULT_SKILLS,
        egress_proxy=env.get("LEGION_EGRESS_PROXY") or None,
    )
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if runtime.stopping:  # a second signal: no more grace
            task.cancel()
            return
        log.info("stopping: %s", "now" if runtime.status == "idle" else f"{STOP_GRACE_S:g}s grace")
        runtime.stop()
        loop.call_later(STOP_GRACE_S, task.cancel)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    log.info("agent runtime starting on %s", runtime.mesh.socket_path)
    with contextlib.suppress(asyncio.CancelledError):
        await runtime.run()
    log.info("agent runtime stopped")


def run() -> int:
    env = dict(os.environ)
    level = env.get("LEGION_LOG_LEVEL", "info")
    setup_logging(level if level.upper() in logging.getLevelNamesMapping() else "info")
    asyncio.run(main(env))
    return 0


if __name__ == "__main__":
    sys.exit(run())
