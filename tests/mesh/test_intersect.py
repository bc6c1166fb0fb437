"""The pattern intersection of a sub-agent's permissions (issue 14): whatever the
intersected list matches, both lists match (it never grants what either denies)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from legion.mesh.globs import any_match
from legion.mesh.permissions import intersect

_segment = st.sampled_from(["a", "b", "ab", "*", "**", "?", "a*", "x"])
_pattern = st.lists(_segment, min_size=1, max_size=4).map("/".join)
_name = st.lists(st.sampled_from(["a", "b", "ab", "x", "ba"]), min_size=1, max_size=5).map("/".join)


@settings(max_examples=500, deadline=None)
@given(st.lists(_pattern, max_size=4), st.lists(_pattern, max_size=4), st.lists(_name, max_size=10))
def test_the_intersection_grants_nothing_either_side_denies(
    own: list[str], bound: list[str], names: list[str]
) -> None:
    both = intersect(own, bound)
    for name in names:
        if any_match(both, name):
            assert any_match(own, name) and any_match(bound, name), (own, bound, both, name)


def test_covered_globs_and_literal_names_are_kept() -> None:
    assert intersect(["shared/public/**"], ["shared/**"]) == ["shared/public/**"]
    assert intersect(["shared/**"], ["shared/public/**"]) == ["shared/public/**"]
    assert intersect(["notes/x"], ["notes/*"]) == ["notes/x"]
    assert intersect(["a/*"], ["a/b*"]) == []  # overlapping globs: not intersected (denied)
    assert intersect(["**"], ["team/**"]) == ["team/**"]
