"""The daemon's logs on stderr: JSON lines (for journald and jq) or text (for a terminal).

* `json`: one object per line: `ts` (ISO 8601, UTC, milliseconds), `level`, `logger`,
  `msg`, then the record's fields;
* `text`: `2026-01-31T12:00:00.123Z info    legion.host: host ready home=/srv/legion`,
  one line per record (control characters shown as escapes), a traceback indented below;
* `auto` (the default): text when stderr is a terminal, JSON otherwise.

`capture_stray_output()` makes whatever a library prints (LiteLLM has `print` calls) a log
record too, so nothing reaches stdout or stderr in another shape. When stderr goes away
(the SSH session that started the daemon closed), records are dropped instead of failing.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import sys
import threading
from datetime import UTC, datetime
from typing import IO, Any, Literal

from legion.textsafe import safe_text

LogFormat = Literal["auto", "json", "text"]
LOG_FORMATS: tuple[LogFormat, ...] = ("auto", "json", "text")


def visible(text: str) -> str:
    """`text` with every control character shown as a visible escape (`\\x1b`), so text an
    agent controls cannot move the cursor, retitle the terminal or hide what follows: the
    one shared rule of `legion.textsafe`, on a single line."""
    return safe_text(text)


def iso_time(ts: float) -> str:
    """`ts` (Unix seconds) as ISO 8601 in UTC with milliseconds: 2026-01-31T12:00:00.123Z."""
    moment = datetime.fromtimestamp(ts, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _fields(record).items():
            entry[f"field_{key}" if key in entry else key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def _value_text(value: Any) -> str:
    if isinstance(value, str) and value and not any(c in value for c in ' "=\\'):
        return value
    return json.dumps(value, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """One line per record for people; the traceback, if any, on indented lines below."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            iso_time(record.created),
            f"{record.levelname.lower():<7}",
            f"{record.name}:",
            record.getMessage(),
        ]
        parts += [f"{key}={_value_text(value)}" for key, value in _fields(record).items()]
        line = visible(" ".join(parts))
        if record.exc_info:
            trace = self.formatException(record.exc_info)
            line += "".join(f"\n    {visible(row)}" for row in trace.splitlines())
        return line


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that goes quiet, instead of complaining on every record, once its
    stream is gone (a closed terminal: EIO; a closed pipe: EPIPE)."""

    GONE = frozenset({errno.EIO, errno.EPIPE, errno.EBADF, errno.ENXIO})

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(stream)
        self.gone = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.gone:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError) and error.errno in self.GONE:
            self.gone = True
            return
        super().handleError(record)


class _PrintedToLog(io.TextIOBase):
    """Stands in for sys.stdout or sys.stderr: each line printed becomes a log record."""

    def __init__(self, logger: str, level: int, real: IO[str]) -> None:
        self._log = logging.getLogger(logger)
        self._level = level
        self._real = real
        self._partial = ""
        self._lock = threading.RLock()
        self._inside = threading.local()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._real.fileno()

    def write(self, text: str) -> int:
        if getattr(self._inside, "active", False):
            # Written while a record is being handled (logging reporting its own error):
            # straight to the real stream, or it would loop.
            with contextlib.suppress(OSError):
                self._real.write(text)
            return len(text)
        with self._lock:
            self._partial += text
            *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self._emit(line)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            line, self._partial = self._partial, ""
        self._emit(line)

    def _emit(self, line: str) -> None:
        if not line.strip():
            return
        self._inside.active = True
        try:
            self._log.log(self._level, line.rstrip("\r"))
        finally:
            self._inside.active = False


def _stderr() -> IO[str]:
    """The process's real stderr, even after capture_stray_output() replaced sys.stderr."""
    current = sys.stderr
    return current._real if isinstance(current, _PrintedToLog) else current


def resolve_format(log_format: LogFormat, stream: IO[str] | None = None) -> Literal["json", "text"]:
    if log_format != "auto":
        return log_format
    target = stream if stream is not None else _stderr()
    try:
        return "text" if target.isatty() else "json"
    except (OSError, ValueError):
        return "json"


def setup(level: str = "info", log_format: LogFormat = "auto") -> None:
    """Send every record to stderr in `log_format` (see the module docstring)."""
    stream = _stderr()
    handler = _StderrHandler(stream)
    chosen = resolve_format(log_format, stream)
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def capture_stray_output() -> None:
    """Make prints to sys.stdout and sys.stderr, and warnings, log records (for the daemon,
    which answers on sockets, never on stdout). Call after setup()."""
    real = _stderr()
    if not isinstance(sys.stdout, _PrintedToLog):
        sys.stdout = _PrintedToLog("stdout", logging.INFO, real)
    if not isinstance(sys.stderr, _PrintedToLog):
        sys.stderr = _PrintedToLog("stderr", logging.WARNING, real)
    logging.captureWarnings(True)
