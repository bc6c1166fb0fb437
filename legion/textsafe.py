"""Text an agent can influence, made safe to print on the operator's terminal.

An agent controls many strings the operator reads: replies and token deltas, notifications,
blackboard keys and values, audit details, error messages. Printed raw, a string can drive
the terminal: clear the screen, move the cursor, set the window title, write the clipboard
(OSC 52), plant a hyperlink whose target differs from its text (OSC 8), or use a bare CR or
bidi override to make a line read as something it is not.

`safe_text()` turns every such character into a visible escape, so the operator sees what
the agent sent instead of what it wanted the terminal to do:

* C0 controls (U+0000-U+001F) except tab, and newline where the caller prints multi-line
  content (`multiline=True`): `\\x1b`, `\\x0d`, `\\x00`. ESC is escaped wherever it occurs,
  so no escape sequence (CSI, OSC, DCS, ...) survives: its introducer is gone.
* DEL (U+007F): `\\x7f`.
* C1 controls (U+0080-U+009F), which some terminals honour as 8-bit CSI/OSC: `\\u009b`.
* Unicode format characters (category Cf) that are invisible or reorder text: the bidi
  embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069), the marks LRM, RLM and
  ALM, zero-width spaces and joiners other than ZWJ, the BOM, soft hyphen, invisible math
  operators, interlinear annotations and the tag characters (U+E0000-U+E007F, which can
  smuggle invisible ASCII). ZWJ (U+200D) stays: emoji sequences need it and it cannot
  reorder or hide text on its own.
* Line and paragraph separators (U+2028, U+2029) and lone surrogates.

Backslashes are left as they are: a literal `\\x1b` typed by an agent prints the same as an
escaped ESC, which is harmless (nothing reaches the terminal raw either way). Rich markup
is not this module's business: callers that print through Rich pass `Text` objects or a
console with `markup=False` (see `legion.cli.common`).

Pure standard library, so the TUI and anything else can import it.
"""

from __future__ import annotations

import re
from typing import Any

from legion.wire.textrule import unsafe_char

# The rule itself lives in legion.wire.textrule (shared with the agent runtime, which
# strips these characters from third-party text instead of escaping them).
_unsafe = unsafe_char


def _escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0x7F:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


# Candidates: everything outside printable ASCII; `_unsafe` decides for each one, so the
# rule follows the Unicode database of the running Python rather than a copied table.
_CANDIDATES = {
    False: re.compile(r"[^\x20-\x7e\t]"),
    True: re.compile(r"[^\x20-\x7e\t\n]"),
}


def _replace(match: re.Match[str]) -> str:
    ch = match.group()
    return _escape(ch) if _unsafe(ch) else ch


def safe_text(text: str, *, multiline: bool = False) -> str:
    """`text` with every terminal control, escape introducer and invisible format character
    shown as a visible escape. Tab is kept; newline is kept only when `multiline`."""
    if text.isascii() and text.isprintable():
        return text  # the common case: nothing to do
    return _CANDIDATES[multiline].sub(_replace, text)


def safe_value(value: Any, *, multiline: bool = False) -> str:
    """Any value as safe text: strings as they are, anything else through `str()`."""
    return safe_text(value if isinstance(value, str) else str(value), multiline=multiline)
