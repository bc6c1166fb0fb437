"""TUI fixtures: the app on a real host, embedded (in the test's loop) or attached (a real
`legion daemon`), with agent runtimes as processes against the fake provider."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from textual.command import CommandList
from textual.message import Message
from textual.pilot import Pilot

from legion.api.hostclient import open_host
from legion.fleet.backend import FakeBackend
from legion.paths import Paths
from tests.conftest import Daemon
from tests.fakes.provider import FakeProvider
from tests.fleetproc import agent_processes, fleet_config, prepare_home
from tui.app import LegionApp
from tui.messages import HostEvents


@dataclass
class Run:
    """A running app and what the test can look at."""

    app: LegionApp
    pilot: Pilot[Any]
    paths: Paths
    seen: list[Message] = field(default_factory=list)

    def events(self, kind: str | None = None, agent: str | None = None) -> list[Any]:
        """Host events the app received, in order (optionally of one type, for one agent)."""
        out = []
        for message in self.seen:
            if isinstance(message, HostEvents):
                for event in message.events:
                    if (kind is None or event.type == kind) and (
                        agent is None or getattr(event, "agent", None) == agent
                    ):
                        out.append(event)
        return out

    async def until(self, predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
        """Wait for a condition while the app runs (never a fixed sleep)."""
        async with asyncio.timeout(timeout_s):
            while not predicate():
                await self.pilot.pause(0.02)

    async def command(self, title: str) -> None:
        """Run a palette command by typing its title (Ctrl+P, the title, Enter)."""
        await self.pilot.press("ctrl+p")
        await self.until(lambda: self.app.screen.__class__.__name__ == "CommandPalette")
        await self.pilot.press(*title)

        def found() -> bool:
            commands = self.app.screen.query_one(CommandList)
            return commands.option_count > 0 and str(
                commands.get_option_at_index(0).prompt
            ).startswith(title)

        await self.until(found)  # the palette searches in a worker: wait for the best hit
        await self.pilot.press("enter")


Starter = Callable[..., Any]


@pytest.fixture(autouse=True)
def leaks_are_the_leakers() -> Iterator[None]:
    """Collect after each test: a socket, pipe or file a test left open is then reported
    (warnings are errors) by the test that left it, not by whichever test runs next."""
    yield
    gc.collect()


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider(chunk_chars=2, chunk_delay_s=0.01) as provider:
        yield provider


@pytest.fixture
def tui(home: Path, fake: FakeProvider, daemon: Callable[[], Daemon]) -> Starter:
    """`async with tui(mode, agents=(...), ...) as run:` the app on a real host."""

    @asynccontextmanager
    async def start(
        mode: str = "embedded",
        *,
        agents: tuple[str, ...] = ("alice",),
        runtimes: tuple[str, ...] | None = None,
        extra: str = "",
        backend: FakeBackend | None = None,
        keys: dict[str, str] | None = None,
        size: tuple[int, int] = (120, 40),
        config_text: str | None = None,
        first_run: bool = False,
        tune_collector: bool = False,
    ) -> AsyncIterator[Run]:
        paths = prepare_home(home, config_text or fleet_config(fake.base_url, agents, extra))
        if first_run:
            paths.config.unlink()
        if mode == "attached":
            daemon().start()
        runtime: Any = backend if backend is not None else "configured"
        app = LegionApp(
            lambda: open_host(paths, runtime=runtime),
            home=str(home),
            keys=keys,
            refresh_s=0.5,
            first_run=first_run,
            tune_collector=tune_collector,
        )
        seen: list[Message] = []
        try:
            async with app.run_test(size=size, message_hook=seen.append) as pilot:
                run = Run(app, pilot, paths, seen)
                await run.until(lambda: app.loaded.is_set() and app.subscribed.is_set())
                with agent_processes(paths, agents if runtimes is None else runtimes):
                    yield run
                await app.shutdown_host()
        finally:
            await app.shutdown_host()

    return start
