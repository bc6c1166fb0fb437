"""Invariant 8 for config: every problem names the file, the line or key, and the fix.

Also: the CLI never shows a traceback for a bad file, and config.example.toml parses
and documents every key of every config model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from legion import config as config_module
from legion.config import Config, parse_config
from legion.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "legion" / "data" / "config.example.toml"
TOP_EXAMPLE = REPO / "config.example.toml"
FILE = "/etc/legion/fleet.toml"


def problems_of(text: str, file: str = FILE) -> list[str]:
    try:
        config = parse_config(text, file)
    except ConfigError as exc:
        assert exc.path == file
        assert exc.problems, "a ConfigError must list at least one problem"
        return exc.problems
    pytest.fail(
        f"bad config was accepted: {text!r} parsed as {config.model_dump(exclude_defaults=True)!r}"
    )


@dataclass(frozen=True)
class Bad:
    id: str
    text: str
    key: str  # the key path the message must name
    fix: str  # a fragment of the fix hint the message must contain
    line: int | None = None  # when set, the message must start with FILE:line:


BAD_FILES = [
    # references: a required section that is missing
    Bad(
        "team-not-defined",
        '[teams.blue]\n\n[agents.scout]\nrole = "x"\nteam = "red"\n',
        "agents.scout.team",
        "add a [teams.red] section",
    ),
    # wrong types
    Bad(
        "int-given-word",
        '[host]\ninbox_max_items = "many"\n',
        "host.inbox_max_items",
        "write a whole number",
        line=2,
    ),
    Bad(
        "int-given-quoted-number",
        '[host]\ninbox_max_items = "10"\n',
        "host.inbox_max_items",
        "write a whole number",
        line=2,
    ),
    Bad(
        "int-given-float",
        "[host]\n\ninbox_max_items = 10.0\n",
        "host.inbox_max_items",
        "write a whole number",
        line=3,
    ),
    Bad(
        "float-given-string",
        '[agents.a.budget]\ndaily_usd = "2"\n',
        "agents.a.budget.daily_usd",
        "write a number",
        line=2,
    ),
    Bad(
        "bool-given-string",
        '[agents.a.permissions]\ncan_spawn = "yes"\n',
        "agents.a.permissions.can_spawn",
        "write true or false",
        line=2,
    ),
    Bad(
        "bool-given-int",
        "[agents.a.permissions]\ncan_manage_cron = 1\n",
        "agents.a.permissions.can_manage_cron",
        "write true or false",
        line=2,
    ),
    Bad(
        "list-given-string",
        '[agents.a.permissions]\ncan_message = "writer"\n',
        "agents.a.permissions.can_message",
        "write a list",
        line=2,
    ),
    Bad(
        "string-given-int",
        "[agents.a]\nrole = 5\n",
        "agents.a.role",
        "write a quoted string",
        line=2,
    ),
    Bad(
        "table-given-int",
        "agents = 3\n",
        "agents",
        "write a table",
        line=1,
    ),
    Bad(
        "not-an-allowed-value",
        '[host]\nlog_level = "loud"\n',
        "host.log_level",
        "use one of the allowed values",
        line=2,
    ),
    Bad(
        "out-of-range",
        "[host]\nlong_poll_max_s = 99999\n",
        "host.long_poll_max_s",
        "use a smaller value",
        line=2,
    ),
    Bad(
        "negative-budget",
        "[agents.a.budget]\ndaily_usd = -1\n",
        "agents.a.budget.daily_usd",
        "use a larger value",
        line=2,
    ),
    # unknown keys: did-you-mean
    Bad(
        "typo-in-host",
        '[host]\nlog_levle = "info"\n',
        "host.log_levle",
        'did you mean "log_level"?',
        line=2,
    ),
    Bad(
        "typo-in-permissions",
        '[agents.scout.permissions]\nblackboard_wrte = ["a/**"]\n',
        "agents.scout.permissions.blackboard_wrte",
        'did you mean "blackboard_write"?',
        line=2,
    ),
    Bad(
        "typo-in-nested-section",
        "[host.blackboard]\nmax_value_byte = 100\n",
        "host.blackboard.max_value_byte",
        'did you mean "max_value_bytes"?',
        line=2,
    ),
    Bad(
        "typo-at-top-level",
        '[agent.scout]\nrole = "x"\n',
        "agent",
        'did you mean "agents"?',
    ),
    Bad(
        "unknown-key-without-close-match",
        "[agents.a.budget]\nzzz = 1\n",
        "agents.a.budget.zzz",
        "known keys: daily_usd, monthly_usd",
        line=2,
    ),
    # invalid names
    Bad(
        "agent-name-uppercase",
        '[agents.Scout]\nrole = "x"\n',
        "agents.Scout",
        "use lowercase letters, digits and '-'",
        line=1,
    ),
    Bad(
        "agent-name-starts-with-digit",
        '[agents."9lives"]\n',
        "agents.9lives",
        "starting with a letter",
        line=1,
    ),
    Bad(
        "agent-name-underscore",
        "[agents.my_agent]\n",
        "agents.my_agent",
        "use lowercase letters, digits and '-'",
        line=1,
    ),
    Bad(
        "agent-name-too-long",
        "[agents." + "a" * 33 + "]\n",
        "agents." + "a" * 33,
        "use lowercase letters",
        line=1,
    ),
    Bad(
        "team-name-invalid",
        "[teams.Red]\n",
        "teams.Red",
        "use lowercase letters",
        line=1,
    ),
    # reserved names
    Bad(
        "reserved-operator",
        '[agents.operator]\nrole = "x"\n',
        "agents.operator",
        "pick another agent name",
    ),
    Bad("reserved-host", "[agents.host]\n", "agents.host", "pick another agent name"),
    Bad("reserved-system", "[agents.system]\n", "agents.system", "pick another agent name"),
]


@pytest.mark.parametrize("bad", BAD_FILES, ids=[b.id for b in BAD_FILES])
def test_bad_file_gets_one_clear_problem(bad: Bad) -> None:
    problems = problems_of(bad.text)
    assert len(problems) == 1, problems
    [problem] = problems
    # One problem is one line: where, what and how to fix together.
    assert "\n" not in problem, f"one problem was split over several lines: {problem!r}"
    assert problem.startswith(FILE), problem
    assert bad.key in problem, problem
    assert bad.fix in problem, problem
    if bad.line is not None:
        assert problem.startswith(f"{FILE}:{bad.line}:"), problem
    assert "Traceback" not in problem


def test_bad_toml_syntax_names_file_and_line() -> None:
    text = '[host]\nlog_level = "info"\ninbox_max_items = = 3\n'
    [problem] = problems_of(text)
    assert problem.startswith(FILE)
    assert "line 3" in problem
    assert "not valid TOML" in problem
    assert "fix the syntax" in problem


def test_bad_toml_duplicate_key_names_line() -> None:
    text = '[host]\nlog_level = "info"\nlog_level = "debug"\n'
    [problem] = problems_of(text)
    assert problem.startswith(FILE)
    assert "line 3" in problem
    assert "fix" in problem


def test_unknown_key_lists_known_keys_or_suggests() -> None:
    # A typo never silently turns a permission off: it is an error that says what was meant.
    [problem] = problems_of('[agents.a.permissions]\ncan_mesage = ["b"]\n')
    assert 'did you mean "can_message"?' in problem
    assert "unknown key" in problem


def test_several_field_problems_are_all_reported() -> None:
    text = (
        "[host]\n"  # 1
        'log_level = "loud"\n'  # 2
        'inbox_max_items = "x"\n'  # 3
        "foo = 1\n"  # 4
        "\n"  # 5
        "[agents.Bad]\n"  # 6
        "[agents.ok.permissions]\n"  # 7
        'can_publish = "news"\n'  # 8
    )
    problems = problems_of(text)
    assert len(problems) == 5, problems
    expected = [
        (2, "host.log_level"),
        (3, "host.inbox_max_items"),
        (4, "host.foo"),
        (6, "agents.Bad"),
        (8, "agents.ok.permissions.can_publish"),
    ]
    for line, key in expected:
        matching = [p for p in problems if p.startswith(f"{FILE}:{line}: {key}")]
        assert len(matching) == 1, (line, key, problems)
    for problem in problems:
        assert "\n" not in problem
        assert "fix:" in problem or "did you mean" in problem or "known keys" in problem


def test_several_reference_problems_are_each_one_problem() -> None:
    text = '[agents.operator]\n\n[agents.a]\nteam = "nope"\n\n[agents.b]\nteam = "x"\n'
    problems = problems_of(text)
    # three problems: reserved name, two undefined teams; each a single, complete line
    assert len(problems) == 3, problems
    for problem in problems:
        assert "\n" not in problem, problem
        assert problem.startswith(FILE)
    assert any("agents.operator" in p and "pick another agent name" in p for p in problems)
    assert any("agents.a.team" in p and "[teams.nope]" in p for p in problems)
    assert any("agents.b.team" in p and "[teams.x]" in p for p in problems)


def test_reference_problems_reported_alongside_field_problems() -> None:
    # "ConfigError listing every problem": an undefined team must not hide behind a type error.
    text = '[host]\ninbox_max_items = "x"\n\n[agents.a]\nteam = "nope"\n'
    problems = problems_of(text)
    assert any("host.inbox_max_items" in p for p in problems), problems
    assert any("agents.a.team" in p and "nope" in p for p in problems), problems


def test_team_reference_lists_known_teams() -> None:
    [problem] = problems_of('[teams.blue]\n[teams.green]\n[agents.a]\nteam = "red"\n')
    assert "blue, green" in problem


def test_valid_config_parses() -> None:
    config = parse_config(
        '[teams.red]\n[agents.a]\nteam = "red"\n[agents.a.permissions]\ncan_spawn = true\n',
        FILE,
    )
    assert config.agents["a"].team == "red"
    assert config.agents["a"].permissions.can_spawn is True
    assert parse_config("", FILE) == Config()


# --- the CLI: exit 2, no traceback, JSON that parses ----------------------------------------

CLI_BAD = {
    "typo.toml": '[host]\nlog_levle = "info"\n',
    "syntax.toml": "[host\nlog_level = 1\n",
    "types.toml": '[host]\ninbox_max_items = "many"\nlog_level = 3\n',
    "reserved.toml": '[agents.operator]\n[agents.a]\nteam = "nope"\n',
    "name.toml": "[agents.Bad_Name]\n",
}


def run_check(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "legion", "config", "check", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "LEGION_HOME": str(home), "COLUMNS": "200"},
    )


@pytest.mark.parametrize("name", sorted(CLI_BAD))
def test_cli_check_bad_file_exits_2_without_traceback(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text(CLI_BAD[name], encoding="utf-8")

    plain = run_check(tmp_path, str(path))
    assert plain.returncode == 2, plain.stderr
    assert "Traceback" not in plain.stderr
    assert "Traceback" not in plain.stdout
    assert str(path) in plain.stderr
    assert "problem(s)" in plain.stderr

    as_json = run_check(tmp_path, str(path), "--json")
    assert as_json.returncode == 2, as_json.stderr
    assert "Traceback" not in as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["ok"] is False
    assert report["file"] == str(path)
    assert report["problems"]
    assert all(p.startswith(str(path)) for p in report["problems"])


@pytest.mark.parametrize(
    "kind", ["missing", "not-utf8", "directory"], ids=["missing", "not-utf8", "directory"]
)
def test_cli_check_unreadable_file_exits_2_without_traceback(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "legion.toml"
    if kind == "not-utf8":
        path.write_bytes(b"\xff\xfe[host]\n")
    elif kind == "directory":
        path.mkdir()
    proc = run_check(tmp_path, str(path))
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert str(path) in proc.stderr


def test_cli_check_good_file_exits_0_with_json(tmp_path: Path) -> None:
    proc = run_check(tmp_path, str(EXAMPLE), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True
    example = parse_config(EXAMPLE.read_text(encoding="utf-8"), str(EXAMPLE))
    assert report["agents"] == sorted(example.agents)
    assert report["teams"] == sorted(example.teams)


# --- config.example.toml documents every key ------------------------------------------------


def test_example_parses() -> None:
    config = parse_config(EXAMPLE.read_text(encoding="utf-8"), str(EXAMPLE))
    assert config.agents
    assert config.teams


def test_top_level_example_is_the_packaged_one() -> None:
    # A symlink or an identical copy: either way the operator reads the same file.
    assert TOP_EXAMPLE.is_file()
    assert TOP_EXAMPLE.read_bytes() == EXAMPLE.read_bytes()


def _model_of(annotation: Any) -> tuple[str, type[BaseModel]] | None:
    """("model", M) for a nested model, ("dict", M) for dict[str, M], else None."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _model_of(typing.get_args(annotation)[0])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return ("model", annotation)
    if origin is dict:
        value = typing.get_args(annotation)[1]
        inner = _model_of(value)
        if inner is not None and inner[0] == "model":
            return ("dict", inner[1])
        return None
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            inner = _model_of(arg)
            if inner is not None:
                return inner
    return None


