"""issue 8: `legion agents add/rm` edit legion.toml with tomlkit, not text surgery.

Files that broke the old regex edits (a multi-line `system_prompt` holding a table header,
inline tables, dotted keys, tables out of order) are edited like any other; values with
newlines and quotes are written with TOML's escaping; comments and the rest of the file
stay as written. Hypothesis round-trips random valid configs, written in those styles,
through add then remove.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from legion.config import parse_config
from legion.config_edit import AgentExists, AgentFields, UnknownAgent, add_agent, remove_agent

TRICKY = '''# my fleet: comments stay
[llm.models.m]
model = "openai/x"
input_cost_per_mtok = 1.0
output_cost_per_mtok = 1.0

[agents.alice]  # the first agent
role = "reads"
system_prompt = """
Answer briefly.
[agents.fake]
role = "this is text, not a table"
"""

[teams.red]
description = "red"

[agents.alice.budget]
daily_usd = 1.0

[agents.bob]
permissions = { can_message = ["alice"], blackboard_read = ["**"] }
'''


def test_remove_from_a_file_with_a_multi_line_prompt_and_inline_tables() -> None:
    out = remove_agent(TRICKY, "alice")
    config = parse_config(out)
    assert set(config.agents) == {"bob"}
    assert config.agents["bob"].permissions.can_message == ["alice"]
    assert "# my fleet: comments stay" in out and "[teams.red]" in out
    assert "[agents.fake]" not in out and "Answer briefly" not in out
    out = remove_agent(TRICKY, "bob")
    assert set(parse_config(out).agents) == {"alice"}
    assert "this is text, not a table" in out  # alice's prompt, whole
    with pytest.raises(UnknownAgent):
        remove_agent(TRICKY, "fake")  # a header inside a string is no agent


def test_add_writes_values_with_newlines_quotes_and_every_field() -> None:
    fields = AgentFields(
        role='line one\nline two "quoted" \\ back',
        mode="task",
        model="m",
        team="red",
        allowed_models=["m"],
        system_prompt='Be brief.\n"""\nEven with triple quotes.\n',
        budget_daily=2.5,
        budget_monthly=30.0,
    )
    out = add_agent(TRICKY, "carol", fields)
    carol = parse_config(out).agents["carol"]
    assert carol.role == fields.role and carol.system_prompt == fields.system_prompt
    assert (carol.mode, carol.model, carol.team, carol.allowed_models) == (
        "task",
        "m",
        "red",
        ["m"],
    )
    assert (carol.budget.daily_usd, carol.budget.monthly_usd) == (2.5, 30.0)
    assert out.startswith(TRICKY.rstrip("\n"))  # everything before stays byte for byte
    with pytest.raises(AgentExists):
        add_agent(out, "carol", AgentFields())
    assert tomllib.loads(remove_agent(out, "carol")) == tomllib.loads(TRICKY)


def test_inline_agents_and_dotted_keys() -> None:
    inline = 'agents = { a = { role = "x" } }\n[host]\nlog_level = "info"\n'
    out = add_agent(inline, "b", AgentFields(role="new\nline", budget_daily=1.0))
    assert parse_config(out).agents["b"].role == "new\nline"
    assert parse_config(out).agents["b"].budget.daily_usd == 1.0
    assert tomllib.loads(remove_agent(out, "b")) == tomllib.loads(inline)
    dotted = 'agents.a.role = "x"\nagents.a.budget.daily_usd = 1.0\n\n[host]\n'
    assert parse_config(remove_agent(dotted, "a")).agents == {}
    assert set(parse_config(add_agent(dotted, "b", AgentFields())).agents) == {"a", "b"}


