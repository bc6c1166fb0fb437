"""issue 15 items 5, 6 and 8: names (agents and teams, reserved names included), HOST:PORT
allow entries, finite and ranged money, and bounded TOML nesting; each refusal names the
file, the key or line, and the fix."""

from __future__ import annotations

import pytest

from legion.config import MAX_TOML_NESTING, check_name, nesting_problem, parse_config
from legion.errors import ConfigError

FILE = "/etc/legion/fleet.toml"


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, FILE)
    return info.value.problems


@pytest.mark.parametrize("name", ["host", "operator", "system"])
def test_reserved_names_apply_to_teams_too(name: str) -> None:
    """Decision (docs/config.md): one rule for every name; a team named `operator` would read
    as the host's own principal in audit records and in future team-addressed routes."""
    [problem] = problems(f"[teams.{name}]\n")
    assert problem.startswith(f"{FILE}:1: teams.{name}:") and "pick another team name" in problem


@pytest.mark.parametrize(
    "name",
    ["zed]\nrole = \"z\"\n[agents.bob.budget]\ndaily_usd = 999999.0\n#", "carol.permissions",
     "Bob", "", "a" * 33, "-a", "a_b", "é"],
)  # fmt: skip
def test_check_name_refuses_what_the_config_refuses(name: str) -> None:
    problem = check_name(name)
    assert problem is not None and "fix:" in problem
    assert "\n" not in problem.split("; fix:")[1]


def test_check_name_takes_the_documented_rule() -> None:
    for name in ("a", "scout", "a-1", "z" * 32):
        assert check_name(name) is None


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("h:80:80", "brackets"),
        ("[::1", "brackets"),
        ("::1:443", "brackets"),
        ("[::g]:80", "not an IPv6 address"),
        ("host", "not HOST:PORT"),
        ("host:0", "1-65535"),
        ("host:65536", "1-65535"),
        ("host:http", "1-65535"),
        ("a b:80", "not a host name"),
    ],
)
def test_egress_allow_entries_are_host_port(entry: str, why: str) -> None:
    [problem] = problems(f'[egress]\nallow = ["{entry}"]\n')
    assert problem.startswith(f"{FILE}:2: egress.allow.0:"), problem
    assert why in problem and "fix: write HOST:PORT" in problem and "[::1]:8080" in problem


def test_egress_allow_takes_names_ipv4_and_bracketed_ipv6() -> None:
    config = parse_config(
        '[egress]\nallow = ["127.0.0.1:8080", "api.internal.:443", "[::1]:80", '
        '"[fe80::1%eth0]:80"]\n',
        FILE,
    )
    assert len(config.egress.allow) == 4


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[agents.a.budget]\ndaily_usd = inf\n", "agents.a.budget.daily_usd"),
        ("[agents.a.budget]\nmonthly_usd = nan\n", "agents.a.budget.monthly_usd"),
        ("[agents.a.budget]\ndaily_usd = 1e9\n", "agents.a.budget.daily_usd"),
        ("[agents.a.budget]\ndaily_usd = -1.0\n", "agents.a.budget.daily_usd"),
        ("[llm]\nfleet_daily_usd = +inf\n", "llm.fleet_daily_usd"),
        ('[llm.models.m]\nmodel = "x"\ninput_cost_per_mtok = inf\n', "input_cost_per_mtok"),
        ("[host]\nvisibility_timeout_s = nan\n", "host.visibility_timeout_s"),
        ("[runtime]\ncpus = inf\n", "runtime.cpus"),
    ],
)
def test_money_and_every_number_are_finite_and_ranged(text: str, key: str) -> None:
    [problem] = problems(text)
    assert key in problem and "fix:" in problem


def test_nesting_is_bounded_with_the_line_named() -> None:
    deep = "x = " + "[" * 500 + "]" * 500
    [problem] = problems(f"[host]\n\n{deep}\n")
    assert problem.startswith(f"{FILE}:3:") and f"more than {MAX_TOML_NESTING} deep" in problem
    assert "fix: flatten" in problem


def test_nesting_scan_skips_strings_and_comments() -> None:
    many = "[" * 100
    text = (
        f'a = "{many}\\"{many}"\n'
        f"b = '{many}'\n"
        f'c = """\n{many}\n"""\n'
        f"d = '''{many}'''\n"
        f"# {many}\n"
        f"e = [[1], [2]] # {many}\n"
        f'"{many}" = 1\n'
    )
    assert nesting_problem(text) is None
    assert nesting_problem("x = " + "[" * (MAX_TOML_NESTING + 1)) is not None
    assert nesting_problem("x = " + "[" * MAX_TOML_NESTING + "]" * MAX_TOML_NESTING) is None
