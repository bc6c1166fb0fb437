"""issue 15 items 5 and 7: what operators type is parsed into a documented range or refused
in one clear line with exit 2, never a traceback. Hypothesis drives the parsers (names,
times, numbers, JSON values) directly and through the real CLI (typer's CliRunner)."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from legion.cli.inputs import (
    EARLIEST,
    LATEST,
    MAX_JSON_DEPTH,
    InputError,
    parse_json_value,
    parse_number,
    parse_time,
)
from legion.cli.main import app
from legion.config import check_name, parse_config

RUNNER = CliRunner()
NOW = 1_800_000_000.0
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Through the real CLI, each example is a whole command (tens of milliseconds).
CLI_FUZZ = settings(FUZZ, max_examples=100)

BASE = """[teams.red]

[agents.bob.budget]
daily_usd = 1.0
"""

time_texts = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["0001-01-01", "9999-12-31", "nan", "inf", "-inf", "1e400", "NaN", "-1",
                     "0", "30m", "2h", "7d", "2w", "99999999999w", "1_000", " 1d ", "1.5h"]),
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)).map(
        lambda d: d.isoformat()
    ),
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=-12))]),
    ).map(lambda d: d.isoformat()),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.from_regex(r"[0-9]{1,14}(\.[0-9]{1,3})?[smhdw]?", fullmatch=True),
)  # fmt: skip
number_texts = st.one_of(
    st.text(max_size=12),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["inf", "nan", "1e400", "-0", "0.001", "1e-400", "86400", "86401"]),
)
json_texts = st.one_of(
    st.text(max_size=30),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
        max_leaves=10,
    ).map(lambda v: json.dumps(v)),  # floats include NaN/Infinity: json.dumps writes them
    st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),
    st.sampled_from(["NaN", "-Infinity", "1e400", '{"a": 1e999}', "[1,", "'x'", ""]),
)
names = st.one_of(
    st.text(max_size=40),
    st.from_regex(r"[a-z][a-z0-9-]{0,35}", fullmatch=True),
    st.sampled_from(["host", "operator", "system", "carol.permissions", "zed]\n[x]", "Bob"]),
)


@FUZZ
@given(time_texts)
@example("0001-01-01")
def test_times_parse_into_the_documented_range_or_are_refused(text: str) -> None:
    try:
        ts = parse_time(text, now=lambda: NOW)
    except InputError as exc:
        event("refused")
        assert "\n" not in str(exc)
        return
    event("parsed")
    assert math.isfinite(ts) and EARLIEST <= ts <= LATEST


@FUZZ
@given(number_texts)
def test_numbers_are_finite_and_ranged_or_refused(text: str) -> None:
    try:
        value = parse_number(text, what="--ttl", minimum=0.001, maximum=86400)
    except InputError as exc:
        assert str(exc).startswith("--ttl must be")
        return
    assert math.isfinite(value) and 0.001 <= value <= 86400


@FUZZ
@given(json_texts)
def test_json_values_are_standard_finite_and_bounded_or_refused(text: str) -> None:
    try:
        value = parse_json_value(text)
    except InputError:
        event("refused")
        return
    event("parsed")
    # What is accepted is what the host accepts: standard JSON, finite, not too deep.
    assert json.loads(json.dumps(value, allow_nan=False)) == value
    assert depth(value) <= MAX_JSON_DEPTH


def depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 1


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:  # module-scoped: hypothesis runs many examples per test
    path = Path(tempfile.mkdtemp(prefix="lg-in-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@CLI_FUZZ
@given(names)
@example('zed]\nrole = "z"\n[agents.bob.budget]\ndaily_usd = 999999.0\n#')
@example("carol.permissions")
def test_agents_add_writes_only_valid_names(home: Path, name: str) -> None:
    """issue 15 item 5: the name is checked against the documented rule before anything is
    written; a bad one is exit 2 and legion.toml is byte for byte what it was."""
    config = home / "legion.toml"
    config.write_text(BASE)
    result = RUNNER.invoke(app, ["--home", str(home), "agents", "add", name])
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    if name == "bob":  # valid, and already configured: refused, nothing written
        event("exists")
        assert result.exit_code == 1 and "already exists" in result.output, result.output
        assert config.read_text() == BASE
    elif check_name(name) is None:
        event("added")
        assert result.exit_code == 0, result.output
        agents = parse_config(config.read_text()).agents
        assert set(agents) == {"bob", name} and agents["bob"].budget.daily_usd == 1.0
    else:
        event("refused")
        assert result.exit_code == 2, result.output
        assert config.read_text() == BASE


@CLI_FUZZ
@given(time_texts, st.sampled_from(["audit", "costs"]))
def test_since_through_the_real_cli(home: Path, text: str, command: str) -> None:
    """issue 15 item 7: `--since 0001-01-01` was a ValueError traceback; nan was accepted."""
    result = RUNNER.invoke(app, ["--home", str(home), command, "--since", text])
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    try:
        parse_time(text)
    except InputError:
        assert result.exit_code == 2 and "--since" in result.output
    else:  # a good time reaches the command, which needs a host database here
        assert result.exit_code == 1 and "no host database" in result.output


@CLI_FUZZ
@given(json_texts, number_texts)
def test_bb_put_value_and_ttl_through_the_real_cli(home: Path, value: str, ttl: str) -> None:
    # after `--`, as the help says: a value such as -0 is not an option
    args = ["--home", str(home), "bb", "put", "--ttl", ttl, "--", "k", value]
    result = RUNNER.invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    try:
        parse_number(ttl, what="--ttl", minimum=0.001, maximum=366 * 86400)
        parse_json_value(value)
    except InputError:
        assert result.exit_code == 2, result.output
    else:  # good input reaches the client, which finds no host
        assert result.exit_code == 3, result.output


def test_budget_options_are_finite(home: Path) -> None:
    (home / "legion.toml").write_text(BASE)
    for bad in ("inf", "nan", "-1", "1e400", "2000000"):
        result = RUNNER.invoke(
            app, ["--home", str(home), "agents", "add", "carol", "--budget-daily", bad]
        )
        assert result.exit_code == 2 and "--budget-daily" in result.output, result.output
    assert (home / "legion.toml").read_text() == BASE
