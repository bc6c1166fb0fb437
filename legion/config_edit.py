"""Edits of legion.toml that keep the rest of the file as the operator wrote it.

Used by `legion agents add/rm` and by the TUI's `agent: Add` / `agent: Remove`; the result is
validated before it is written (atomically), so a bad edit changes nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

from legion.config import Config, parse_config
from legion.fsutil import atomic_write


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def agent_section(
    name: str,
    model: str | None,
    role: str | None,
    team: str | None,
    budget_daily: float | None,
    budget_monthly: float | None,
) -> str:
    lines = ["", f"[agents.{name}]"]
    if role:
        lines.append(f"role = {_toml_str(role)}")
    if model:
        lines.append(f"model = {_toml_str(model)}")
    if team:
        lines.append(f"team = {_toml_str(team)}")
    if budget_daily is not None or budget_monthly is not None:
        lines += ["", f"[agents.{name}.budget]"]
        if budget_daily is not None:
            lines.append(f"daily_usd = {budget_daily}")
        if budget_monthly is not None:
            lines.append(f"monthly_usd = {budget_monthly}")
    return "\n".join(lines) + "\n"


def remove_sections(text: str, name: str) -> str:
    """Drop the `[agents.NAME]` and `[agents.NAME.*]` tables, keeping everything else."""
    header = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    out: list[str] = []
    skipping = False
    for line in text.splitlines(keepends=True):
        m = header.match(line)
        if m:
            parts = [p.strip().strip("\"'") for p in m.group(1).split(".")]
            skipping = len(parts) >= 2 and parts[0] == "agents" and parts[1] == name
        if not skipping:
            out.append(line)
    return "".join(out)


def write_validated(path: Path, text: str) -> Config:
    """Validate `text` as legion.toml, then write it atomically; raises ConfigError first."""
    config = parse_config(text, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text)
    return config
