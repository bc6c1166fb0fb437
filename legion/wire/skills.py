"""Agent Skills: the folder format (a `SKILL.md` with YAML front matter, a Markdown body,
optional scripts and files), its rules, and the front matter parser.

The front matter is read without a YAML library, by a parser of the subset skills use:
`key: value` lines with plain, single- or double-quoted scalars, `|` and `>` block
scalars, plain scalars continued on indented lines, and one level of nested `key: value`
mapping or `- item` list (`metadata:`, `allowed-tools:`). Anything outside the subset
(anchors, aliases, tags, flow collections, multi-line quoted scalars, tabs in
indentation, a `: ` inside a plain scalar) is refused with the line and how to write it,
never guessed at: what this parser accepts, YAML reads the same way. The subset keeps a
YAML dependency out of the agent image and the host, and out of a parser that reads
files an agent wrote.

Standard library and pydantic only (the agent runtime imports it).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from legion.wire.textrule import capped, strip_unsafe

SKILL_FILE = "SKILL.md"
NAME_MAX = 64
_NAME = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
NAME_RULE = (
    "1 to 64 lowercase letters, digits and single '-' between them (no leading, trailing "
    "or double '-'), the same as its folder's name"
)
DESCRIPTION_MAX = 1024
COMPATIBILITY_MAX = 500
# What an operator may install (the folder goes over the control socket, base64-encoded).
SKILL_MD_MAX = 64 * 1024
FILE_MAX = 256 * 1024
TOTAL_MAX = 512 * 1024
FILES_MAX = 64
DEPTH_MAX = 4
# What an agent may write with skill_create.
AGENT_BODY_MAX = 32 * 1024
AGENT_FILE_MAX = 64 * 1024
AGENT_FILES_MAX = 16
AGENT_TOTAL_MAX = 256 * 1024
# In the system prompt: each description, and the whole list.
PROMPT_DESCRIPTION_MAX = 300
PROMPT_LIST_MAX = 4096
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")
_KEY = re.compile(r"([A-Za-z0-9_][A-Za-z0-9_.-]*):(?:[ ]+(.*))?$")
_PLAIN_BAD_START = tuple("[]{}&*!|>%@`,\"'")
_WS = " \t"  # YAML's white space; Python's str.strip() takes far more
# What YAML does not accept as text (outside its printable set), the characters YAML 1.1
# readers take for line breaks (NEL, LS, PS), and tabs (which readers accept in some
# places only): refused in front matter.
_NOT_YAML_TEXT = re.compile(
    "[^\n\x20-\x7e\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]|[\u2028\u2029]"
)


class SkillProblem(ValueError):
    """Why a skill is refused: the message names the file (and line) and the fix."""


def name_problem(name: str) -> str | None:
    if not isinstance(name, str) or len(name) > NAME_MAX or not _NAME.fullmatch(name):
        return f"{str(name)[:80]!r} is not a valid skill name: use {NAME_RULE}"
    return None


def path_problem(path: str) -> str | None:
    """Why `path` cannot name a file inside a skill folder, or None."""
    parts = path.split("/")
    if path.startswith("/") or len(parts) > DEPTH_MAX:
        return f"{path[:120]!r}: use a relative path at most {DEPTH_MAX} folders deep"
    for part in parts:
        if part in ("", ".", "..") or not _SEGMENT.fullmatch(part):
            return (
                f"{path[:120]!r}: each part of a path is 1-64 letters, digits and ._-, not "
                "starting with '.' (no '..', no hidden files)"
            )
    return None


# --- the front matter ----------------------------------------------------------------------


def _unquote_double(text: str, line: int) -> tuple[str, str]:
    """(value, rest) of a double-quoted scalar starting at text[0] == '"'."""
    out: list[str] = []
    i = 1
    escapes = {"\\": "\\", '"': '"', "/": "/", "n": "\n", "t": "\t", "r": "\r", "0": "\0"}
    while i < len(text):
        ch = text[i]
        if ch == '"':
            return "".join(out), text[i + 1 :]
        if ch == "\\":
            nxt = text[i + 1 : i + 2]
            if nxt in escapes:
                out.append(escapes[nxt])
                i += 2
                continue
            if nxt == "u" and re.fullmatch(r"[0-9A-Fa-f]{4}", text[i + 2 : i + 6]):
                code = int(text[i + 2 : i + 6], 16)
                if 0xD800 <= code < 0xE000:  # YAML readers disagree on pairs: refused
                    raise SkillProblem(
                        f"line {line}: \\u{text[i + 2 : i + 6]} is a surrogate escape; write "
                        "the character itself"
                    )
                out.append(chr(code))
                i += 6
                continue
            if nxt == "U" and re.fullmatch(r"[0-9A-Fa-f]{8}", text[i + 2 : i + 10]):
                code = int(text[i + 2 : i + 10], 16)
                if code > 0x10FFFF or 0xD800 <= code < 0xE000:
                    raise SkillProblem(f"line {line}: \\U{text[i + 2 : i + 10]} is not a character")
                out.append(chr(code))
                i += 10
                continue
            raise SkillProblem(f"line {line}: unsupported escape \\{nxt} in a quoted value")
        out.append(ch)
        i += 1
    raise SkillProblem(f"line {line}: a quoted value must end on its line; close the quote")


def _unquote_single(text: str, line: int) -> tuple[str, str]:
    out: list[str] = []
    i = 1
    while i < len(text):
        if text[i] == "'":
            if text[i + 1 : i + 2] == "'":
                out.append("'")
                i += 2
                continue
            return "".join(out), text[i + 1 :]
        out.append(text[i])
        i += 1
    raise SkillProblem(f"line {line}: a quoted value must end on its line; close the quote")


def _after_quote(rest: str, line: int) -> None:
    rest = rest.strip(_WS)
    if rest and not rest.startswith("#"):
        raise SkillProblem(f"line {line}: unexpected text after the closing quote: {rest[:40]!r}")


def _plain(text: str, line: int) -> str:
    """A plain scalar on one line, its trailing comment removed."""
    value = re.split(r"[ \t]#", text, maxsplit=1)[0].strip(_WS)
    indicator = value[:1] in ("-", "?", ":") and value[1:2] in ("", " ")
    if value.startswith(_PLAIN_BAD_START) or indicator or value.startswith("---"):
        raise SkillProblem(
            f"line {line}: {value[:40]!r} starts with a character YAML reads specially; "
            'quote the value ("...")'
        )
    if ": " in value or value.endswith(":"):
        raise SkillProblem(
            f"line {line}: a value containing ': ' is ambiguous in YAML; quote it (\"...\")"
        )
    return value


def _scalar(text: str, line: int) -> str:
    if text.startswith('"'):
        value, rest = _unquote_double(text, line)
        _after_quote(rest, line)
        return value
    if text.startswith("'"):
        value, rest = _unquote_single(text, line)
        _after_quote(rest, line)
        return value
    return _plain(text, line)


def _indent(raw: str, line: int) -> int:
    stripped = raw.lstrip(" ")
    if stripped.startswith("\t"):
        raise SkillProblem(f"line {line}: YAML indentation is spaces, never tabs")
    return len(raw) - len(stripped)


def _block(style: str, lines: list[tuple[int, str]]) -> str:
    """A `|` (literal) or `>` (folded) block scalar from its indented lines."""
    chomp = style[1:2]
    if style[1:].strip(_WS) not in ("", "-"):
        raise SkillProblem(f"block scalar {style!r}: use |, |-, >, or >- (no indent digits)")
    body = [text for _, text in lines]
    while body and not body[-1].strip(_WS):
        body.pop()
    if not body:
        return ""
    indents = [len(t) - len(t.lstrip(" ")) for t in body if t.strip(_WS)]
    cut = min(indents) if indents else 0
    rows = [t[cut:] if t.strip(_WS) else "" for t in body]
    if style[0] == "|":
        text = "\n".join(rows)
    else:
        paragraphs: list[str] = []
        current: list[str] = []
        for row in rows:
            if row.startswith(" "):
                raise SkillProblem(
                    "a > (folded) value has a more-indented line, which YAML folds "
                    "differently; use | or indent all its lines alike"
                )
            if row:
                current.append(row)
            else:
                paragraphs.append(" ".join(current))
                current = []
        paragraphs.append(" ".join(current))
        text = "\n".join(paragraphs)
    return text if chomp == "-" else text + "\n"


def _continued(value: str, number: int, nested: list[tuple[int, str]]) -> str:
    """A scalar and the indented lines that continue it (YAML folding: one line break is a
    space, each blank line a line break)."""
    scalar = _scalar(value, number)
    rows = list(nested)
    while rows and not rows[-1][1].strip(_WS):
        rows.pop()
    if not rows:
        return scalar
    if value[:1] in ("'", '"'):
        raise SkillProblem(f"line {rows[0][0]}: a quoted value must stay on one line")
    if re.search(r"[ \t]#", value):
        raise SkillProblem(f"line {number}: a comment cannot end a line that continues below")
    blanks = 0
    for n, row in rows:
        stripped = row.strip(_WS)
        if not stripped:
            blanks += 1
            continue
        if stripped.startswith("#") or re.search(r"[ \t]#", stripped):
            raise SkillProblem(f"line {n}: no comments inside a value that spans lines")
        scalar += ("\n" * blanks if blanks else " ") + _plain(stripped, n)
        blanks = 0
    return scalar


def parse_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """(front matter, body) of a SKILL.md; SkillProblem when it has none or it is outside
    the supported subset."""
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.replace("\r\n", "\n").split("\n")
    head = "\n".join(
        lines[: next((i for i in range(1, len(lines)) if lines[i] in ("---", "...")), len(lines))]
    )
    bad = _NOT_YAML_TEXT.search(head)
    if bad is not None:
        where = head[: bad.start()].count("\n") + 1
        raise SkillProblem(
            f"line {where}: the front matter holds a tab, control or line-separator "
            f"character (U+{ord(bad.group()):04X}); remove it (indent with spaces; write a tab "
            'as \\t inside "...")'
        )
    if not lines or lines[0].rstrip(_WS) != "---":
        raise SkillProblem("SKILL.md must start with a '---' line, then the front matter")
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].rstrip(_WS) in ("---", "..."))
    except StopIteration:
        raise SkillProblem("the front matter is not closed: add a '---' line after it") from None
    body = "\n".join(lines[end + 1 :]).lstrip("\n")
    rows = [(i + 1, lines[i]) for i in range(1, end)]
    data: dict[str, Any] = {}
    i = 0
    while i < len(rows):
        number, raw = rows[i]
        if not raw.strip(_WS) or raw.lstrip(_WS).startswith("#"):
            i += 1
            continue
        if _indent(raw, number) != 0:
            raise SkillProblem(f"line {number}: unexpected indentation; keys start at column 0")
        match = _KEY.match(raw.rstrip(_WS))
        if match is None:
            raise SkillProblem(
                f"line {number}: {raw.strip(_WS)[:60]!r} is not `key: value` (the front matter "
                "is YAML key: value lines)"
            )
        key, value = match.group(1), (match.group(2) or "").strip(_WS)
        if key in data:
            raise SkillProblem(f"line {number}: {key!r} is set twice")
        i += 1
        nested: list[tuple[int, str]] = []
        while i < len(rows) and (not rows[i][1].strip(_WS) or _indent(rows[i][1], rows[i][0]) > 0):
            nested.append(rows[i])
            i += 1
        if value[:1] in ("|", ">"):
            header = re.fullmatch(r"([|>]-?)(?:[ \t]+#.*)?", value)
            if header is None:
                raise SkillProblem(
                    f"line {number}: a block value starts with |, |-, > or >- alone on its line"
                )
            data[key] = _block(header.group(1), nested)
            continue
        content = [(n, t) for n, t in nested if t.strip(_WS) and not t.lstrip(_WS).startswith("#")]
        if value and not value.startswith("#"):
            data[key] = _continued(value, number, nested)
            continue
        if not content:
            data[key] = ""
            continue
        if content[0][1].lstrip(_WS).startswith("- ") or content[0][1].strip(_WS) == "-":
            items = []
            for n, t in content:
                item = t.strip(_WS)
                if not (item.startswith("- ") or item == "-"):
                    raise SkillProblem(f"line {n}: a list item starts with '- '")
                items.append(_scalar(item[2:].strip(_WS), n) if item != "-" else "")
            data[key] = items
            continue
        mapping: dict[str, str] = {}
        depth = _indent(content[0][1], content[0][0])
        for n, t in content:
            if _indent(t, n) != depth:
                raise SkillProblem(
                    f"line {n}: nested values go one level deep, all at the same indentation"
                )
            sub = _KEY.match(t.strip(_WS))
            if sub is None:
                raise SkillProblem(f"line {n}: {t.strip(_WS)[:60]!r} is not `key: value`")
            if sub.group(1) in mapping:
                raise SkillProblem(f"line {n}: {sub.group(1)!r} is set twice")
            mapping[sub.group(1)] = _scalar((sub.group(2) or "").strip(_WS), n)
        data[key] = mapping
    return data, body


# --- a whole skill ---------------------------------------------------------------------------


class SkillMeta(BaseModel):
    """A skill's front matter, as checked."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str
    license: str | None = None
    compatibility: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    allowed_tools: list[str] = Field(default_factory=list)


