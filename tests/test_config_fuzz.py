"""issue 15: `config.example.toml`, mutated by hypothesis (types, unknown keys, deleted and
duplicated tables, huge and non-finite numbers, unicode names, deep nesting, broken syntax),
through `legion config check` (the real CLI, in-process) and the daemon's own load
(`legion.config.load_config`): never a traceback; a bad file is exit 2 with the file, the
key (or line) and the fix on every problem. A few files also go through the real
subprocesses, `legion config check` and `legion daemon`.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import tomlkit
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from legion.cli.main import app
from legion.config import Config, load_config, parse_config
from legion.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_TEXT = (REPO / "legion" / "data" / "config.example.toml").read_text()
EXAMPLE: dict[str, Any] = tomllib.loads(EXAMPLE_TEXT)
RUNNER = CliRunner()


def key_paths(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for key, value in data.items():
        path = (*prefix, key)
        out.append(path)
        if isinstance(value, dict):
            out += key_paths(value, path)
    return out


def value_at(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = data
    for part in path:
        node = node[part]
    return node


TABLES = [p for p in key_paths(EXAMPLE) if isinstance(value_at(EXAMPLE, p), dict)]

values = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from([0, -1, 2**63 - 1, -(2**63)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("inf"), float("-inf"), float("nan"), 1e308, -0.0]),
    st.text(max_size=20),
    st.booleans(),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)),
    st.lists(st.one_of(st.integers(-5, 5), st.text(max_size=5)), max_size=3),
    st.dictionaries(st.text(min_size=1, max_size=6), st.integers(-5, 5), max_size=2),
)
# Names (of agents, teams, models, keys) as an attacker or a tired operator writes them.
names = st.one_of(
    st.text(min_size=1, max_size=40),
    st.sampled_from(["host", "operator", "system", "Bob", "a.b", "x]\n[agents.y", "é", "9a"]),
    st.from_regex(r"[a-z][a-z0-9-]{0,40}", fullmatch=True),
)


def at(data: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    node: Any = data
    for part in path[:-1]:
        node = node[part]
    return node  # type: ignore[no-any-return]


@st.composite
def mutated_data(draw: st.DrawFn) -> str:
    data = copy.deepcopy(EXAMPLE)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["set", "unknown", "delete", "rename", "wrap"]))
        path = draw(st.sampled_from(key_paths(data) or [("host",)]))
        try:
            parent = at(data, path)
        except (KeyError, TypeError):
            continue
        if not isinstance(parent, dict) or path[-1] not in parent:
            continue
        if kind == "set":
            parent[path[-1]] = draw(values)
        elif kind == "unknown":
            target = parent[path[-1]] if isinstance(parent[path[-1]], dict) else parent
            target[draw(names)] = draw(values)
        elif kind == "delete":
            del parent[path[-1]]
        elif kind == "rename":
            parent[draw(names)] = parent.pop(path[-1])
        else:  # the value nested in lists
            value = parent[path[-1]]
            for _ in range(draw(st.integers(1, 60))):
                value = [value]
            parent[path[-1]] = value
    return tomlkit.dumps(data)


@st.composite
def mutated_text(draw: st.DrawFn) -> str:
    text = EXAMPLE_TEXT
    kind = draw(st.sampled_from(["insert", "cut", "duplicate", "deep", "number", "replace"]))
    position = draw(st.integers(0, len(text)))
    if kind == "insert":
        return text[:position] + draw(st.text(min_size=1, max_size=8)) + text[position:]
    if kind == "cut":
        return text[:position]
    if kind == "duplicate":
        path = draw(st.sampled_from(TABLES))
        header = "[" + ".".join(path) + "]"
        return text + f"\n{header}\n"
    if kind == "deep":
        depth = draw(st.sampled_from([32, 33, 500, 5000]) | st.integers(1, 2000))
        opener, closer = draw(st.sampled_from([("[", "]"), ("{a=", "}")]))
        return f"deep = {opener * depth}{closer * depth}\n" + text
    if kind == "number":
        number = draw(
            st.sampled_from(["1e400", "-1e400", "inf", "nan", "+inf", "99999999999999999999999"])
        )
        return text.replace("daily_usd = 2.0", f"daily_usd = {number}").replace(
            "inbox_max_items = 10000", f"inbox_max_items = {number}"
        )
    old = draw(st.sampled_from(["scout", "research", "gpt-4o-mini", "[egress]\nallow = []"]))
    new = draw(
        st.sampled_from(
            ["host", "Scout", "a.b", "ünï", "x" * 40, '[egress]\nallow = ["h:80:80", "[::1"]']
        )
    )
    return text.replace(old, new)


@pytest.fixture(scope="module")
def file() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="lg-fuzz-"))
    yield folder / "legion.toml"
    shutil.rmtree(folder, ignore_errors=True)


def check_file(file: Path, text: str) -> Config | None:
    """Parse `text` three ways; return the config when valid. Fails the test on a traceback
    or on a problem that does not say where and how to fix it."""
    file.write_text(text, encoding="utf-8")
    try:
        parsed: Config | None = parse_config(text, str(file))
    except ConfigError as exc:
        parsed = None
        assert exc.problems
        for problem in exc.problems:
            assert problem.startswith(str(file)), problem
            assert "Traceback" not in problem
            assert "fix" in problem or "did you mean" in problem or "known keys" in problem, problem
    try:
        loaded: Config | None = load_config(file)  # what `legion daemon` calls
    except ConfigError:
        loaded = None
    assert loaded == parsed
    result = RUNNER.invoke(app, ["config", "check", str(file)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    if parsed is None:
        assert result.exit_code == 2, result.output
        assert str(file) in result.output
    else:
        assert result.exit_code == 0, result.output
    return parsed


FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(mutated_data())
def test_mutated_values_never_crash_the_check_or_the_load(file: Path, text: str) -> None:
    event("valid" if check_file(file, text) else "refused")


@FUZZ
@given(mutated_text())
def test_mutated_text_never_crashes_the_check_or_the_load(file: Path, text: str) -> None:
    event("valid" if check_file(file, text) else "refused")


def test_the_example_itself_is_valid(file: Path) -> None:
    assert check_file(file, EXAMPLE_TEXT) is not None


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "text", "wanted"),
    [
        ("deep", "x = " + "[" * 500 + "]" * 500 + "\n", "nest more than 32 deep"),
        ("inf-budget", "[agents.a.budget]\ndaily_usd = inf\n", "agents.a.budget.daily_usd"),
        ("allow", '[egress]\nallow = ["h:80:80"]\n', "egress.allow"),
        ("reserved-team", "[teams.operator]\n", "teams.operator"),
        ("injected-name", '[agents."x]\\n[agents.y"]\n', "is not a valid agent name"),
    ],
)
def test_real_cli_and_daemon_refuse_a_bad_file_with_exit_2(
    home: Path, name: str, text: str, wanted: str
) -> None:
    """issue 15 item 6: a file 500 arrays deep was a RecursionError traceback in both."""
    (home / "legion.toml").write_text(text)
    for command in (["config", "check"], ["daemon"]):
        done = subprocess.run(
            [sys.executable, "-m", "legion", "--home", str(home), *command],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr
        assert str(home / "legion.toml") in done.stderr and wanted in done.stderr, done.stderr
        assert "fix" in done.stderr
