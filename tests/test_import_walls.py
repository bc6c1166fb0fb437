"""The package walls of design.md, checked at run time and by import-linter.

* the headless `legion` package (host, CLI, wire) never imports `textual`;
* `legion.wire` depends on the standard library and pydantic only.

Each check runs in a fresh interpreter so nothing imported by pytest or other tests
can hide or fake an import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
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
    assert "0 broken" in proc.stdout
