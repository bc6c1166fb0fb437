"""First run without the TUI (issue 9): `legion setup`, interactive-free from flags, writes a
valid legion.toml and the key into the vault, never shows the key, refuses what it cannot
apply with every problem, and a host running on the home applies the result at once."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from legion.config import parse_config
from legion.fleet.backend import FakeBackend
from legion.gateway.vault import Vault
from legion.host import Host
from legion.paths import Paths
from legion.setup import Choice, SetupError, apply, config_text, problems
from tests.fakes.provider import FakeProvider

KEY = "sk-setup-Zq8Wn3Lp5Rt7Vx9Bc2Df4"


def legion(home: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "legion", "--home", str(home), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")},
    )


def test_setup_from_flags_writes_the_config_and_the_vault(home: Path) -> None:
    """issue 9: the scripted flow: valid legion.toml, the key in the vault (system tier),
    JSON out, and the key nowhere else."""
    run = legion(
        home,
        "setup", "--provider", "openai", "--model", "gpt-4o-mini", "--key-stdin",
        "--starter", "research-team", "--json",
        stdin=KEY + "\n",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["ok"] and out["agents"] == ["researcher", "writer"]
    assert out["credential"] == "openai" and out["model"] == "gpt-4o-mini"
    assert out["applied"] is False and "legion daemon" in out["next"]
    text = (home / "legion.toml").read_text()
    config = parse_config(text)
    assert config.llm.default_model == "gpt-4o-mini"
    assert config.llm.models["gpt-4o-mini"].credential == "openai"
    assert config.agents["writer"].permissions.blackboard_read == ["research/**"]
    assert config.agents["researcher"].team == config.agents["writer"].team == "research"
    assert oct((home / "legion.toml").stat().st_mode & 0o777) == "0o600"
    paths = Paths.resolve(home)
    vault = Vault(paths.vault_db, paths.vault_key)
    try:
        assert vault.system_secret("openai") == KEY
        assert [(i.name, i.tier) for i in vault.infos()] == [("openai", "system")]
    finally:
        vault.close()
    for shown in (run.stdout, run.stderr, text):
        assert KEY not in shown
    check = legion(home, "config", "check")
    assert check.returncode == 0, check.stderr


def test_setup_refuses_what_it_cannot_apply_and_changes_nothing(home: Path) -> None:
    """issue 9: a weak key, a missing URL, an unknown provider: every problem, exit 1,
    no file, no vault entry; without a terminal the missing flags are named."""
    weak = legion(home, "setup", "--provider", "openai", "--model", "m", "--key-stdin",
                  stdin="short\n")  # fmt: skip
    assert weak.returncode == 1 and "the key was not accepted" in weak.stderr
    assert "short" not in weak.stderr
    nourl = legion(home, "setup", "--provider", "compatible", "--model", "m", "--no-key")
    assert nourl.returncode == 1 and "--api-base http://127.0.0.1:11434/v1" in nourl.stderr
    unknown = legion(home, "setup", "--provider", "acme", "--model", "m", "--no-key", "--json")
    assert unknown.returncode == 1
    assert "unknown provider 'acme'" in json.loads(unknown.stdout)["problems"][0]
    nokey = legion(home, "setup", "--provider", "anthropic", "--model", "m", "--no-key")
    assert nokey.returncode == 1 and "needs an API key" in nokey.stderr
    missing = legion(home, "setup", "--key-stdin", stdin=KEY)
    assert missing.returncode == 2 and "--provider and --model are needed" in missing.stderr
    assert not (home / "legion.toml").exists() and not (home / "vault.db").exists()


def test_setup_never_replaces_a_config_unless_forced(home: Path, fake: FakeProvider) -> None:
    home.mkdir(exist_ok=True)
    (home / "legion.toml").write_text("# mine\n")
    args = ["setup", "--provider", "compatible", "--api-base", fake.base_url, "--model", "fake",
            "--no-key"]  # fmt: skip
    again = legion(home, *args)
    assert again.returncode == 1 and "legion is set up already" in again.stderr
    assert (home / "legion.toml").read_text() == "# mine\n"
    forced = legion(home, *args, "--force")
    assert forced.returncode == 0, forced.stderr
    assert (home / "legion.toml.bak").read_text() == "# mine\n"
    model = parse_config((home / "legion.toml").read_text()).llm.models["fake"]
    assert model.api_base == fake.base_url and model.credential is None
    assert model.input_cost_per_mtok == 0.0  # a compatible endpoint is free unless priced


@pytest.mark.anyio
async def test_a_running_host_applies_the_setup_and_starts_the_starter(
    home: Path, fake: FakeProvider
) -> None:
    """issue 9: `legion setup` on a home whose host runs: the host reloads; the starter's
    agents start; their LLM calls reach the endpoint with the key from the vault."""
    from tests.conftest import agent_client

    paths = Paths.resolve(home)
    backend = FakeBackend()
    async with Host.running(parse_config(""), paths, runtime=backend) as host:
        run = await asyncio.to_thread(
            legion,
            home,
            "setup", "--provider", "compatible", "--api-base", fake.base_url, "--model", "fake",
            "--key-stdin", "--json",
            stdin=KEY,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        out = json.loads(run.stdout)
        assert out["applied"] and out["started"] == ["assistant"] and out["next"] == ""
        assert backend.starts == {"assistant": 1} and "assistant" in host.config.agents
        async with agent_client(paths, "assistant") as assistant:
            reply = await assistant.post(
                "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
            )
        assert reply.status_code == 200, reply.text
        assert fake.requests[-1].headers["authorization"] == f"Bearer {KEY}"


def test_choices_are_checked_before_anything_is_written(tmp_path: Path) -> None:
    paths = Paths.resolve(tmp_path / "h")
    choice = Choice(provider="openai", model="gpt 4", key="qwzzq", daily_usd=float("inf"))
    found = problems(choice)
    assert any("not a model name" in p for p in found)
    assert any("the key was not accepted" in p for p in found)
    assert any("--daily-usd" in p for p in found)
    assert not any("qwzzq" in p for p in found)  # the key is never in a message
    with pytest.raises(SetupError):
        apply(paths, choice)
    assert not paths.home.exists()
    assert "qwzzq" not in repr(choice)
    # an odd model name still makes a valid alias and file
    odd = Choice(provider="compatible", model="Llama3.1:8b", api_base="http://127.0.0.1:1/v1")
    assert odd.alias == "llama3-1-8b"
    parse_config(config_text(odd))
    digits = Choice(provider="compatible", model="7b", api_base="http://127.0.0.1:1/v1")
    assert digits.alias[0].isalpha()
    parse_config(config_text(digits))


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        yield provider
