"""issue 15: each input rule is one rule. The regex the OpenAPI schema states and the function
the server checks with agree on every input, and the new spellings accept exactly what the
old checks accepted (keys, topics), so tightening the schema changed nothing for clients.
"""

from __future__ import annotations

import base64
import re

from hypothesis import example, given, settings
from hypothesis import strategies as st

from legion.gateway.egress import parse_url
from legion.gateway.netcheck import split_host_port
from legion.wire import rules

# Characters that matter to the rules, plus a few that never appear in valid input.
RULE_CHARS = "aZ09._:@+=-/*? é\t\n%$[]"
texts = st.text(alphabet=RULE_CHARS, max_size=24)


def regex(pattern: str) -> re.Pattern[str]:
    """A schema pattern as JSON Schema means it: anchored at both ends, `$` at the very end."""
    assert pattern.startswith("^") and pattern.endswith("$")
    return re.compile(pattern[1:-1])


KEY = regex(rules.KEY_PATTERN)
GLOB = regex(rules.GLOB_PATTERN)
NAME = regex(rules.NAME_PATTERN)
URL = regex(rules.URL_PATTERN)

# The checks as they were before issue 15, to prove the new spelling is the same rule.
OLD_KEY_RE = re.compile(r"^[A-Za-z0-9._:@+=\-]+(/[A-Za-z0-9._:@+=\-]+)*$")
OLD_DOT_SEGMENT = re.compile(r"(^|/)\.{1,2}(/|$)")


def old_key_ok(key: str) -> bool:
    return bool(OLD_KEY_RE.fullmatch(key)) and not OLD_DOT_SEGMENT.search(key)


def old_topic_pattern_ok(topic: str) -> bool:
    singles = topic.replace("**", "").count("*") + topic.count("?")
    bare = topic.replace("*", "x").replace("?", "x")
    return (
        len(topic) <= 200
        and singles <= 2
        and bool(topic)
        and bool(OLD_KEY_RE.fullmatch(bare))
        and not OLD_DOT_SEGMENT.search(topic)
    )


@settings(max_examples=2000)
@given(texts)
@example("a/./b")
@example("...")
@example("a/..")
@example(".a/..b")
def test_key_regex_is_the_key_check_and_the_old_rule(key: str) -> None:
    ok = rules.key_problem(key) is None
    assert ok == bool(KEY.fullmatch(key)) == old_key_ok(key)


@settings(max_examples=3000)
@given(st.text(alphabet="ab./*?", max_size=16))
@example("***")
@example("news/*/*/*")
@example("**?**")
@example("*?*")
@example("./*")
@example("..**")
@example("a/**b**c**d")
def test_glob_regex_is_the_glob_check_and_the_old_topic_pattern_rule(pattern: str) -> None:
    ok = rules.glob_problem(pattern) is None
    assert ok == bool(GLOB.fullmatch(pattern)) == old_topic_pattern_ok(pattern)


@settings(max_examples=1000)
@given(st.text(alphabet="az09-_A.", max_size=40))
def test_name_regex_is_the_name_check(name: str) -> None:
    assert (rules.name_problem(name) is None) == bool(NAME.fullmatch(name))


@settings(max_examples=500, deadline=None)
@given(st.from_regex(URL, fullmatch=True))
def test_every_url_the_schema_allows_is_one_the_proxy_parses(url: str) -> None:
    """No schema-valid URL is refused as invalid (that would be refused-but-valid)."""
    target = parse_url(url)
    assert target.scheme in ("http", "https") and target.host and 0 < target.port < 65536


@given(st.text(max_size=40))
def test_url_regex_is_the_url_check(url: str) -> None:
    assert (rules.url_problem(url) is None) == bool(URL.fullmatch(url))


@settings(max_examples=500)
@given(
    st.text(alphabet="ab:.[]019%", max_size=16) | st.from_regex(r"\[[0-9a-f:]{2,12}\]:[0-9]{1,5}")
)
@example("h:80:80")
@example("[::1")
@example("::1:443")
@example("[::1]:8080")
@example("[fe80::1%eth0]:80")
def test_allow_entries_the_config_takes_are_usable_pairs(entry: str) -> None:
    """What `[egress] allow` accepts, the proxy reads as the one pair the operator meant."""
    if rules.host_port_problem(entry) is None:
        pair = split_host_port(entry)
        assert pair is not None and 0 < pair[1] < 65536
        if not entry.startswith("["):
            assert ":" not in pair[0]  # `h:80:80` is refused, not read as host `h:80`


@given(st.text(max_size=12))
def test_header_rules_are_the_header_checks(text: str) -> None:
    name_ok = rules.header_name_problem(text) is None
    assert name_ok == bool(regex(rules.HEADER_NAME_PATTERN).fullmatch(text))
    value_ok = rules.header_value_problem(text) is None
    assert value_ok == bool(regex(rules.HEADER_VALUE_PATTERN).fullmatch(text))
    assert not value_ok or not any(c in text for c in "\r\n\0")


@given(st.binary(max_size=20).map(lambda b: base64.b64encode(b).decode()) | st.text(max_size=12))
def test_base64_regex_is_the_base64_check(text: str) -> None:
    ok = rules.base64_problem(text) is None
    assert ok == bool(regex(rules.BASE64_PATTERN).fullmatch(text))
