"""The TUI's key bindings: ids, default keys, what each does, and the key-string grammar.

This table lives in `legion` (stdlib only) so that `legion config check` validates
`[tui.keys]` without importing the TUI; the TUI builds every `Binding` from it, so an id
here and a binding there cannot drift apart (tests/tui/test_keys.py checks both ways).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass


@dataclass(frozen=True)
class KeySpec:
    id: str
    key: str  # Textual key string: "ctrl+p", "f6", "question_mark", several comma-separated
    action: str
    description: str  # short, for the footer and the help screen
    tooltip: str  # one sentence, for the help screen and the footer's tooltip
    scope: str  # where it applies: app, fleet, sidebar, pane, blackboard, audit, browser
    show: bool = True  # in the footer (every binding is on the help screen)


BINDINGS: tuple[KeySpec, ...] = (
    KeySpec("help", "f1,question_mark", "help", "Help", "Show every key and what it does.", "app"),
    KeySpec(
        "palette",
        "ctrl+p",
        "command_palette",
        "Commands",
        "Open the command palette: every action on the host, by name.",
        "app",
        show=False,
    ),
    KeySpec(
        "quit",
        "ctrl+q",
        "quit",
        "Quit",
        "Leave the TUI (an attached daemon keeps running; an embedded host stops its fleet).",
        "app",
    ),
    KeySpec(
        "show-fleet",
        "f2",
        "show('fleet')",
        "Fleet",
        "The fleet: agents, their panes and the events ticker.",
        "app",
        show=False,
    ),
    KeySpec(
        "show-blackboard",
        "f3",
        "show('blackboard')",
        "Blackboard",
        "Browse blackboard keys, values, versions, writers, TTLs and claims.",
        "app",
        show=False,
    ),
    KeySpec(
        "show-audit",
        "f4",
        "show('audit')",
        "Audit",
        "The audit log, filterable by agent and decision, with its verification.",
        "app",
        show=False,
    ),
    KeySpec(
        "show-costs",
        "f5",
        "show('costs')",
        "Costs",
        "Spend today and this month against the caps, fleet-wide and per agent.",
        "app",
        show=False,
    ),
    KeySpec(
        "show-browser",
        "f10",
        "show('browser')",
        "Browsers",
        "The agents' browsers: page, last action, who waits for a human, the VNC hand-off.",
        "app",
        show=False,
    ),
    KeySpec("next-pane", "f6", "next_pane", "Next pane", "Focus the next agent pane.", "fleet"),
    KeySpec(
        "prev-pane",
        "shift+f6",
        "prev_pane",
        "Prev pane",
        "Focus the previous agent pane.",
        "fleet",
        show=False,
    ),
    KeySpec(
        "zoom-pane",
        "f7",
        "zoom",
        "Zoom",
        "Show the focused pane alone, or all panes again.",
        "fleet",
    ),
    KeySpec(
        "close-pane",
        "f8",
        "close_pane",
        "Close pane",
        "Close the focused agent pane (the agent keeps running).",
        "fleet",
        show=False,
    ),
    KeySpec(
        "toggle-sidebar",
        "f9",
        "toggle_sidebar",
        "Sidebar",
        "Show or hide the fleet sidebar.",
        "fleet",
    ),
    KeySpec(
        "focus-sidebar",
        "escape",
        "focus_sidebar",
        "To fleet",
        "Move the focus to the fleet sidebar.",
        "fleet",
        show=False,
    ),
    KeySpec(
        "open-pane",
        "enter",
        "open_pane",
        "Open",
        "Open (or focus) the selected agent's pane.",
        "sidebar",
    ),
    KeySpec(
        "steer",
        "ctrl+s",
        "steer",
        "Steer",
        "Send the input as a steer: it reaches the agent's running turn between two tool "
        "rounds (or is its next turn when idle), ahead of its queue.",
        "pane",
    ),
    KeySpec(
        "bb-refresh", "ctrl+r", "refresh", "Refresh", "Read the blackboard again.", "blackboard"
    ),
    KeySpec(
        "bb-delete",
        "delete",
        "delete_key",
        "Delete",
        "Delete the selected key (asks first).",
        "blackboard",
    ),
    KeySpec("audit-refresh", "ctrl+r", "refresh", "Refresh", "Read the audit log again.", "audit"),
    KeySpec(
        "audit-denied",
        "ctrl+d",
        "toggle_denied",
        "Denied only",
        "Show only denied decisions, or all.",
        "audit",
    ),
    KeySpec(
        "audit-verify",
        "ctrl+v",
        "verify",
        "Verify",
        "Check the audit log's hash chain now.",
        "audit",
    ),
    KeySpec(
        "browser-handoff",
        "h",
        "handoff",
        "Hand off",
        "Open a VNC link to the selected agent's browser (shown here, with its ssh -L hint).",
        "browser",
    ),
    KeySpec(
        "browser-done",
        "d",
        "done",
        "Resume",
        "End the hand-off: the link stops working and the waiting agent resumes (a note).",
        "browser",
    ),
    KeySpec(
        "browser-copy",
        "c",
        "copy_link",
        "Copy link",
        "Copy the hand-off link to the clipboard (OSC 52: the terminal must allow it).",
        "browser",
        show=False,
    ),
    KeySpec(
        "browser-stop",
        "s",
        "stop",
        "Stop",
        "Stop the selected agent's browser container (asks first; its next action restarts it).",
        "browser",
        show=False,
    ),
    KeySpec(
        "browser-refresh",
        "ctrl+r",
        "refresh",
        "Refresh",
        "Read every browser's state again.",
        "browser",
        show=False,
    ),
    KeySpec(
        "setup-skip",
        "escape",
        "skip",
        "Skip",
        "Leave the first-run setup (`legion setup` does it later, or write legion.toml).",
        "setup",
    ),
    KeySpec(
        "dialog-cancel",
        "escape",
        "cancel",
        "Cancel",
        "Close the form without doing anything.",
        "form",
    ),
    KeySpec("dialog-yes", "y", "answer(True)", "Yes", "Yes, do it.", "confirm"),
    KeySpec(
        "dialog-no", "n,escape", "answer(False)", "No", "No, leave things as they are.", "confirm"
    ),
    KeySpec("dialog-close", "escape,q", "close", "Close", "Close this read-out.", "readout"),
)

BY_ID: dict[str, KeySpec] = {spec.id: spec for spec in BINDINGS}

_MODIFIERS = frozenset({"ctrl", "shift", "alt", "meta", "super", "hyper"})
_NAMED = frozenset(
    {
        "escape",
        "enter",
        "return",
        "tab",
        "space",
        "backspace",
        "delete",
        "insert",
        "home",
        "end",
        "pageup",
        "pagedown",
        "up",
        "down",
        "left",
        "right",
    }
    | {f"f{n}" for n in range(1, 25)}
)
_REPLACED = {"slash", "backslash", "at", "minus", "plus", "underscore"}
_NAME_RE = re.compile(r"^[a-z][a-z_]*$")


def _base_ok(base: str) -> bool:
    if len(base) == 1:
        return base.isprintable() and not base.isspace() and base not in ",+"
    if base in _NAMED or base in _REPLACED:
        return True
    if not _NAME_RE.match(base):
        return False
    try:  # a character's name, as Textual spells it: question_mark, full_stop, ...
        unicodedata.lookup(base.replace("_", " ").upper())
    except KeyError:
        return False
    return True


def key_problem(keys: str) -> str | None:
    """None when `keys` is a valid key string (comma-separated combos), else what is wrong."""
    if not isinstance(keys, str) or not keys.strip():
        return "empty key"
    for combo in keys.split(","):
        combo = combo.strip()
        if not combo:
            return "an empty key between commas"
        *mods, base = combo.split("+") if combo != "+" else ["+"]
        for mod in mods:
            if mod not in _MODIFIERS:
                return f"`{mod}` in `{combo}` is not a modifier (ctrl, shift, alt, meta, super)"
        if not base:
            return f"`{combo}` has no key after its last +"
        if not _base_ok(base):
            return (
                f"`{base}` in `{combo}` is not a key (a character, or a name such as enter, "
                "escape, tab, space, up, pageup, f1..f24, question_mark)"
            )
    return None