@dataclass
class Skill:
    """A skill folder, validated: its front matter, body and files (path -> bytes)."""

    meta: SkillMeta
    body: str
    files: dict[str, bytes] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(len(v) for v in self.files.values())


def check_meta(data: dict[str, Any], folder: str | None) -> SkillMeta:
    """The front matter's required and optional fields, by the Agent Skills rules."""
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise SkillProblem("the front matter has no `name: ...`; add one")
    problem = name_problem(name)
    if problem is not None:
        raise SkillProblem(problem)
    if folder is not None and folder != name:
        raise SkillProblem(f"the skill is named {name!r} but its folder is {folder!r}; rename one")
    description = data.get("description")
    if not isinstance(description, str) or not description.strip():
        raise SkillProblem(
            "the front matter has no `description: ...`; say what the skill does and when to use it"
        )
    if len(description) > DESCRIPTION_MAX:
        raise SkillProblem(
            f"the description is {len(description)} characters; at most {DESCRIPTION_MAX}"
        )
    compatibility = data.get("compatibility")
    if compatibility is not None and (
        not isinstance(compatibility, str) or len(compatibility) > COMPATIBILITY_MAX
    ):
        raise SkillProblem(f"compatibility is text of at most {COMPATIBILITY_MAX} characters")
    license_ = data.get("license")
    if license_ is not None and not isinstance(license_, str):
        raise SkillProblem("license is a single value, e.g. license: Apache-2.0")
    metadata = data.get("metadata", {})
    if metadata == "":
        metadata = {}
    if not isinstance(metadata, dict):
        raise SkillProblem("metadata is a mapping of `key: value` lines, indented under it")
    tools = data.get("allowed-tools", [])
    if isinstance(tools, str):
        tools = tools.split()
    if not isinstance(tools, list):
        raise SkillProblem("allowed-tools is a space-separated list")
    return SkillMeta(
        name=name,
        description=description.strip(),
        license=license_ or None,
        compatibility=compatibility or None,
        metadata={str(k): str(v) for k, v in metadata.items()},
        allowed_tools=[str(t) for t in tools],
    )