def test_the_cli_takes_mode_system_prompt_and_allowed_models(home: Path) -> None:
    (home / "legion.toml").write_text(TRICKY)
    env = {k: v for k, v in os.environ.items() if k != "LEGION_HOME"}
    run = subprocess.run(
        [
            sys.executable, "-m", "legion", "--home", str(home), "agents", "add", "dave",
            "--role", "a\nb", "--mode", "task", "--system-prompt", "x\n[agents.y]\nz",
            "--allowed-models", "m", "--model", "m",
        ],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    dave = parse_config((home / "legion.toml").read_text()).agents["dave"]
    assert (dave.role, dave.mode, dave.system_prompt) == ("a\nb", "task", "x\n[agents.y]\nz")
    bad = subprocess.run(
        [sys.executable, "-m", "legion", "--home", str(home), "agents", "add", "eve",
         "--allowed-models", "nope"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert bad.returncode == 2 and "agents.eve.allowed_models" in bad.stderr
    assert "eve" not in parse_config((home / "legion.toml").read_text()).agents
    rm = subprocess.run(
        [sys.executable, "-m", "legion", "--home", str(home), "agents", "rm", "alice"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert rm.returncode == 0, rm.stderr
    assert "# my fleet: comments stay" in (home / "legion.toml").read_text()


# --- property: random valid configs, in every style, round-trip ------------------------------

NAMES = st.from_regex(r"[a-z][a-z0-9-]{0,7}", fullmatch=True).filter(
    lambda n: n not in ("operator", "host", "system")
)
TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40
) | st.sampled_from(
    [
        "first\n[agents.fake]\nrole = 'inside a string'\n",
        'ends with a quote"',
        'three """ quotes',
        "a\r\nb",
        "# not a comment",
    ]
)
AGENT = st.fixed_dictionaries(
    {},
    optional={
        "role": TEXT,
        "system_prompt": TEXT,
        "mode": st.sampled_from(["chat", "task"]),
        "max_tool_rounds": st.integers(1, 100),
        "budget": st.fixed_dictionaries({}, optional={"daily_usd": st.floats(0, 1000)}),
        "permissions": st.fixed_dictionaries(
            {}, optional={"blackboard_read": st.lists(st.sampled_from(["a/**", "b/*"]))}
        ),
    },
)


def _value(value: Any, multiline: bool = False) -> str:
    import tomlkit

    if isinstance(value, str) and multiline and "\n" in value:
        return tomlkit.string(value, multiline=True).as_string()
    return tomlkit.item(value).as_string()


def _inline(table: dict[str, Any]) -> str:
    return "{ " + ", ".join(f"{k} = {_inline(v) if isinstance(v, dict) else _value(v)}"
                            for k, v in table.items()) + " }"  # fmt: skip


def render(agents: dict[str, dict[str, Any]], style: list[str], comments: bool) -> str:
    """A legion.toml of `agents`, each written in one of four styles."""
    lines = ["# a fleet", "[host]", 'log_level = "info"', ""]
    later: list[str] = []
    for (name, agent), how in zip(agents.items(), style, strict=False):
        plain = {k: v for k, v in agent.items() if not isinstance(v, dict)}
        nested = {k: v for k, v in agent.items() if isinstance(v, dict)}
        if comments:
            lines.append(f"# agent {name} [agents.{name}] in a comment")
        if how == "inline":
            lines.append(f"[agents.{name}]")
            lines += [f"{k} = {_value(v)}" for k, v in plain.items()]
            lines += [f"{k} = {_inline(v)}" for k, v in nested.items()]
        elif how == "dotted":
            lines.append(f"[agents.{name}]")
            lines += [f"{k} = {_value(v)}" for k, v in plain.items()]
            for k, v in nested.items():
                lines += [f"{k}.{kk} = {_value(vv)}" for kk, vv in v.items()]
        else:  # headers, sub-tables right after ("near") or at the end ("far")
            lines.append(f"[agents.{name}]")
            lines += [f"{k} = {_value(v, multiline=True)}" for k, v in plain.items()]
            target = lines if how == "near" else later
            for k, v in nested.items():
                target += ["", f"[agents.{name}.{k}]"] + [
                    f"{kk} = {_value(vv)}" for kk, vv in v.items()
                ]
        lines.append("")
    lines += ["[teams.t]", 'description = "d"', *later, ""]
    return "\n".join(lines)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    agents=st.dictionaries(NAMES, AGENT, max_size=4),
    style=st.lists(st.sampled_from(["near", "far", "inline", "dotted"]), min_size=4, max_size=4),
    comments=st.booleans(),
    new=NAMES,
    fields=st.builds(
        AgentFields,
        role=st.none() | TEXT.filter(bool),
        mode=st.none() | st.sampled_from(["chat", "task"]),
        system_prompt=st.none() | TEXT.filter(bool),
        budget_daily=st.none() | st.floats(0, 1000),
        budget_monthly=st.none() | st.floats(0, 1000),
    ),
)
def test_random_configs_round_trip_through_add_and_remove(
    agents: dict[str, dict[str, Any]],
    style: list[str],
    comments: bool,
    new: str,
    fields: AgentFields,
) -> None:
    text = render(agents, style, comments)
    before = parse_config(text)  # the rendering is a valid config
    original = tomllib.loads(text)
    if new in agents:
        with pytest.raises(AgentExists):
            add_agent(text, new, fields)
        return
    added = add_agent(text, new, fields)
    config = parse_config(added)
    assert (
        config.agents[new].model_dump()
        == parse_config("[agents.x]\n" if not fields.values() else _as_toml(fields))
        .agents["x"]
        .model_dump()
    )
    for name in agents:  # every other agent exactly as it was
        assert config.agents[name] == before.agents[name]
    assert tomllib.loads(remove_agent(added, new)) == original
    kept = [line for line in text.splitlines() if line.startswith("#")]
    assert all(line in added for line in kept)  # comments stay
    if agents:
        victim = next(iter(agents))
        removed = tomllib.loads(remove_agent(text, victim))
        assert victim not in removed.get("agents", {})
        assert {k: v for k, v in original.items() if k != "agents"} == {
            k: v for k, v in removed.items() if k != "agents"
        }
        rest = {k: v for k, v in original.get("agents", {}).items() if k != victim}
        assert removed.get("agents", {}) == rest


def _as_toml(fields: AgentFields) -> str:
    return add_agent("", "x", fields)


def _legion(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "LEGION_HOME"}
    return subprocess.run(
        [sys.executable, "-m", "legion", "--home", str(home), *args],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip


def test_a_linked_config_is_edited_where_it_lives(home: Path, tmp_path: Path) -> None:
    """issue 8 (attack pass): legion.toml as a link (a dotfiles checkout) is edited in the
    file it points to; the link stays a link."""
    real = tmp_path / "dotfiles-legion.toml"
    real.write_text('# mine\n[runtime]\nbackend = "none"\n')
    (home / "legion.toml").symlink_to(real)
    added = _legion(home, "agents", "add", "scout")
    assert added.returncode == 0, added.stderr
    assert (home / "legion.toml").is_symlink()
    assert "[agents.scout]" in real.read_text() and real.read_text().startswith("# mine")
    assert _legion(home, "agents", "rm", "scout").returncode == 0
    assert (home / "legion.toml").is_symlink() and "scout" not in real.read_text()


def test_a_dangling_link_or_a_fifo_is_refused_and_nothing_hangs(home: Path, tmp_path: Path) -> None:
    """issue 8 (attack pass): a link to nothing is named as such and nothing is written at
    its target; a FIFO (or a directory) at legion.toml is refused, never read (a FIFO would
    block the reader forever)."""
    nowhere = tmp_path / "gone" / "legion.toml"
    (home / "legion.toml").symlink_to(nowhere)
    for args in (("config", "check"), ("agents", "add", "scout")):
        run = _legion(home, *args)
        assert run.returncode == 2 and "which does not exist" in run.stderr, (args, run.stderr)
    assert not nowhere.exists() and (home / "legion.toml").is_symlink()
    (home / "legion.toml").unlink()
    os.mkfifo(home / "legion.toml")
    for args in (("config", "check"), ("agents", "add", "scout"), ("costs",)):
        run = _legion(home, *args)  # a read would block until the 60 s timeout
        assert run.returncode == 2 and "not a regular file (a FIFO)" in run.stderr, (args, run)
