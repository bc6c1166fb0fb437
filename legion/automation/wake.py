"""Wake checks: cheap checks in the host, and a model turn only when one finds something.

Every `[agents.NAME.wake] interval_s` the host looks, in this order:

1. the lane: a wake whose item is still unhandled, or any item waiting in the agent's
   inbox, means the agent is awake already; the check stops there (`pending`, `busy`)
   and what it would have found is found next time;
2. the blackboard: changes since the last check to keys matching `watch` (config) or a
   `when blackboard PATTERN changes` rule, that the agent may read;
3. due times: the `every ... at HH:MM`, `every 30m` and `at DATE TIME` rules.

Findings go to the agent's inbox as one item from `host` (`{"wake": {"findings": [...]}}`),
handled as a turn like any other. A check that finds nothing costs no model call, is
counted (`legion status`), and writes nothing to the audit log.

HEARTBEAT.md is the agent's own file: it is read with no link following, only when it is
a regular file of at most HEARTBEAT_MAX_BYTES, and only its rule lines (grammar below)
mean anything to the host; everything else in it is prose for the model. A rule that
does not parse is reported in `legion status`, never guessed at.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING

from legion.automation.schedule import host_timezone, instant, zone
from legion.errors import InboxFull
from legion.fsutil import UnsafeEntry, open_path_nofollow, read_regular_file_nofollow
from legion.mesh.globs import check_agent_pattern
from legion.paths import Paths
from legion.wire.automation import WakeStatus
from legion.wire.events import WakeChecked

if TYPE_CHECKING:
    from legion.host import Host

log = logging.getLogger("legion.wake")

HEARTBEAT = "HEARTBEAT.md"
HEARTBEAT_MAX_BYTES = 4096  # the cap of HEARTBEAT.md as a bootstrap file
MAX_RULES = 50
MAX_RULE_CHARS = 300
MAX_NOTE_CHARS = 200
MAX_KEYS_SHOWN = 20
MIN_RULE_INTERVAL_S = 60
DAYS = {
    "monday": 0,
    "tuesday": 1,
    "wednesday": 2,
    "thursday": 3,
    "friday": 4,
    "saturday": 5,
    "sunday": 6,
}
GROUPS = {"day": set(range(7)), "weekday": {0, 1, 2, 3, 4}, "weekend": {5, 6}}
_BB = re.compile(r"^when\s+blackboard\s+(\S+)\s+changes\b\s*:?\s*(.*)$", re.IGNORECASE)
_EVERY_AT = re.compile(
    r"^every\s+([a-z,\s]+?)\s+at\s+(\d{1,2}):(\d{2})\b\s*:?\s*(.*)$", re.IGNORECASE
)
_EVERY = re.compile(r"^every\s+(\d+)\s*([mhd])\b\s*:?\s*(.*)$", re.IGNORECASE)
_AT = re.compile(
    r"^at\s+(\d{4})-(\d{2})-(\d{2})[ T](\d{1,2}):(\d{2})\b\s*:?\s*(.*)$", re.IGNORECASE
)
_KEYWORD = re.compile(r"^[-*]\s+(when|every|at)\b\s*(.*)$", re.IGNORECASE)
GRAMMAR = (
    "rules look like `- when blackboard PATTERN changes`, `- every weekday at 09:00`, "
    "`- every monday,thursday at 18:30`, `- every 2h`, `- at 2030-01-31 09:00`"
)


@dataclass(frozen=True)
class Rule:
    kind: str  # blackboard | daily | interval | once
    text: str
    note: str = ""
    pattern: str = ""
    days: frozenset[int] = frozenset()
    hour: int = 0
    minute: int = 0
    every_s: int = 0
    when: datetime | None = None


def parse_rules(text: str) -> tuple[list[Rule], list[str]]:
    """The rules of a HEARTBEAT.md text, and a message per rule line it did not understand."""
    rules: list[Rule] = []
    errors: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        head = _KEYWORD.match(line)
        if head is None:
            continue  # prose for the model
        body = " ".join(line[1:].split())
        shown = body if len(body) <= 80 else body[:77] + "..."
        if len(line) > MAX_RULE_CHARS:
            errors.append(f"line {number}: longer than {MAX_RULE_CHARS} characters")
            continue
        if len(rules) >= MAX_RULES:
            errors.append(f"line {number}: more than {MAX_RULES} rules; the rest are ignored")
            break
        problem, rule = _rule(body)
        if rule is None:
            errors.append(f"line {number}: `{shown}`: {problem or 'not understood'}; {GRAMMAR}")
        else:
            rules.append(rule)
    return rules, errors


def _note(text: str) -> str:
    return text.strip()[:MAX_NOTE_CHARS]


def _rule(body: str) -> tuple[str, Rule | None]:
    m = _BB.match(body)
    if m:
        problem = check_agent_pattern(m[1])
        if problem:
            return problem, None
        return "", Rule("blackboard", body, _note(m[2]), pattern=m[1])
    m = _EVERY_AT.match(body)
    if m:
        days: set[int] = set()
        for word in re.split(r"[,\s]+", m[1].strip().lower()):
            if word in GROUPS:
                days |= GROUPS[word]
            elif word in DAYS or (len(word) >= 3 and any(d.startswith(word) for d in DAYS)):
                days.add(next(v for d, v in DAYS.items() if d.startswith(word)))
            elif word not in ("and", ""):
                return f"{word!r} is not a day (day, weekday, weekend, monday...)", None
        hour, minute = int(m[2]), int(m[3])
        if hour > 23 or minute > 59:
            return f"{hour:02d}:{minute:02d} is not a time of day", None
        return "", Rule("daily", body, _note(m[4]), days=frozenset(days), hour=hour, minute=minute)
    m = _EVERY.match(body)
    if m:
        seconds = int(m[1]) * {"m": 60, "h": 3600, "d": 86400}[m[2].lower()]
        if seconds < MIN_RULE_INTERVAL_S:
            return "the shortest interval is 1m", None
        return "", Rule("interval", body, _note(m[3]), every_s=seconds)
    m = _AT.match(body)
    if m:
        try:
            when = datetime(int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]))
        except ValueError as exc:
            return str(exc), None
        return "", Rule("once", body, _note(m[6]), when=when)
    return "", None


def read_heartbeat(paths: Paths, agent: str) -> tuple[str | None, str]:
    """(text, state) of the agent's HEARTBEAT.md. The host-owned copy (identity/NAME/files,
    written through `update_workspace`) when that folder exists, else the one in the
    agent's workspace. Nothing is followed; anything but a small regular file is refused."""
    home_fd = os.open(paths.home, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for folder in (f"identity/{agent}/files", f"agents/{agent}/workspace"):
            try:
                dir_fd = open_path_nofollow(home_fd, folder, shown_root=str(paths.home))
            except FileNotFoundError:
                continue
            try:
                data = read_regular_file_nofollow(
                    dir_fd, HEARTBEAT, HEARTBEAT_MAX_BYTES, shown=f"{folder}/{HEARTBEAT}"
                )
            except FileNotFoundError:
                return None, "absent"
            finally:
                os.close(dir_fd)
            return data.decode("utf-8", errors="replace"), "read"
        return None, "absent"
    except UnsafeEntry as exc:
        return None, f"refused: {exc.path} is {exc.found}"
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or exc}"
    finally:
        os.close(home_fd)


