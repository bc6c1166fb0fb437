"""issue 8: `legion --help`, `--version` and `status` stay lean to start.

Not a timing (bench/cli_startup.py times them): which modules each loads. `--help` and
`--version` load typer and the CLI's own table, nothing of the host; `status` adds the
standard-library control-socket client, never httpx, pydantic or the wire models (with no
host and against a running one).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Daemon

PROBE = """
import json, sys
sys.argv = ["legion", *json.loads(sys.argv[1])]
try:
    from legion.cli.main import main
    main()
except SystemExit:
    pass
with open(OUT, "w") as f:
    json.dump(sorted(sys.modules), f)
"""

# Heavy or unrelated: none of these may load for --help, --version or status.
FORBIDDEN = (
    "pydantic",
    "pydantic_core",
    "httpx",
    "rich",
    "tomlkit",
    "apsw",
    "peewee",
    "litellm",
    "docker",
    "textual",
    "tui",
    "cryptography",
    "legion.wire",
    "legion.config",
    "legion.api.client",
    "legion.host",
)
# The wire package's standard-library modules (legion.textsafe's rule for agent text):
# allowed; every wire model (pydantic) stays forbidden.
STDLIB_WIRE = {"legion.wire", "legion.wire.textrule"}
LEAN = {
    "legion",
    "legion.cli",
    "legion.cli.main",
    "legion.cli.common",
    "legion.cli.inputs",
    "legion.paths",
    "legion.textsafe",
    *STDLIB_WIRE,
}


def loaded(home: Path, *args: str) -> set[str]:
    out = home / "modules.json"
    code = PROBE.replace("OUT", repr(str(out)))
    run = subprocess.run(
        [sys.executable, "-c", code, json.dumps(["--home", str(home), *args])],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.exists(), run.stderr
    return set(json.loads(out.read_text()))


def heavy(modules: set[str]) -> list[str]:
    return sorted(
        m for m in modules - STDLIB_WIRE if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)
    )


@pytest.mark.parametrize("args", [("--help",), ("--version",), ("-h",)], ids=" ".join)
def test_help_and_version_load_only_typer_and_the_command_table(
    home: Path, args: tuple[str, ...]
) -> None:
    modules = loaded(home, *args)
    assert heavy(modules) == []
    assert {m for m in modules if m.split(".")[0] == "legion"} <= LEAN


def test_status_without_a_host_loads_the_stdlib_client_only(home: Path) -> None:
    modules = loaded(home, "status")
    assert heavy(modules) == []
    assert {m for m in modules if m.split(".")[0] == "legion"} <= LEAN | {
        "legion.api",
        "legion.api.reach",
        "legion.cli.host_cmd",
        "legion.hostlock",
    }


@pytest.mark.slow
def test_status_against_a_running_host_stays_lean(home: Path, daemon) -> None:  # type: ignore[no-untyped-def]
    (home / "legion.toml").write_text('[runtime]\nbackend = "none"\n\n[agents.scout]\n')
    d: Daemon = daemon()
    d.start()
    try:
        modules = loaded(home, "status", "--json")
        assert "legion.api.reach" in modules and heavy(modules) == []
        shown = subprocess.run(
            [sys.executable, "-m", "legion", "--home", str(home), "status", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        status = json.loads(shown.stdout)
        assert status["agents"][0]["name"] == "scout" and status["pid"] == d.proc.pid  # type: ignore[union-attr]
    finally:
        d.stop()


def test_a_subcommand_loads_its_own_module_only(home: Path) -> None:
    modules = loaded(home, "config", "path")
    assert "legion.cli.config_cmd" in modules
    others = {
        "legion.cli.agents_cmd",
        "legion.cli.bb",
        "legion.cli.vault_cmd",
        "legion.cli.chat_cmd",
    }
    assert not modules & others
