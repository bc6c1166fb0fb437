"""`legion doctor` says what is wrong and what to do about it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from legion.fleet.backend import AgentSpec
from legion.fleet.docker_backend import container_config


def doctor(home: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "legion", "--home", str(home), "doctor", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_without_an_engine_it_says_how_to_get_one(home: Path) -> None:
    run = doctor(home, {"DOCKER_HOST": f"unix://{home}/no-docker.sock"})
    assert run.returncode == 1
    checks = {c["name"]: c for c in json.loads(run.stdout)}
    assert checks["config"]["ok"] and checks["socket paths"]["ok"]
    engine = checks["docker engine"]
    assert not engine["ok"] and "dockerd" in engine["fix"]


def test_a_bad_config_is_reported(home: Path) -> None:
    (home / "legion.toml").write_text("[host]\nlog_levl = 1\n")
    run = doctor(home, {"DOCKER_HOST": f"unix://{home}/no-docker.sock"})
    checks = {c["name"]: c for c in json.loads(run.stdout)}
    assert not checks["config"]["ok"] and "log_level" in checks["config"]["detail"]


@pytest.mark.docker
def test_with_an_engine_it_checks_runtime_and_images(home: Path, agent_image: str) -> None:
    (home / "legion.toml").write_text(
        f'[runtime]\nimage = "{agent_image}"\ncontainer_runtime = "no-such-runtime"\n'
    )
    checks = {c["name"]: c for c in json.loads(doctor(home).stdout)}
    assert checks["docker engine"]["ok"]
    assert checks["agent image"]["ok"], checks["agent image"]
    runtime = checks["container runtime"]
    assert not runtime["ok"] and "daemon.json" in runtime["fix"]


def test_container_runtime_is_passed_through() -> None:
    spec = AgentSpec(
        name="a",
        image="img",
        data_dir=Path("/d"),
        socket_dir=Path("/s"),
        uid=10001,
        gid=10001,
        memory_mb=384,
        cpus=0.5,
        pids=256,
        runtime="runsc",
    )
    config = container_config(spec, "legion-x-a")
    assert config["runtime"] == "runsc"
    plain = container_config(AgentSpec(**{**spec.__dict__, "runtime": None}), "legion-x-a")
    assert "runtime" not in plain
