"""A fleet for client and TUI tests: legion.toml on the fake provider, the vault seeded, and
agent runtimes run as processes (`python -m agent_container`) against their sockets, as a
container would run them (`[runtime] backend = "none"`: no Docker)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from legion.gateway.vault import Vault
from legion.paths import Paths

PROVIDER_KEY = "sk-tui-test-provider-7Tq2Wm"


def fleet_config(
    base_url: str, agents: tuple[str, ...] = ("alice",), extra: str = "", max_tokens: int = 4096
) -> str:
    sections = "\n".join(
        f"""
[agents.{name}]
model = "m"
role = "helper"
[agents.{name}.budget]
daily_usd = 1.0
monthly_usd = 10.0
[agents.{name}.permissions]
blackboard_read = ["**"]
blackboard_write = ["notes/**"]
"""
        for name in agents
    )
    return f"""
[runtime]
backend = "none"

[llm]
fleet_daily_usd = 5.0
default_max_tokens = {max_tokens}

[llm.models.m]
model = "openai/fake"
api_base = "{base_url}"
credential = "provider"
input_cost_per_mtok = 1.0
output_cost_per_mtok = 1.0
{sections}
{extra}
"""


def prepare_home(home: Path, config_text: str) -> Paths:
    paths = Paths.resolve(home)
    home.mkdir(parents=True, exist_ok=True)
    (home / "legion.toml").write_text(config_text)
    vault = Vault(paths.vault_db, paths.vault_key)
    vault.set("provider", PROVIDER_KEY, tier="system")
    vault.close()
    return paths


@contextmanager
def agent_process(paths: Paths, agent: str) -> Iterator[subprocess.Popen[bytes]]:
    """The agent runtime as a process on `agent`'s socket (it retries until the host serves)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent_container"],
        env={
            **os.environ,
            "LEGION_SOCKET": str(paths.agent_socket(agent)),
            "LEGION_WORKSPACE": str(paths.home / f"{agent}-ws"),
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextmanager
def agent_processes(paths: Paths, agents: tuple[str, ...]) -> Iterator[None]:
    with ExitStack() as stack:
        for agent in agents:
            stack.enter_context(agent_process(paths, agent))
        yield
