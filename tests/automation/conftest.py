"""Shared pieces of the automation tests: an injectable clock, configs, a control client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from legion.config import parse_config
from legion.host import Host
from legion.paths import Paths
from tests.agent_container.harness import seed_vault


class Clock:
    """A clock the test moves by hand (`Host.running(..., clock=)`)."""

    def __init__(self, at: float) -> None:
        self.now = at

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def set(self, at: float) -> None:
        self.now = at


def at(text: str, tz: str = "UTC") -> float:
    """`2024-03-10 01:59` in `tz`, as a Unix time."""
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz)).timestamp()


def config(base_url: str = "http://127.0.0.1:9/v1", extra: str = "") -> str:
    return f"""
[automation]
timezone = "UTC"
max_jobs_per_agent = 2
min_interval_s = 1.0

[llm.models.m]
model = "openai/fake"
api_base = "{base_url}"
credential = "provider"
input_cost_per_mtok = 1.0
output_cost_per_mtok = 1.0

[agents.alice]
model = "m"
max_tool_rounds = 4
[agents.alice.permissions]
can_manage_cron = true
blackboard_read = ["**"]
blackboard_write = ["notes/**"]
can_message = ["bob"]
can_steer = ["bob"]

[agents.bob]
model = "m"
[agents.bob.permissions]
blackboard_read = ["notes/**"]
{extra}
"""


@asynccontextmanager
async def host_at(home: Path, text: str, clock: Clock | None = None) -> AsyncIterator[Host]:
    paths = Paths.resolve(home)
    seed_vault(paths)
    if clock is None:
        async with Host.running(parse_config(text), paths) as host:
            yield host
    else:
        async with Host.running(parse_config(text), paths, clock=clock) as host:
            yield host