@dataclass
class _State:
    checks: int = 0
    skipped: int = 0
    dispatched: int = 0
    last_check_at: float | None = None
    last_outcome: str = "not checked yet"
    cursor: int | None = None
    item_id: int | None = None
    heartbeat: str = "not read yet"
    source: str = ""
    rules: list[Rule] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    fired: dict[str, float] = field(default_factory=dict)
    running: bool = False


class WakeChecks:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.state: dict[str, _State] = {}
        self.host_tz = host_timezone()

    def _of(self, agent: str) -> _State:
        state = self.state.get(agent)
        if state is None:
            state = self.state[agent] = _State(last_check_at=None)
        return state

    def interval(self, agent: str) -> float:
        cfg = self.host.config.agents.get(agent)
        return cfg.wake.interval_s if cfg is not None else 0.0

    def status(self, agent: str) -> WakeStatus | None:
        interval = self.interval(agent)
        if not interval:
            return None
        s = self._of(agent)
        heartbeat = s.heartbeat if s.heartbeat != "read" else f"read ({len(s.rules)} rules)"
        return WakeStatus(
            interval_s=interval,
            checks=s.checks,
            skipped=s.skipped,
            dispatched=s.dispatched,
            last_check_at=s.last_check_at,
            last_outcome=s.last_outcome,
            heartbeat=heartbeat,
            rule_errors=s.errors,
        )

    async def check_due(self, now: float | None = None) -> None:
        """Run the check of every agent whose interval has passed."""
        now = self.host.clock() if now is None else now
        for agent in list(self.host.config.agents):
            interval = self.interval(agent)
            if not interval:
                continue
            state = self._of(agent)
            last = state.last_check_at if state.last_check_at is not None else self.host.started_at
            if now - last >= interval and not state.running:
                await self.check(agent, now)

    async def check(self, agent: str, now: float | None = None) -> str:
        """One wake check of `agent`; returns its outcome."""
        state = self._of(agent)
        if state.running:
            return "running"
        state.running = True
        try:
            now = self.host.clock() if now is None else now
            outcome, found = await self._check(agent, state, now)
        finally:
            state.running = False
        state.checks += 1
        state.last_outcome = outcome
        if outcome == "dispatched":
            state.dispatched += 1
        else:
            state.skipped += 1
        self.host.bus.publish(
            WakeChecked(
                at=now, agent=agent, outcome=outcome, findings=found, skipped_total=state.skipped
            )
        )
        return outcome

    async def _check(self, agent: str, state: _State, now: float) -> tuple[str, int]:
        host = self.host
        since = state.last_check_at if state.last_check_at is not None else host.started_at
        if state.item_id is not None:
            row = host.store.execute("SELECT 1 FROM inbox WHERE id = ?", (state.item_id,))
            if row.fetchone() is not None:
                state.last_check_at = now
                return "pending", 0
            state.item_id = None
        if host.inboxes.depth(agent) > 0:
            state.last_check_at = now
            return "busy", 0
        await self._load_rules(agent, state)
        findings = await self._blackboard(agent, state)
        findings += self._due(agent, state, since, now)
        state.last_check_at = now
        if not findings:
            return "nothing", 0
        lines = "\n".join(f"- {f}" for f in findings)
        payload = {
            "wake": {"findings": findings, "at": now},
            "text": f"[wake check] The host found something for you:\n{lines}",
        }
        try:
            state.item_id = host.inboxes.send("host", agent, payload)
        except InboxFull:
            return "busy", len(findings)
        host.audit.append(
            "host", "wake.dispatch", agent, "allow", findings=len(findings), item=state.item_id
        )
        return "dispatched", len(findings)

    async def _load_rules(self, agent: str, state: _State) -> None:
        text, heartbeat = await asyncio.to_thread(read_heartbeat, self.host.paths, agent)
        if heartbeat != state.heartbeat and heartbeat.startswith(("refused", "unreadable")):
            # Once per change of state, not every interval.
            self.host.audit.append("host", "wake.heartbeat_refused", agent, "deny", why=heartbeat)
            log.warning(
                "HEARTBEAT.md refused; its rules are not used",
                extra={"fields": {"agent": agent, "why": heartbeat}},
            )
        state.heartbeat = heartbeat
        source = text or ""
        if source != state.source:
            state.source = source
            state.rules, state.errors = parse_rules(source)

    async def _blackboard(self, agent: str, state: _State) -> list[str]:
        bb = self.host.blackboard
        cfg = self.host.config.agents[agent]
        patterns = list(
            dict.fromkeys(
                [*cfg.wake.watch, *(r.pattern for r in state.rules if r.kind == "blackboard")]
            )
        )
        cursor, state.cursor = state.cursor, bb.cursor
        if cursor is None or not patterns:
            return []
        readable = self.host.readable_by(agent)
        findings: list[str] = []
        for pattern in patterns:
            result = await bb.watch(pattern, cursor, 0.0, readable=readable)
            if result.reset:
                findings.append(
                    f"more blackboard changes under {pattern} than the host keeps; re-list it"
                )
                continue
            if not result.changes:
                continue
            shown = ", ".join(
                f"{c.key} v{c.version} ({c.op} by {c.writer})"
                for c in result.changes[:MAX_KEYS_SHOWN]
            )
            more = len(result.changes) - MAX_KEYS_SHOWN
            notes = [
                r.note
                for r in state.rules
                if r.kind == "blackboard" and r.pattern == pattern and r.note
            ]
            findings.append(
                f"{len(result.changes)} blackboard change(s) under {pattern}: {shown}"
                + (f" and {more} more" if more > 0 else "")
                + (f" (your rule: {notes[0]})" if notes else "")
            )
        return findings

    def _due(self, agent: str, state: _State, since: float, now: float) -> list[str]:
        cfg = self.host.config.agents[agent]
        tz = zone(cfg.wake.timezone or self.host.config.automation.timezone or self.host_tz)
        findings: list[str] = []
        for rule in state.rules:
            if rule.kind == "blackboard":
                continue
            if rule.kind == "interval":
                last = state.fired.setdefault(rule.text, since)
                if now - last < rule.every_s:
                    continue
                state.fired[rule.text] = now
            elif rule.kind == "once":
                assert rule.when is not None
                if not since < instant(rule.when, tz) <= now:
                    continue
            elif not _daily_due(rule, tz, since, now):
                continue
            findings.append(f"due: {rule.text}" + (f" ({rule.note})" if rule.note else ""))
        return findings


def _daily_due(rule: Rule, tz: object, since: float, now: float) -> bool:
    """Whether an occurrence of a daily rule falls in (since, now] (at most 8 days back)."""
    from zoneinfo import ZoneInfo

    assert isinstance(tz, ZoneInfo)
    first = datetime.fromtimestamp(max(since, now - 8 * 86400), tz).date()
    last = datetime.fromtimestamp(now, tz).date()
    day: date = first
    while day <= last:
        if day.weekday() in rule.days:
            wall = datetime(day.year, day.month, day.day, rule.hour, rule.minute)
            if since < instant(wall, tz) <= now:
                return True
        day += timedelta(days=1)
    return False
