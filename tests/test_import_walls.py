"""The package walls of design.md, checked at run time and by import-linter.

* the headless `legion` package (host, CLI, wire) never imports `textual`;
* `legion.wire` depends on the standard library and pydantic only.

Each check runs in a fresh interpreter so nothing imported by pytest or other tests
can hide or fake an import.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def run_python(code: str, *, extra_path: Path | None = None) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if extra_path is not None:
        env["LEGION_TEST_EXTRA_PATH"] = str(extra_path)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


WALK_ALL = """
import importlib, json, os, pkgutil, sys

# A stand-in `textual`, found only when no real one is installed (it goes last on the
# path): whether or not the TUI toolkit is installed, importing it shows in sys.modules.
extra = os.environ.get("LEGION_TEST_EXTRA_PATH")
if extra:
    sys.path.append(extra)

import legion

names = ["legion"]
for info in pkgutil.walk_packages(legion.__path__, "legion."):
    # legion.__main__ is the `python -m legion` entry point: importing it runs the CLI.
    if info.name != "legion.__main__":
        names.append(info.name)
for name in names:
    importlib.import_module(name)
print(json.dumps({
    "file": legion.__file__,
    "modules": names,
    "textual": sorted(m for m in sys.modules if m == "textual" or m.startswith("textual.")),
}))
"""


def test_headless_legion_never_imports_textual(tmp_path: Path) -> None:
    fake = tmp_path / "textual"
    fake.mkdir()
    (fake / "__init__.py").write_text("FAKE = True\n")

    result = run_python(WALK_ALL, extra_path=tmp_path)

    assert Path(str(result["file"])).resolve().is_relative_to(REPO / "legion")
    modules = set(result["modules"])
    # the walk really covered the host, the CLI and the wire models
    for expected in (
        "legion.host",
        "legion.config",
        "legion.store",
        "legion.mesh.permissions",
        "legion.daemon",
        "legion.cli",
        "legion.cli.main",
        "legion.cli.config_cmd",
        "legion.wire",
        "legion.wire.api",
        "legion.wire.events",
        "legion.wire.errors",
    ):
        assert expected in modules, expected
    # every .py file under legion/ was imported (but the -m entry point)
    on_disk = {
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for p in (REPO / "legion").rglob("*.py")
    } - {"legion.__main__"}
    assert on_disk <= modules, on_disk - modules
    assert result["textual"] == []


WIRE_ONLY = """
import json, sys

import legion.wire.api
import legion.wire.events
import legion.wire.errors

forbidden = ["legion.config", "legion.store", "legion.host", "legion.api.http", "legion.cli",
             "legion.mesh.permissions", "legion.mesh.audit", "legion.mesh.blackboard",
             "legion.mesh.inbox",
             "httpx", "apsw", "peewee", "typer", "rich", "textual"]
print(json.dumps({
    "loaded": sorted(m for m in forbidden if m in sys.modules),
    "wire": sorted(m for m in sys.modules if m.startswith("legion.wire")),
}))
"""


def test_wire_models_import_only_stdlib_and_pydantic() -> None:
    result = run_python(WIRE_ONLY)
    assert {"legion.wire.api", "legion.wire.events", "legion.wire.errors"} <= set(result["wire"])
    assert result["loaded"] == []


def test_wire_check_detects_a_heavy_import() -> None:
    # The check above can fail: importing a host module does pull the forbidden ones in.
    result = run_python(WIRE_ONLY.replace("import legion.wire.errors", "import legion.host"))
    assert "legion.store" in result["loaded"]
    assert "apsw" in result["loaded"]


def test_import_linter_contracts_hold() -> None:
    lint_imports = REPO / ".venv" / "bin" / "lint-imports"
    if not lint_imports.exists():
        lint_imports = Path(sys.executable).parent / "lint-imports"
    assert lint_imports.exists(), "import-linter is a dev dependency; run `make bootstrap`"
    proc = subprocess.run(
        [str(lint_imports), "--no-cache", "--no-logo"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    # both contracts of pyproject.toml were checked and kept
    assert "The host never imports the TUI toolkit KEPT" in proc.stdout
    assert "Wire models depend on the standard library and pydantic only KEPT" in proc.stdout
    assert "The TUI uses the host's public client API only KEPT" in proc.stdout
    assert "0 broken" in proc.stdout


# --- every command but the TUI runs without textual (issue 9) ---------------------------------

RUN_COMMANDS = """
import json, os, sys, threading

import typer.main

from legion.cli.main import app

home = os.environ["LEGION_TEST_HOME"]
commands = json.loads(os.environ["LEGION_TEST_COMMANDS"])
ran = []
for argv in commands:
    code = 0
    try:
        returned = typer.main.get_command(app).main(["--home", home, *argv], standalone_mode=False)
        code = returned if isinstance(returned, int) else 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except Exception as exc:  # click's Exit and usage errors: the command ran its imports
        code = getattr(exc, "exit_code", 1)
    ran.append([argv, code])