def check_skill(
    files: dict[str, bytes],
    folder: str | None,
    *,
    skill_md_max: int = SKILL_MD_MAX,
    file_max: int = FILE_MAX,
    total_max: int = TOTAL_MAX,
    files_max: int = FILES_MAX,
) -> Skill:
    """A whole skill folder (relative path -> content) checked: paths, sizes, SKILL.md's
    encoding and front matter. Raises SkillProblem naming what to fix."""
    if SKILL_FILE not in files:
        raise SkillProblem(f"a skill is a folder with a {SKILL_FILE}; there is none")
    if len(files) > files_max:
        raise SkillProblem(f"the skill has {len(files)} files; at most {files_max}")
    total = 0
    for path, content in files.items():
        problem = path_problem(path)
        if problem is not None:
            raise SkillProblem(problem)
        limit = skill_md_max if path == SKILL_FILE else file_max
        if len(content) > limit:
            raise SkillProblem(f"{path} is {len(content)} bytes; at most {limit}")
        total += len(content)
    if total > total_max:
        raise SkillProblem(f"the skill is {total} bytes in all; at most {total_max}")
    try:
        text = files[SKILL_FILE].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SkillProblem(f"{SKILL_FILE} is not UTF-8 text (byte {exc.start})") from None
    if "\x00" in text:
        raise SkillProblem(f"{SKILL_FILE} contains a NUL character")
    data, body = parse_front_matter(text)
    return Skill(check_meta(data, folder), body, dict(files))


