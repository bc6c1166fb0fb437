"""One redactor for every path that could echo a secret: logs, events, audit, traces, errors.

The host feeds it every vault value; `redact()` replaces each occurrence (and its JSON-
escaped form) with `[REDACTED]`. Values shorter than 4 characters are not masked: they
would mangle ordinary text without protecting anything.
"""

from __future__ import annotations

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
