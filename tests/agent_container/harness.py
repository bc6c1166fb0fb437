"""A real host (no containers) with the fake provider, and agent runtimes run in-process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_container.loop import AgentRuntime
from legion.config import parse_config
from legion.gateway.vault import Vault
from legion.host import Host
from legion.paths import Paths
from tests.conftest import control_client

PROVIDER_KEY = "sk-agent-runtime-test-5Hq8Zr2Kw"
TOKEN = "tok-agent-runtime-secret-9Vb3Lm7"


def config_text(base_url: str, mode: str = "chat", egress_port: int | None = None) -> str:
    egress = f'[egress]\nallow = ["127.0.0.1:{egress_port}"]\n' if egress_port else ""
    return f"""
[host]
visibility_timeout_s = 30

[llm.models.m]
model = "openai/fake"
api_base = "{base_url}"
credential = "provider"
input_cost_per_mtok = 1.0
output_cost_per_mtok = 1.0

[llm.models.mb]
model = "openai/fake-b"
api_base = "{base_url}"
credential = "provider"
input_cost_per_mtok = 1.0
output_cost_per_mtok = 1.0

{egress}
[teams.red]
description = "the red team"

[agents.alice]
model = "m"
mode = "{mode}"
role = "researcher"
team = "red"
system_prompt = "Be brief."
max_tool_rounds = 3
max_task_steps = 4
[agents.alice.permissions]
blackboard_read = ["**"]
blackboard_write = ["notes/**"]
can_message = ["bob"]
can_publish = ["news/**"]
can_subscribe = ["news/**"]
allowed_credentials = ["token"]
egress_hosts = ["127.0.0.1"]

[agents.bob]
model = "mb"
[agents.bob.permissions]
can_message = ["alice"]
can_subscribe = ["news/**"]
blackboard_read = ["notes/**"]
blackboard_write = ["notes/**"]
"""


def seed_vault(paths: Paths) -> None:
    paths.home.mkdir(parents=True, exist_ok=True)
    vault = Vault(paths.vault_db, paths.vault_key)
    vault.set("provider", PROVIDER_KEY, tier="system")
    # the loopback web server speaks plain http: the binding must allow it (issue 7)
    vault.set("token", TOKEN, tier="agent", bound_hosts=["127.0.0.1"], allow_http=True)
    vault.close()


@dataclass
class Fleet:
    host: Host
    paths: Paths
    workspaces: dict[str, Path]
    runtimes: dict[str, AgentRuntime] = field(default_factory=dict)


@asynccontextmanager
async def running_host(home: Path, text: str) -> AsyncIterator[Host]:
    paths = Paths.resolve(home)
    seed_vault(paths)
    async with Host.running(parse_config(text), paths) as host:
        yield host


@asynccontextmanager
async def runtime_task(runtime: AgentRuntime) -> AsyncIterator[asyncio.Task[None]]:
    """Run the runtime; at the end stop it as SIGTERM does: let it finish the item in hand."""
    task = asyncio.create_task(runtime.run())
    try:
        yield task
    finally:
        runtime.stop()
        try:
            await asyncio.wait_for(asyncio.shield(task), 5)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@asynccontextmanager
async def running_fleet(
    home: Path, text: str, agents: tuple[str, ...] = ("alice",), **runtime_options: Any
) -> AsyncIterator[Fleet]:
    """A host, plus one in-process runtime per agent in `agents` (workspace home/<name>-ws)."""
    async with running_host(home, text) as host, contextlib.AsyncExitStack() as stack:
        fleet = Fleet(host, host.paths, {a: home / f"{a}-ws" for a in agents})
        for agent in agents:
            runtime = AgentRuntime(
                socket_path=str(host.paths.agent_socket(agent)),
                workspace=str(fleet.workspaces[agent]),
                data_dir=str(home / f"{agent}-data"),
                identity_dir=str(identity_of(host, agent)),
                max_backoff_s=0.5,
                **runtime_options,
            )
            fleet.runtimes[agent] = runtime
            await stack.enter_async_context(runtime_task(runtime))
        yield fleet


def identity_of(host: Host, agent: str) -> Path:
    """The folder the host publishes the agent's bootstrap files in (mounted read-only at
    /etc/legion/identity in a container)."""
    from legion.fleet.identity import AgentFiles

    return AgentFiles.of(host.paths, agent).ensure()


async def send(host: Host, to: str, payload: Any) -> int:
    """Queue a message from the operator; returns the inbox item id."""
    async with control_client(host.paths) as operator:
        response = await operator.post("/v1/messages", json={"to": to, "payload": payload})
        response.raise_for_status()
        return int(response.json()["item_id"])


async def next_event(
    host: Host,
    match: Callable[[Any], bool],
    action: Callable[[], Awaitable[Any]] | None = None,
    timeout_s: float = 20,
) -> Any:
    """Subscribe to the host's events, run `action`, return the first event `match` accepts."""
    async with host.bus.subscribe() as sub:
        if action is not None:
            await action()
        async with asyncio.timeout(timeout_s):
            while True:
                event = await sub.get()
                if match(event):
                    return event


async def ask(host: Host, payload: Any, to: str = "alice", timeout_s: float = 20) -> Any:
    """Send a message from the operator and wait for the agent's reply event."""
    queued: list[int] = []

    async def go() -> None:
        queued.append(await send(host, to, payload))

    return await next_event(
        host,
        lambda e: e.type == "agent_reply" and bool(queued) and e.in_reply_to == queued[0],
        go,
        timeout_s,
    )


async def until(predicate: Callable[[], bool], timeout_s: float = 10) -> bool:
    """Wait for a condition (never a fixed sleep where a condition exists)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def tool_results(request_messages: list[dict[str, Any]]) -> list[str]:
    return [str(m["content"]) for m in request_messages if m["role"] == "tool"]
