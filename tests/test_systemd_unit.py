"""`legion daemon --print-unit [--user]`: the units systemd itself accepts, and why each line."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from legion.paths import Paths
from legion.systemd import unit_file
from tests.test_daemon import legion

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
LEGION = str(Path(sys.executable).parent / "legion")
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze is not installed, so the unit cannot be checked by systemd; "
    "install systemd to run this test",
)


def verify(tmp_path: Path, text: str, *, user: bool = False) -> None:
    """`systemd-analyze verify` the unit: it must load with no warning about it at all."""
    assert SYSTEMD_ANALYZE is not None
    unit = tmp_path / "legion.service"
    unit.write_text(text)
    env = dict(os.environ)
    args = [SYSTEMD_ANALYZE]
    if user:
        runtime = tmp_path / "xdg-runtime"
        runtime.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(runtime)
        args.append("--user")
    result = subprocess.run(
        [*args, "verify", str(unit)], capture_output=True, text=True, timeout=60, env=env
    )
    about_ours = [
        line for line in (result.stdout + result.stderr).splitlines() if "legion.service" in line
    ]
    assert result.returncode == 0 and not about_ours, result.stdout + result.stderr + text


def sections(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(text)
    return parser


def unexplained(text: str) -> list[str]:
    """Directives of [Service] with no comment above them in their group of lines."""
    out, explained, in_service = [], False, False
    for line in text.splitlines():
        if line.startswith("["):
            in_service, explained = line == "[Service]", False
        elif not line.strip():
            explained = False
        elif line.startswith("#"):
            explained = True
        elif in_service and not explained:
            out.append(line)
    return out


@needs_analyze
def test_system_unit_passes_systemd_analyze_verify(home: Path, tmp_path: Path) -> None:
    """issue 8: the unit `--print-unit` prints is one systemd loads without a complaint."""
    result = legion(home, "daemon", "--print-unit")
    assert result.returncode == 0, result.stderr
    verify(tmp_path, result.stdout)


@needs_analyze
def test_user_unit_passes_systemd_analyze_verify(home: Path, tmp_path: Path) -> None:
    result = legion(home, "daemon", "--print-unit", "--user")
    assert result.returncode == 0, result.stderr
    verify(tmp_path, result.stdout, user=True)


@needs_analyze
@pytest.mark.parametrize(
    "home",
    ["/var/lib/legion", "/home/alice/.local/share/legion", "/srv/le gion/100%", "/opt/$HOME"],
    ids=["var-lib", "under-home", "space-percent", "dollar"],
)
def test_units_for_awkward_homes_still_verify(home: str, tmp_path: Path) -> None:
    """Specifiers (%), variables ($) and spaces in the home are escaped and quoted."""
    for user in (False, True):
        verify(tmp_path, unit_file(Paths(Path(home)), [LEGION], user=user), user=user)


def test_system_unit_reloads_waits_for_docker_and_is_sandboxed() -> None:
    """issue 8: ExecReload= sends SIGHUP; After=/Wants= Docker; the sandbox leaves the host
    its home, Unix and IP sockets, and nothing else; every line has its reason."""
    paths = Paths(Path("/srv/legion"))
    text = unit_file(paths, [LEGION], programs=[Path("/usr/bin/legion")])
    service = sections(text)["Service"]
    unit = sections(text)["Unit"]
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert "docker.service" in unit["After"] and "docker.service" in unit["Wants"]
    assert service["NoNewPrivileges"] == "true"
    assert service["ProtectSystem"] == "strict"
    assert service["ReadWritePaths"] == "/srv/legion"
    assert service["ProtectHome"] == "true"
    assert service["PrivateTmp"] == "true"
    assert service["RestrictAddressFamilies"] == "AF_UNIX AF_INET AF_INET6"
    assert "StateDirectory" not in service
    assert "User" not in service
    assert "--log-format json" in service["ExecStart"]
    assert sections(text)["Install"]["WantedBy"] == "multi-user.target"
    assert unexplained(text) == []


def test_state_directory_and_protect_home_follow_the_home() -> None:
    var_lib = unit_file(Paths(Path("/var/lib/legion")), [LEGION], programs=[Path("/usr/bin/x")])
    service = sections(var_lib)["Service"]
    assert service["StateDirectory"] == "legion" and service["StateDirectoryMode"] == "0700"
    assert service["ProtectHome"] == "true"
    # A home (or the program, or its Python) under /home or /root: readable, not hidden.
    under_home = unit_file(
        Paths(Path("/home/alice/legion")), [LEGION], programs=[Path("/usr/bin/x")]
    )
    assert sections(under_home)["Service"]["ProtectHome"] == "read-only"
    assert sections(under_home)["Service"]["ReadWritePaths"] == "/home/alice/legion"
    pyenv = unit_file(Paths(Path("/srv/legion")), [LEGION], programs=[Path("/root/.pyenv/x")])
    assert sections(pyenv)["Service"]["ProtectHome"] == "read-only"


def test_user_unit_is_for_a_rootless_setup() -> None:
    """issue 8: the `--user` unit: no User=, WantedBy=default.target, the rootless Docker
    socket, no mount-namespace sandboxing (a user manager may not be able to make one)."""
    paths = Paths(Path("/home/alice/.local/share/legion"))
    text = unit_file(paths, ["/home/alice/.venv/bin/legion"], user=True, environ={})
    parsed = sections(text)
    service = parsed["Service"]
    assert "User" not in service
    assert parsed["Install"]["WantedBy"] == "default.target"
    assert service["Environment"] == "DOCKER_HOST=unix://%t/docker.sock"
    assert service["ExecStart"].startswith("/home/alice/.venv/bin/legion --home /home/alice/")
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["NoNewPrivileges"] == "true"
    assert "ProtectSystem" not in service and "PrivateTmp" not in service
    assert "network-online.target" not in parsed["Unit"]["After"]
    assert unexplained(text) == []
    mine = unit_file(paths, [LEGION], user=True, environ={"DOCKER_HOST": "unix:///run/d.sock"})
    assert "Environment=DOCKER_HOST=unix:///run/d.sock" in mine


def test_a_home_with_control_characters_gets_no_unit(tmp_path: Path) -> None:
    """A newline in --home would inject directives (ExecStartPre=...): refused, exit 2."""
    evil = str(tmp_path / "x\nExecStartPre=/bin/sh -c id")
    result = legion(Path(evil), "daemon", "--print-unit")
    assert result.returncode == 2, result.stdout
    assert "control characters" in result.stderr
    assert "ExecStartPre" not in result.stdout


def test_user_without_print_unit_is_refused(home: Path) -> None:
    result = legion(home, "daemon", "--user")
    assert result.returncode == 2
    assert "--print-unit" in result.stderr