def _undocumented(model: type[BaseModel], tables: list[dict[str, Any]], where: str) -> list[str]:
    """Fields of `model` that no table in `tables` sets (recursively)."""
    missing: list[str] = []
    for name, field in model.model_fields.items():
        present = [t[name] for t in tables if name in t]
        path = f"{where}.{name}" if where else name
        if not present:
            missing.append(path)
            continue
        sub = _model_of(field.annotation)
        if sub is None:
            continue
        kind, submodel = sub
        if kind == "model":
            missing += _undocumented(submodel, [p for p in present if isinstance(p, dict)], path)
        else:
            entries = [e for p in present if isinstance(p, dict) for e in p.values()]
            if not entries:
                missing.append(f"{path}.<name>")
            missing += _undocumented(
                submodel, [e for e in entries if isinstance(e, dict)], f"{path}.<name>"
            )
    return missing


def _all_models() -> set[type[BaseModel]]:
    seen: set[type[BaseModel]] = set()
    todo: list[type[BaseModel]] = [Config]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for field in model.model_fields.values():
            sub = _model_of(field.annotation)
            if sub is not None:
                todo.append(sub[1])
    return seen


def test_example_documents_every_key() -> None:
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    assert _undocumented(Config, [data], "") == []


def test_walk_reaches_every_config_model() -> None:
    # Guard the walk above: every section model defined in legion/config.py is reached.
    defined = {
        obj
        for obj in vars(config_module).values()
        if isinstance(obj, type)
        and issubclass(obj, BaseModel)
        and obj.__module__ == config_module.__name__
        and obj.model_fields
    }
    assert defined <= _all_models(), defined - _all_models()
    assert len(_all_models()) >= 7
