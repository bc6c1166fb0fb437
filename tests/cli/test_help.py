"""issue 8: every command's `--help` says what the code says, and completion is on.

* The command table `legion --help` lists without importing anything says what each
  command's own docstring says.
* Help is plain text: each option's and argument's help string appears whole in the
  rendered help (Rich markup once ate `[llm.models]`, leaving "Model alias from .").
* A flag shows no value (`--json`, not `--json <bool>` or `--force / --no-force`); every
  other option shows what it takes by name, never a Python type (`<str>`), and an argument
  is listed by its name alone (not `NAME <str>`).
* `legion --install-completion` / `--show-completion` exist and the completion script
  resolves subcommands.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer

from legion.cli.main import COMMANDS, app, load_command


def _walk(command: Any, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], Any]]:
    out = [(path, command)]
    for name, sub in getattr(command, "commands", {}).items():
        out += _walk(sub, (*path, name))
    return out


ROOT = typer.main.get_command(app)
TREE = _walk(ROOT, ())


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _short(help_text: str) -> str:
    return _flat(help_text.split("\n\n")[0])


@pytest.mark.parametrize("name", list(COMMANDS))
def test_the_command_table_says_what_each_command_says(name: str) -> None:
    command = load_command(name)
    assert _short(command.help or "") == _flat(COMMANDS[name][2]), name


def _render(path: tuple[str, ...]) -> str:
    run = subprocess.run(
        [sys.executable, "-m", "legion", *path, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "100", "TERM": "dumb"},
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


@pytest.mark.parametrize("path,command", TREE, ids=[" ".join(p) or "legion" for p, _ in TREE])
def test_help_is_whole_and_shows_values_by_name(path: tuple[str, ...], command: Any) -> None:
    text = _render(path)
    flat = _flat(text)
    # The wrapper may break a line after a hyphen ("--api-" / "base"): compare the help
    # texts without any whitespace too, so a hyphenated word split by wrapping still counts.
    bare = re.sub(r"\s+", "", text)
    assert "<bool>" not in text and "/ --no-" not in text, text
    for section in ("Arguments:", "Options:"):
        listed = text.split(section, 1)[1] if section in text else ""
        assert not re.search(r"<[a-z][^>]*>", listed), listed  # by name, not `<str>`
    for param in command.params:
        helped = getattr(param, "help", None)
        if helped:
            assert _flat(helped) in flat or re.sub(r"\s+", "", helped) in bare, (
                path,
                param.name,
                helped,
            )
    if command.help:
        assert _short(command.help) in flat, (path, command.help)


def test_the_markup_accident_is_gone() -> None:
    text = _flat(_render(("agents", "add")))
    assert "[llm.models]" in text and "from ." not in text
    assert "[teams]" in text


def test_completion_is_installable_and_resolves_subcommands() -> None:
    root = _render(())
    assert "--install-completion" in root and "--show-completion" in root
    script = subprocess.run(
        [sys.executable, "-m", "legion", "--show-completion", "bash"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"},
    )  # fmt: skip
    assert script.returncode == 0, script.stderr
    assert "complete" in script.stdout and "legion" in script.stdout
    # what bash asks when the operator types `legion ag<TAB>` and `legion agents <TAB>`
    for words, expected in ((["legion", "ag"], "agents"), (["legion", "agents", ""], "purge")):
        done = subprocess.run(
            [str(Path(sys.executable).parent / "legion")],  # the name completion keys on
            capture_output=True, text=True, timeout=60,
            env={
                **os.environ,
                "_LEGION_COMPLETE": "complete_bash",
                "COMP_WORDS": " ".join(words),
                "COMP_CWORD": str(len(words) - 1),
            },
        )  # fmt: skip
        assert expected in done.stdout.split(), (words, done.stdout, done.stderr)
