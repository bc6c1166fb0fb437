"""Edits of legion.toml that keep the rest of the file as the operator wrote it.

Used by `legion agents add/rm` and by the TUI's `agent: Add` / `agent: Remove`. The file is
edited with tomlkit (a TOML parser that keeps comments, order and formatting), never with
text surgery, so a multi-line `system_prompt`, an inline table, dotted keys or tables out of
order are edited like any other file, and values are written with TOML's own escaping (a
role with a newline or a quote is a valid string). The result is validated before it is
written (atomically), so a bad edit changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import InlineTable, Table

from legion.config import Config, config_write_target, parse_config
from legion.errors import LegionError
from legion.fsutil import atomic_write


class AgentExists(LegionError):
    status = 409
    code = "agent_exists"


class UnknownAgent(LegionError):
    status = 404
    code = "unknown_agent"


class NotEditable(LegionError):
    status = 422
    code = "config_invalid"


@dataclass
class AgentFields:
    """What `legion agents add` can set; None (or empty) leaves a key out (its default)."""

    role: str | None = None
    mode: str | None = None
    model: str | None = None
    team: str | None = None
    allowed_models: list[str] = field(default_factory=list)
    system_prompt: str | None = None
    budget_daily: float | None = None
    budget_monthly: float | None = None

    def values(self) -> dict[str, Any]:
        """The agent's table as plain data (what the file will say)."""
        out: dict[str, Any] = {}
        for key in ("role", "mode", "model", "team"):
            value = getattr(self, key)
            if value:
                out[key] = value
        if self.allowed_models:
            out["allowed_models"] = list(self.allowed_models)
        if self.system_prompt:
            out["system_prompt"] = self.system_prompt
        budget = {
            k: v
            for k, v in (("daily_usd", self.budget_daily), ("monthly_usd", self.budget_monthly))
            if v is not None
        }
        if budget:
            out["budget"] = budget
        return out


def _parse(text: str) -> tomlkit.TOMLDocument:
    try:
        return tomlkit.parse(text)
    except Exception as exc:  # tomlkit's ParseError and its relatives
        raise NotEditable(
            f"legion.toml is not valid TOML ({exc}); fix it first (`legion config check`)"
        ) from None


def _string(value: str) -> Any:
    # A multi-line text reads best as a multi-line string; tomlkit escapes what needs it.
    return tomlkit.string(value, multiline="\n" in value)


def _table(values: dict[str, Any], inline: bool) -> Any:
    out: Any = tomlkit.inline_table() if inline else tomlkit.table()
    for key, value in values.items():
        if isinstance(value, dict):
            out[key] = _table(value, inline)
        elif isinstance(value, str):
            out[key] = tomlkit.string(value) if inline else _string(value)
        else:
            out[key] = value
    return out


def agent_names(text: str) -> list[str]:
    """The agents defined in a legion.toml text (in file order)."""
    agents = _parse(text).get("agents")
    return list(agents) if isinstance(agents, dict) else []


def add_agent(text: str, name: str, fields: AgentFields) -> str:
    """`text` with an `[agents.NAME]` table added (its budget as `[agents.NAME.budget]`);
    AgentExists if there is one. The name must already be valid (`legion.config.check_name`).

    The new table goes at the end of the file, where an operator looks for the newest
    agent, when that reads back as the same configuration plus the agent; otherwise (agents
    written as an inline table) tomlkit places it inside the existing `agents` table."""
    at_end = _append(text, name, fields)
    if at_end is not None:
        return at_end
    doc = _parse(text)
    agents = doc.get("agents")
    if agents is not None and not isinstance(agents, dict):
        raise NotEditable("`agents` in legion.toml is not a table; fix it first")
    if isinstance(agents, dict) and name in agents:
        raise AgentExists(f"agent {name!r} already exists in legion.toml")
    inline = isinstance(agents, InlineTable)
    table = _table(fields.values(), inline)
    if not inline:
        # A blank line after the agent's last table, so the next header stands apart.
        last = table
        while True:
            subtables = [v for v in last.values() if isinstance(v, Table)]
            if not subtables:
                break
            last = subtables[-1]
        last.add(tomlkit.nl())
    if agents is None:
        doc["agents"] = tomlkit.table(is_super_table=True)
        agents = doc["agents"]
    agents[name] = table
    return tomlkit.dumps(doc)


def _append(text: str, name: str, fields: AgentFields) -> str | None:
    """`text` with the agent's tables appended, or None when that would not read back as
    exactly `text`'s configuration plus the agent (or there is an agent of that name)."""
    import tomllib

    try:
        before = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError):
        return None
    agents = before.get("agents", {})
    if not isinstance(agents, dict) or name in agents:
        return None
    section = tomlkit.document()
    section["agents"] = tomlkit.table(is_super_table=True)
    table = _table(fields.values(), inline=False)
    section["agents"][name] = table
    body = tomlkit.dumps(section)
    if not fields.values():
        body = f"[agents.{name}]\n"  # a table with no keys still needs its header
    head = text if not text or text.endswith("\n") else text + "\n"
    result = head + ("\n" if head.strip() else "") + body
    try:
        after = tomllib.loads(result)
    except (tomllib.TOMLDecodeError, RecursionError):
        return None
    expected = {**before, "agents": {**agents, name: fields.values()}}
    return result if after == expected else None


def remove_agent(text: str, name: str) -> str:
    """`text` without `[agents.NAME]` and its sub-tables, however they are written (headers
    anywhere in the file, an inline table, dotted keys); everything else as it was.
    UnknownAgent if there is no such agent."""
    doc = _parse(text)
    agents = doc.get("agents")
    if not isinstance(agents, dict) or name not in agents:
        raise UnknownAgent(f"no agent named {name!r} in legion.toml")
    del agents[name]
    return tomlkit.dumps(doc)


def remove_sections(text: str, name: str) -> str:
    """`remove_agent`, or `text` unchanged when there is no such agent."""
    try:
        return remove_agent(text, name)
    except UnknownAgent:
        return text


def write_validated(path: Path, text: str) -> Config:
    """Validate `text` as legion.toml, then write it atomically; raises ConfigError first."""
    config = parse_config(text, str(path))
    target = config_write_target(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, text)
    return config