def render_skill_md(meta: SkillMeta, body: str) -> str:
    """A SKILL.md for `meta` and `body` (values double-quoted: always inside the subset)."""

    def quoted(value: str) -> str:
        return json.dumps(value, ensure_ascii=False)

    lines = ["---", f"name: {meta.name}", f"description: {quoted(meta.description)}"]
    if meta.license:
        lines.append(f"license: {quoted(meta.license)}")
    if meta.compatibility:
        lines.append(f"compatibility: {quoted(meta.compatibility)}")
    if meta.metadata:
        lines.append("metadata:")
        lines += [f"  {k}: {quoted(v)}" for k, v in meta.metadata.items()]
    lines += ["---", "", body.strip("\n"), ""]
    return "\n".join(lines)


def prompt_description(description: str) -> str:
    """A skill's description as the system prompt lists it."""
    return capped(strip_unsafe(description, keep_newlines=False), PROMPT_DESCRIPTION_MAX)


# --- on the wire ---------------------------------------------------------------------------

SkillSource = str  # "fleet", "agent" (installed for one agent) or "own" (agent-written)


class SkillInfo(BaseModel):
    name: str
    description: str
    source: str = Field(description="fleet, agent (installed for it) or own (agent-written)")
    agent: str | None = None
    files: int = 0
    bytes: int = 0
    problem: str = Field(default="", description="Why it is not usable (own skills only).")


class SkillList(BaseModel):
    skills: list[SkillInfo]


class SkillUpload(BaseModel):
    """`POST /v1/skills` (control socket): a skill folder, each file base64-encoded."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=NAME_MAX)
    agent: str | None = Field(default=None, description="Install for this agent only.")
    files: dict[str, str] = Field(description="Relative path -> base64 content.")
    replace: bool = False


class SkillPromote(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    agent: str = Field(description="The agent that wrote the skill.")
    to: str | None = Field(default=None, description="An agent to install it for; none: fleet.")
    replace: bool = False


class SkillText(BaseModel):
    name: str
    source: str
    agent: str | None = None
    skill_md: str
    files: list[str]
