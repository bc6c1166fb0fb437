"""One redactor for every path that could echo a secret: logs, events, audit, traces, errors.

The host feeds it every vault value; `redact()` replaces each occurrence (and its JSON-
escaped form) with `[REDACTED]`. Values shorter than 4 characters are not masked: they
would mangle ordinary text without protecting anything.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

MASK = "[REDACTED]"
MIN_SECRET = 4


class Redactor:
    def __init__(self, source: Callable[[], Iterable[str]] | None = None) -> None:
        self._source = source
        self._pattern: re.Pattern[str] | None = None
        self._known: frozenset[str] = frozenset()

    def refresh(self, values: Iterable[str] | None = None) -> None:
        if values is None:
            values = self._source() if self._source is not None else ()
        forms: set[str] = set()
        for value in values:
            if len(value) < MIN_SECRET:
                continue
            forms.add(value)
            forms.add(json.dumps(value)[1:-1])  # as it appears inside JSON text
        known = frozenset(forms)
        if known == self._known:
            return
        self._known = known
        ordered = sorted(known, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def redact(self, text: str) -> str:
        if self._source is not None:
            self.refresh()
        if self._pattern is None:
            return text
        return self._pattern.sub(MASK, text)

    def redact_bytes(self, data: bytes, refresh: bool = True) -> bytes:
        """`refresh=False` reuses the secrets known at the last refresh (the host refreshes
        once per response, not once per streamed chunk)."""
        if refresh and self._source is not None:
            self.refresh()
        if self._pattern is None:
            return data
        text = data.decode("utf-8", errors="surrogateescape")
        cleaned = self._pattern.sub(MASK, text)
        return data if cleaned == text else cleaned.encode("utf-8", errors="surrogateescape")

    def redact_obj(self, value: Any) -> Any:
        """Redact strings anywhere inside a JSON-like structure."""
        if self._source is not None:
            self.refresh()
        if self._pattern is None:
            return value
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {self.redact_obj(k): self.redact_obj(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.redact_obj(v) for v in value]
        return value

    def forms(self) -> frozenset[str]:
        """Every text `redact` masks, as of the last refresh (a text holding none of them
        comes back unchanged): what a stream must watch for across its pieces."""
        return self._known


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in messages, arguments and structured fields."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redactor.redact(record.getMessage())
        record.args = None
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.fields = self.redactor.redact_obj(fields)
        if record.exc_info:
            import traceback

            text = "".join(traceback.format_exception(*record.exc_info))
            record.exc_info = None
            record.exc_text = None
            record.msg = f"{record.msg}\n{self.redactor.redact(text)}"
        return True


# --- streams ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _by_first_char(forms: frozenset[str]) -> dict[str, tuple[str, ...]]:
    starts: dict[str, list[str]] = {}
    for form in forms:
        if len(form) > 1:
            starts.setdefault(form[0], []).append(form)
    return {first: tuple(group) for first, group in starts.items()}


class StreamRedactor:
    """Redacts one text that arrives in pieces (a streamed reply) as if it came whole: a
    secret split across any number of pieces is masked.

    `feed(piece)` returns what can be shown now. It holds back the end of the text only
    while that end could be the start of a secret (the longest end that begins some masked
    form: never more than the longest secret's length - 1 characters), and lets it go with
    the next piece that shows it is not. Ordinary text is held back by nothing, or by a
    character or two, for one piece. `flush()` returns what is held, redacted, when the
    stream ends, however it ends. Masking itself is `Redactor.redact`'s; the forms watched
    for are those known at the redactor's last refresh (refresh it once per stream).
    """

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._forms = redactor.forms()
        self._starts = _by_first_char(self._forms)
        self._longest = max(map(len, self._forms), default=0)
        self._hold_limit = 4 * self._longest
        self._held = ""

    @property
    def held(self) -> int:
        """Characters held back right now."""
        return len(self._held)

    def _could_continue(self, text: str) -> int:
        """Length of the longest end of `text` that is a proper prefix of a masked form
        (0: no secret can continue past the end of `text`)."""
        starts = self._starts
        size = len(text)
        for pos in range(max(0, size - self._longest + 1), size):
            group = starts.get(text[pos])
            if group is not None:
                rest = text[pos:]
                for form in group:
                    if len(form) > len(rest) and form.startswith(rest):
                        return size - pos
        return 0

    def _mask(self, text: str) -> str:
        for form in self._forms:
            if form in text:
                return self._redactor.redact(text)
        return text

    def _straddler(self, text: str, cut: int) -> int:
        """Where the leftmost masked form lying whole in `text` across `cut` starts, or -1."""
        first = -1
        end = len(text)
        for form in self._forms:
            size = len(form)
            pos = text.find(form, max(0, cut - size + 1), min(end, cut + size - 1))
            if pos != -1 and (first == -1 or pos < first):
                first = pos
        return first

    def feed(self, piece: str) -> str:
        if not piece:
            return ""
        text = self._held + piece
        keep = self._could_continue(text)
        if not keep:  # no secret can continue past the end: all of it is final
            self._held = ""
            return self._mask(text)
        # Hold back the longest end that could still grow into a secret. Every match that
        # starts before it is final (no longer form can complete there), so what precedes
        # the cut is redacted now, exactly as the whole text would be, provided the cut
        # does not split a secret lying whole in the text: then cut before that secret.
        cut = len(text) - keep
        while cut > 0:
            start = self._straddler(text, cut)
            if start < 0:
                break
            cut = start
        if cut > 0 or len(text) <= self._hold_limit:
            self._held = text[cut:]
            return self._mask(text[:cut]) if cut else ""
        # Degenerate: masked forms overlapping each other end to end for longer than the
        # limit. Let the redacted text go, holding back only its own possible start.
        out = self._mask(text)
        keep = self._could_continue(out)
        self._held = out[len(out) - keep :]
        return out[: len(out) - keep]

    def flush(self) -> str:
        """What is held back, redacted; the stream starts afresh after it."""
        text, self._held = self._held, ""
        return self._mask(text) if text else ""
