"""issue 8: `legion config check` catches an undefined model at its own key; `legion
doctor` checks every model an agent can reach for a credential and a price, and running
containers for a current image; `legion models ls` shows aliases, providers, prices,
credentials (stored or missing, never a value) and, with a host, cooldowns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from legion.config import parse_config
from legion.errors import ConfigError
from legion.gateway.vault import Vault
from legion.paths import Paths
from tests.conftest import Daemon
from tests.fakes.provider import FakeProvider, Reply

KEY = "sk-models-test-8Rt3Vn5Qx2Lp7Zw"
NO_DOCKER = "unix:///nonexistent/docker.sock"


def legion(
    home: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "legion", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DOCKER_HOST": NO_DOCKER, **(env or {})},
    )


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "legion.toml")
    return caught.value.problems


# --- config check ----------------------------------------------------------------------------


def test_an_agent_naming_a_model_when_none_is_defined_is_an_error() -> None:
    found = problems('[agents.a]\nrole = "x"\nmodel = "gpt-4o"\n')
    assert found == [
        "legion.toml:3: agents.a.model: `gpt-4o` is not a model alias (aliases: none defined); "
        "fix: add [llm.models.gpt-4o] or fix the name"
    ]


def test_each_model_problem_is_reported_on_its_own_line() -> None:
    text = (
        '[llm.models.m]\nmodel = "openai/x"\n\n'
        '[agents.a]\nmodel = "m"\nrole = "x"\n'
        'embedding_model = "emb"\n'
        'allowed_models = ["m", "nope"]\n'
    )
    found = problems(text)
    assert "legion.toml:7: agents.a.embedding_model: `emb` is not a model alias" in found[0]
    assert "legion.toml:8: agents.a.allowed_models: `nope` is not a model alias" in found[1]
    assert len(found) == 2


def test_config_check_cli_reports_the_undefined_model(home: Path) -> None:
    (home / "legion.toml").write_text('[agents.a]\nmodel = "ghost-model"\n')
    run = legion(home, "config", "check")
    assert run.returncode == 2 and "agents.a.model" in run.stderr and ":2:" in run.stderr


# --- doctor ----------------------------------------------------------------------------------

PRICED = """
[llm]
default_model = "main"

[llm.models.main]
model = "openai/gpt-4o-mini"
credential = "openai"
failover = ["backup"]

[llm.models.backup]
model = "anthropic/not-a-priced-model"
credential = "anthropic"

[llm.models.free]
model = "openai/local"
api_base = "http://127.0.0.1:9/v1"
input_cost_per_mtok = 0.0
output_cost_per_mtok = 0.0

