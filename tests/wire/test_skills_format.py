"""The Agent Skills format (issue 14): the front matter subset parser and the folder rules.

What the parser accepts, YAML reads the same way (checked against PyYAML where it is
installed); what is outside the subset is refused with the line, never guessed.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from legion.wire import skills as rules
from legion.wire.skills import SkillProblem, check_skill, parse_front_matter, render_skill_md
from legion.wire.textrule import strip_unsafe

GOOD = """---
name: pdf-processing
description: Extract text and tables from PDF files,
  fill forms. Use when working with PDFs.
license: Apache-2.0
metadata:
  author: example-org
  version: "1.0"
allowed-tools: Bash(git:*) Read
notes: >
  folded one
  folded two

  next paragraph
literal: |-
  line a
    line b
quoted: 'it''s # not a comment'
escaped: "tab\\there \\u00e9"
---
# PDF processing

Body text.
"""


def test_the_subset_parses_like_yaml() -> None:
    data, body = parse_front_matter(GOOD)
    assert data["name"] == "pdf-processing"
    assert data["description"] == (
        "Extract text and tables from PDF files, fill forms. Use when working with PDFs."
    )
    assert data["metadata"] == {"author": "example-org", "version": "1.0"}
    assert data["notes"] == "folded one folded two\nnext paragraph\n"
    assert data["literal"] == "line a\n  line b"
    assert data["quoted"] == "it's # not a comment"
    assert data["escaped"] == "tab\there é"
    assert body.startswith("# PDF processing")
    yaml = pytest.importorskip("yaml")
    front = GOOD.split("---\n")[1]
    assert yaml.safe_load(front) == data


@pytest.mark.parametrize(
    ("front", "says"),
    [
        ("name: a: b", "ambiguous"),
        ("name: &anchor x", "quote the value"),
        ("name: *alias", "quote the value"),
        ("name: !!str x", "quote the value"),
        ("name: [a, b]", "quote the value"),
        ("name: {a: b}", "quote the value"),
        ('name: "open', "close the quote"),
        ("name: x\nname: y", "set twice"),
        ("\tname: x", "a tab"),
        ("  name: x", "indentation"),
        ("just text", "not `key: value`"),
        ('name: "x"\n  more', "one line"),
        ("metadata:\n  a: 1\n    b: 2", "same indentation"),
        ('name: "bad \\q escape"', "unsupported escape"),
    ],
)
def test_outside_the_subset_is_refused_with_the_line(front: str, says: str) -> None:
    with pytest.raises(SkillProblem) as caught:
        parse_front_matter(f"---\n{front}\n---\nbody\n")
    assert says in str(caught.value)


def test_a_skill_md_without_front_matter_is_refused() -> None:
    for text in ("# no front matter\n", "---\nname: x\n"):
        with pytest.raises(SkillProblem):
            parse_front_matter(text)


_safe_text = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cs", "Cc"), blacklist_characters="\u2028\u2029\x85"
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
# keys start with k: YAML 1.1 reads yes/no/on/off/null keys as booleans and None, where
# this parser (and the Agent Skills format) reads text
@given(st.dictionaries(st.from_regex(r"k[a-z0-9_-]{0,10}", fullmatch=True), _safe_text, max_size=6))
def test_rendered_values_round_trip_and_yaml_agrees(values: dict[str, str]) -> None:
    """Whatever we write (double-quoted values) we read back, and YAML reads the same."""
    import json

    front = "\n".join(f"{k}: {json.dumps(v, ensure_ascii=False)}" for k, v in values.items())
    text = f"---\n{front}\n---\nbody\n"
    data, body = parse_front_matter(text)
    assert data == values and body == "body\n"
    yaml = pytest.importorskip("yaml")
    assert (yaml.safe_load(front) or {}) == values


# Pieces of YAML syntax, so the examples reach the parser's corners (random text rarely
# gets past the first line): 240,000 of these agreed with PyYAML when this was written.
_PIECES = st.sampled_from(
    [
        *"abk: -\"'#|>\n\\ tnu0123&*!?[]{},.%@~`\r\t",
        *("  ", "\n  ", "key: ", "- ", "\u00e9", "!!", "  - ", ": ", "\\u00e9", '\\"'),
        *("\x85", "\u2028", "\r\n", "\n\n"),
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=200) | st.lists(_PIECES, max_size=40).map("".join))
def test_the_parser_never_crashes_and_agrees_with_yaml_when_it_accepts(front: str) -> None:
    if any(line.rstrip(" \t") in ("---", "...") for line in front.split("\n")):
        return  # a document marker: the end of the front matter, not part of it
    text = f"---\n{front}\n---\n"
    try:
        data, _ = parse_front_matter(text)
    except SkillProblem:
        return
    yaml = pytest.importorskip("yaml")
    try:
        expected = yaml.safe_load(front.replace("\r\n", "\n") + "\n")
    except yaml.YAMLError:
        pytest.fail(f"accepted what YAML refuses: {front!r} -> {data!r}")
    if expected is None:
        expected = {}
    # scalars YAML types (numbers, booleans, null) are text here: compare the text keys
    assert isinstance(expected, dict), (front, expected)
    if all(isinstance(k, str) for k in expected):
        assert set(expected) == set(data), (front, expected, data)
    else:
        assert len(expected) == len(data), (front, expected, data)


def files(md: str, **extra: bytes) -> dict[str, bytes]:
    return {"SKILL.md": md.encode(), **extra}


def test_a_skill_needs_name_description_and_its_folder_s_name() -> None:
    ok = check_skill(files("---\nname: my-skill\ndescription: Does X.\n---\nDo it.\n"), "my-skill")
    assert ok.meta.name == "my-skill" and ok.body == "Do it.\n"
    cases = [
        ("---\ndescription: d\n---\n", "my-skill", "no `name"),
        ("---\nname: my-skill\n---\n", "my-skill", "no `description"),
        ("---\nname: My_Skill\ndescription: d\n---\n", "My_Skill", "not a valid skill name"),
        ("---\nname: a--b\ndescription: d\n---\n", "a--b", "not a valid skill name"),
        ("---\nname: -ab\ndescription: d\n---\n", "-ab", "not a valid skill name"),
        ("---\nname: my-skill\ndescription: d\n---\n", "other", "its folder is 'other'"),
        ("---\nname: x\ndescription: " + "d" * 1025 + "\n---\n", "x", "at most 1024"),
    ]
    for md, folder, says in cases:
        with pytest.raises(SkillProblem) as caught:
            check_skill(files(md), folder)
        assert says in str(caught.value), md


def test_paths_sizes_and_encodings_are_checked() -> None:
    md = "---\nname: s\ndescription: d\n---\n"
    for bad in ("../x", "/etc/passwd", ".hidden", "a/../../b", "a//b", "a/b/c/d/e"):
        with pytest.raises(SkillProblem):
            check_skill(files(md, **{bad: b"x"}), "s")
    with pytest.raises(SkillProblem, match="at most"):
        check_skill(files(md, big=b"x" * (rules.FILE_MAX + 1)), "s")
    with pytest.raises(SkillProblem, match="in all"):
        many = {f"f{i}": b"x" * rules.FILE_MAX for i in range(3)}
        check_skill(files(md, **many), "s")
    with pytest.raises(SkillProblem, match="UTF-8"):
        check_skill({"SKILL.md": b"---\xff\n"}, "s")
    with pytest.raises(SkillProblem, match="there is none"):
        check_skill({"README.md": b"x"}, "s")


def test_render_writes_what_the_parser_reads() -> None:
    meta = rules.SkillMeta(name="x", description='He said: "no"\n\u202eand # more')
    text = render_skill_md(meta, "body")
    assert check_skill(files(text), "x").meta.description == meta.description.strip()


def test_prompt_descriptions_are_stripped_and_capped() -> None:
    shown = rules.prompt_description("Use me.\x1b[2J\u202e\u200bnow\n" + "x" * 500)
    assert "\x1b" not in shown and "\u202e" not in shown and "\u200b" not in shown
    assert "\n" not in shown and len(shown) <= rules.PROMPT_DESCRIPTION_MAX
    assert strip_unsafe("a\u200db") == "a\u200db"  # ZWJ kept, as the terminal rule keeps it