print(json.dumps({
    "ran": ran,
    "textual": sorted(m for m in sys.modules if m == "textual" or m.startswith("textual.")),
    "tui": sorted(m for m in sys.modules if m == "tui" or m.startswith("tui.")),
}))
"""

# Each leaf command with arguments that make it do its work against a running host. A new
# command must be added here (or to NOT_RUN, with why): the walk below checks the list.
COMMANDS: list[list[str]] = [
    ["status"],
    ["status", "--json"],
    ["agents", "ls"],
    ["agents", "add", "walltest", "--json"],
    ["agents", "start", "walltest"],
    ["agents", "stop", "walltest"],
    ["agents", "restart", "walltest"],
    ["agents", "rm", "walltest"],
    ["bb", "put", "notes/wall", "1"],
    ["bb", "get", "notes/wall"],
    ["bb", "ls"],
    ["bb", "rm", "notes/wall"],
    ["chat", "ghost", "hello", "--timeout", "5"],
    ["costs"],
    ["costs", "--json"],
    ["audit", "--limit", "5"],
    ["audit", "--verify"],
    ["config", "check"],
    ["config", "path"],
    ["config", "init"],
    ["vault", "ls"],
    ["vault", "rm", "nothing-here"],
    ["images", "ls"],
    ["doctor"],
    ["daemon", "--print-unit"],
    ["stop"],
]
NOT_RUN = {
    ("events",): "follows the stream forever; it uses the same ControlClient as status",
    ("vault", "set"): "reads a secret from a prompt; same module as vault ls",
    ("vault", "passphrase"): "re-keys the vault interactively; same module as vault ls",
    ("images", "build"): "builds a Docker image for minutes; same module as images ls",
}


def _leaves() -> set[tuple[str, ...]]:
    import click
    import typer.main

    from legion.cli.main import app

    def walk(command: click.Command, prefix: tuple[str, ...]) -> set[tuple[str, ...]]:
        if isinstance(command, click.Group):
            out: set[tuple[str, ...]] = set()
            for name, sub in command.commands.items():
                out |= walk(sub, (*prefix, name))
            return out
        return {prefix}

    return walk(typer.main.get_command(app), ())


def test_the_command_list_covers_every_command() -> None:
    covered = {tuple(argv[: len(leaf)]) for argv in COMMANDS for leaf in _leaves()}
    missing = {leaf for leaf in _leaves() if leaf not in covered and leaf not in NOT_RUN}
    assert missing == set(), f"add these to COMMANDS or NOT_RUN: {sorted(missing)}"


def test_no_cli_command_nor_the_daemon_imports_textual(tmp_path: Path, daemon: Any) -> None:
    """issue 9: only `legion` with no subcommand opens the TUI; everything else stays headless."""
    home = Path(tempfile.mkdtemp(prefix="lg-", dir="/tmp"))
    try:
        (home / "legion.toml").write_text('[runtime]\nbackend = "none"\n')
        wall = _start_daemon_in_wrapper(home)
        env = {
            **{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
            "LEGION_TEST_HOME": str(home),
            "LEGION_TEST_COMMANDS": json.dumps(COMMANDS),
        }
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(RUN_COMMANDS)],
            capture_output=True, text=True, timeout=300, cwd=REPO, env=env,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        codes = {" ".join(argv): code for argv, code in result["ran"]}
        assert [argv for argv, _ in result["ran"]] == COMMANDS
        # they really ran against the host (errors where an error is the right answer)
        must_succeed = ["status", "agents ls", "agents add walltest --json", "bb get notes/wall"]
        must_succeed += ["bb put notes/wall 1", "costs", "audit --verify", "config check", "stop"]
        for ok in must_succeed:
            assert codes[ok] == 0, (ok, codes)
        assert codes["chat ghost hello --timeout 5"] == 1
        assert codes["agents start walltest"] == 1  # no runtime backend: a clear refusal
        assert result["textual"] == [] and result["tui"] == []
        # `stop` (the last command) stopped the daemon; its own modules never had textual
        out, _ = wall.communicate(timeout=30)
        daemon_modules = json.loads(out.strip().splitlines()[-1])
        assert daemon_modules["served"] is True
        assert daemon_modules["textual"] == [] and daemon_modules["tui"] == []
    finally:
        shutil.rmtree(home, ignore_errors=True)


DAEMON_WRAPPER = """
import atexit, json, os, sys

def report():
    # the daemon turns prints into log records: write to the real stdout
    os.write(1, (json.dumps({
        "served": os.path.exists(os.environ["LEGION_TEST_HOME"] + "/host.db"),
        "textual": sorted(m for m in sys.modules if m == "textual" or m.startswith("textual.")),
        "tui": sorted(m for m in sys.modules if m == "tui" or m.startswith("tui.")),
    }) + chr(10)).encode())

atexit.register(report)
from legion.cli.main import main
sys.argv = ["legion", "--home", os.environ["LEGION_TEST_HOME"], "daemon"]
main()
"""


def _start_daemon_in_wrapper(home: Path) -> subprocess.Popen[str]:
    """`legion daemon` in a process that reports its sys.modules when it exits."""
    env = {**os.environ, "LEGION_TEST_HOME": str(home)}
    env.pop("PYTHONPATH", None)
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(DAEMON_WRAPPER)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not (home / "run" / "control.sock").exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the daemon did not start"
        time.sleep(0.05)
    return proc


def test_the_tui_does_import_textual() -> None:
    # The check above can fail: the TUI's entry point pulls textual in.
    result = run_python(
        'import json, sys\nimport tui.launch, tui.app\nprint(json.dumps({"textual": '
        '"textual" in sys.modules, "hostclient": "legion.api.hostclient" in sys.modules}))'
    )
    assert result == {"textual": True, "hostclient": True}