[agents.a]
allowed_models = ["free"]
"""


def doctor(home: Path, *args: str) -> dict[str, dict[str, object]]:
    run = legion(home, "doctor", "--json", *args)
    return {c["name"]: c for c in json.loads(run.stdout)}


def test_doctor_names_each_reachable_model_without_a_key_or_a_price(home: Path) -> None:
    (home / "legion.toml").write_text(PRICED)
    checks = doctor(home, "--quick")
    assert checks["provider keys"]["ok"] is False
    assert "legion vault set openai --tier system" in str(checks["provider keys"]["fix"])
    main = checks["model main"]
    assert (
        not main["ok"] and "`openai`" in str(main["detail"]) and "used by a" in str(main["detail"])
    )
    # the failover hop is reachable too: no key and no price
    backup = [c for n, c in checks.items() if n == "model backup"]
    assert backup and not backup[0]["ok"]
    details = json.dumps(doctor(home, "--quick"))
    assert "no price is known for `backup`" in details and "input_cost_per_mtok" in details
    assert "model free" not in checks  # a free local model needs neither
    assert "docker engine" not in checks  # --quick: no Docker checks
    full = legion(home, "doctor")
    assert full.returncode == 1 and "fix: `legion vault set openai --tier system`" in full.stdout


def test_doctor_passes_the_models_once_keys_and_prices_are_there(home: Path) -> None:
    (home / "legion.toml").write_text(PRICED.replace('failover = ["backup"]', "failover = []"))
    paths = Paths.resolve(home)
    vault = Vault(paths.vault_db, paths.vault_key)
    vault.set("openai", KEY, tier="system")
    vault.close()
    checks = doctor(home, "--quick")
    assert checks["provider keys"]["ok"] and checks["models"]["ok"], checks
    assert "main" in str(checks["models"]["detail"]) and "free" in str(checks["models"]["detail"])
    assert legion(home, "doctor", "--quick").returncode == 0
    assert KEY not in json.dumps(checks)


def test_an_agent_tier_provider_key_is_the_wrong_tier(home: Path) -> None:
    (home / "legion.toml").write_text(PRICED.replace('failover = ["backup"]', "failover = []"))
    paths = Paths.resolve(home)
    vault = Vault(paths.vault_db, paths.vault_key)
    vault.set("openai", KEY, tier="agent", bound_hosts=["api.example.com"])
    vault.close()
    checks = doctor(home, "--quick")
    assert "agent credential" in str(checks["model main"]["detail"])
    assert "--tier system" in str(checks["model main"]["fix"])


@pytest.mark.docker
def test_doctor_flags_a_running_container_on_a_stale_image(home: Path, agent_image: str) -> None:
    import io

    import docker

    client = docker.from_env()
    stale = f"legion-agent:stale-test-{os.getpid()}"
    dockerfile = f"FROM {agent_image}\nLABEL org.legion.source=0000000000000000\n"
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=stale, network_mode="none")
    paths = Paths.resolve(home)
    container = client.containers.run(
        stale,
        entrypoint=["sleep", "60"],
        labels={"legion.home": str(paths.home), "legion.agent": "old"},
        network_mode="none",
        detach=True,
    )
    try:
        (home / "legion.toml").write_text(f'[runtime]\nimage = "{agent_image}"\n')
        run = subprocess.run(
            [sys.executable, "-m", "legion", "--home", str(home), "doctor", "--json"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        checks = {c["name"]: c for c in json.loads(run.stdout)}
        running = checks["running containers"]
        assert not running["ok"] and "old" in running["detail"]
        assert "legion images build" in running["fix"]
    finally:
        container.remove(force=True)
        client.images.remove(stale, force=True)
        client.close()


@pytest.mark.docker
def test_doctor_knows_mcp_packages_and_browser_images(home: Path, agent_image: str) -> None:
    """issue 8 (after issues 13 and 14): an agent container on an image built with the
    configured `[images] mcp_packages`, and a browser container on an image of this browser
    code, are current; the same agent image without the packages is not."""
    import io

    import docker

    from legion.fleet.browser_image import browser_source_digest
    from legion.fleet.images import source_digest

    client = docker.from_env()
    packages = ["mcp-server-time"]
    made, containers = [], []
    paths = Paths.resolve(home)

    def run_on(label: str, role: str, agent: str) -> None:
        tag = f"legion-agent:doctor-test-{role}-{label}-{os.getpid()}"
        dockerfile = f"FROM {agent_image}\nLABEL org.legion.source={label} org.legion.role={role}\n"
        client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, network_mode="none")
        made.append(tag)
        containers.append(
            client.containers.run(
                tag,
                entrypoint=["sleep", "60"],
                labels={"legion.home": str(paths.home), "legion.agent": agent},
                network_mode="none",
                detach=True,
            )
        )

    def running_check(config: str) -> dict[str, object]:
        (home / "legion.toml").write_text(config)
        run = subprocess.run(
            [sys.executable, "-m", "legion", "--home", str(home), "doctor", "--json"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        return {c["name"]: c for c in json.loads(run.stdout)}["running containers"]  # type: ignore[no-any-return]

    try:
        run_on(source_digest(packages), "agent", "scout")
        run_on(browser_source_digest(), "browser", "browser:scout")
        with_packages = f"[images]\nmcp_packages = {json.dumps(packages)}\n"
        current = running_check(with_packages)
        assert current["ok"], current
        without = running_check("")
        assert not without["ok"] and "scout" in str(without["detail"])
        assert "browser:scout" not in str(without["detail"])
    finally:
        for container in containers:
            container.remove(force=True)
        for tag in made:
            client.images.remove(tag, force=True)
        client.close()


# --- models ls -------------------------------------------------------------------------------


def test_models_ls_without_a_host_reads_the_config_and_the_vault(home: Path) -> None:
    (home / "legion.toml").write_text(PRICED)
    paths = Paths.resolve(home)
    vault = Vault(paths.vault_db, paths.vault_key)
    vault.set("openai", KEY, tier="system")
    vault.close()
    run = legion(home, "models", "ls", "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["host_running"] is False
    rows = {r["alias"]: r for r in report["models"]}
    assert rows["main"]["credential_state"] == "stored" and rows["main"]["provider"] == "openai"
    assert rows["main"]["price_source"] == "litellm" and rows["main"]["input_per_mtok"] > 0
    assert (
        rows["backup"]["credential_state"] == "missing" and rows["backup"]["input_per_mtok"] is None
    )
    assert (
        rows["free"]["credential_state"] == "not needed"
        and rows["free"]["price_source"] == "config"
    )
    assert rows["main"]["used_by"] == ["a"] and rows["backup"]["used_by"] == ["a"]  # failover
    assert rows["main"]["cooldown_s"] is None
    table = legion(home, "models", "ls")
    assert "anthropic: missing" in table.stdout and "unknown (refused)" in table.stdout
    assert "legion vault set anthropic --tier system" in table.stderr
    assert KEY not in run.stdout + table.stdout + table.stderr


@pytest.mark.slow
def test_models_ls_with_a_host_shows_cooldowns(home: Path, daemon) -> None:  # type: ignore[no-untyped-def]
    with FakeProvider() as fake:
        (home / "legion.toml").write_text(
            f"""
[runtime]
backend = "none"

[llm.models.m]
model = "openai/fake"
api_base = "{fake.base_url}"
credential = "provider"
input_cost_per_mtok = 1.0
output_cost_per_mtok = 1.0

[agents.alice]
model = "m"
"""
        )
        paths = Paths.resolve(home)
        vault = Vault(paths.vault_db, paths.vault_key)
        vault.set("provider", KEY, tier="system")
        vault.close()
        d: Daemon = daemon()
        d.start()
        try:
            ready = json.loads(legion(home, "models", "ls", "--json").stdout)
            assert ready["host_running"] is True
            assert ready["models"][0]["cooldown_s"] == 0.0 and ready["models"][0]["failures"] == 0
            # Retry-After 120: the cooldown outlasts the CLI's start on a loaded machine (the
            # first failure's own cooldown is 1 s).
            fake.script(Reply(status=429, error="slow down", retry_after=120))
            with httpx.Client(
                transport=httpx.HTTPTransport(uds=str(paths.agent_socket("alice"))),
                base_url="http://legion",
                timeout=30,
            ) as alice:
                refused = alice.post(
                    "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}
                )
                assert refused.status_code >= 400
            cooling = json.loads(legion(home, "models", "ls", "--json").stdout)["models"][0]
            assert cooling["cooldown_s"] > 0 and cooling["last_failure"] == "rate_limit"
            assert cooling["failures"] == 1
            shown = legion(home, "models", "ls")
            assert "(rate_limit)" in shown.stdout
            assert KEY not in shown.stdout
        finally:
            d.stop()
