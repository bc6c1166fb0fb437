"""Redaction: masking secrets where a real one can appear, scoped so it is never an oracle.

The rule (docs/vault.md, "Redaction"):

* A source that handled a secret masks that secret in what it hands on: the LLM gateway
  masks the provider keys in provider responses and errors; the egress proxy masks the
  credentials the agent may substitute (those it is granted), in every encoding it can
  recognise (`EchoScrubber`), in every response it returns.
* The operator's views (the control socket's responses, the event stream, audit records,
  log lines) mask every vault value, raw and JSON-escaped, because the operator may be
  shown anything; the operator's own input on the control socket is masked on the way in,
  so no vault value pasted by the operator reaches an agent.
* What an agent wrote it reads back as written, and so does any other agent that may read
  it: the host never matches an agent's input against vault values, so nothing an agent
  gets back depends on whether its input equals a secret.

`Redactor` masks a set of values (from a source callable, re-read on `refresh`);
`value_problem` is the rule a value must pass to be stored at all.
"""

from __future__ import annotations

import base64
import binascii
import functools
import html
import json
import logging
import math
import re
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote

MASK = "[REDACTED]"
MASK_BYTES = MASK.encode()

# --- the value rule -------------------------------------------------------------------------

MIN_SECRET = 8  # characters
MIN_SECRET_BITS = 40.0  # estimated, see `estimated_bits`
VALUE_RULE = (
    f"a credential must be at least {MIN_SECRET} characters with at least "
    f"{MIN_SECRET_BITS:.0f} bits of estimated entropy (each character counts log2 of the size "
    "of the character classes used: lower case, upper case, digits, punctuation, other; a "
    "character that continues a run like aaa or 123, or repeats an earlier 3-character "
    "chunk, does not count). Use the random token your provider issued, or generate one, "
    "e.g. `openssl rand -base64 24`"
)


def _pool(value: str) -> int:
    pool = 0
    if any("a" <= c <= "z" for c in value):
        pool += 26
    if any("A" <= c <= "Z" for c in value):
        pool += 26
    if any("0" <= c <= "9" for c in value):
        pool += 10
    if any(c.isascii() and not c.isalnum() for c in value):
        pool += 33
    if any(not c.isascii() for c in value):
        pool += 100
    return pool


def estimated_bits(value: str) -> float:
    """A conservative entropy estimate: effective length x log2(character pool).

    A character does not count when it continues a run of three with the same step of -1, 0
    or +1 (`aaa`, `123`, `cba`), or when the three characters ending with it were seen
    before (repeated chunks: `abcabc`, `xk3xk3`). Random tokens lose almost nothing to this
    (a random 9-letter lower-case value passes 97% of the time, a 16-digit one 99.8%);
    repeats, sequences and patterns lose most of their length. It knows no dictionary.
    """
    pool = _pool(value)
    if pool <= 1:
        return 0.0
    effective = 0
    seen: set[str] = set()
    for i, ch in enumerate(value):
        counts = True
        if i >= 2:
            step = ord(ch) - ord(value[i - 1])
            if step in (-1, 0, 1) and step == ord(value[i - 1]) - ord(value[i - 2]):
                counts = False
            chunk = value[i - 2 : i + 1]
            if chunk in seen:
                counts = False
            seen.add(chunk)
        effective += counts
    return effective * math.log2(pool)


def value_problem(value: str) -> str | None:
    """Why `value` cannot be stored as a credential (None: it can).

    A stored value must be maskable: long and irregular enough that masking it never hits
    ordinary text, and that none of its encodings (hex, base64) is short enough to occur
    by chance in a response.
    """
    if not value:
        return "the value is empty"
    if len(value) < MIN_SECRET:
        return f"the value is {len(value)} characters; {VALUE_RULE}"
    bits = estimated_bits(value)
    if bits < MIN_SECRET_BITS:
        return f"the value has about {bits:.0f} bits of estimated entropy; {VALUE_RULE}"
    return None


# --- masking a set of values ---------------------------------------------------------------


def json_forms(value: str) -> set[str]:
    """How `value` can appear inside JSON text: escaped with \\u or raw UTF-8, `/` or `\\/`."""
    forms = {json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
    return forms | {form.replace("/", "\\/") for form in forms}


class Redactor:
    """Masks every value of a set, raw and as it appears inside JSON, as `[REDACTED]`.

    `source` is read on `refresh()` (which `redact()` and friends call unless told not
    to); the compiled pattern is rebuilt only when the values change.
    """

    def __init__(self, source: Callable[[], Iterable[str]] | None = None) -> None:
        self._source = source
        self._pattern: re.Pattern[str] | None = None
        self._values: tuple[str, ...] = ()
        self._known: frozenset[str] = frozenset()
        self._longest = 0

    def refresh(self, values: Iterable[str] | None = None) -> None:
        if values is None:
            values = self._source() if self._source is not None else ()
        current = tuple(v for v in values if v)
        if current == self._values:
            return
        self._values = current
        forms: set[str] = set()
        for value in current:
            forms |= {value} | json_forms(value)
        self._known = frozenset(forms)
        ordered = sorted(forms, key=len, reverse=True)
        self._longest = len(ordered[0]) if ordered else 0
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def pattern(self) -> re.Pattern[str] | None:
        """The compiled pattern of every masked form (None: nothing to mask), as of the
        last refresh."""
        return self._pattern

    def max_secret_len(self) -> int:
        """The length in characters of the longest form masked (0: nothing to mask), as of
        the last refresh. A stream redactor holds back this many characters minus one."""
        return self._longest

    def redact(self, text: str) -> str:
        if self._source is not None:
            self.refresh()
        if self._pattern is None:
            return text
        return self._pattern.sub(MASK, text)

    def redact_bytes(self, data: bytes, refresh: bool = True) -> bytes:
        """`refresh=False` reuses the secrets known at the last refresh."""
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
        return self._obj(value)

    def _obj(self, value: Any) -> Any:
        assert self._pattern is not None
        if isinstance(value, str):
            return self._pattern.sub(MASK, value)
        if isinstance(value, dict):
            return {self._obj(k): self._obj(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._obj(v) for v in value]
        return value

    def forms(self) -> frozenset[str]:
        """Every text `redact` masks, as of the last refresh (a text holding none of them
        comes back unchanged): what a stream must watch for across its pieces."""
        return self._known


# --- echoes of a substituted credential --------------------------------------------------

_PERCENT = re.compile("%[0-9A-F]{2}")
_B64 = "A-Za-z0-9+/"
_B64URL = "A-Za-z0-9_\\-"
MIN_ENCODED = 8  # shorter base64 cores would match random base64 by chance


def _base64_cores(raw: bytes, urlsafe: bool) -> list[tuple[str, int, int]]:
    """The base64 text of `raw` that is the same wherever `raw` sits inside a longer
    encoded string (`user:secret` in Basic auth, a JSON blob): for each of the three byte
    alignments, the encoding of the whole 3-byte groups inside `raw`, with how many
    characters before and after it belong to groups mixing `raw` with its neighbours."""
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    cores = []
    for skip in range(3):
        whole = (len(raw) - skip) // 3 * 3
        if whole <= 0:
            continue
        core = encode(raw[skip : skip + whole]).decode("ascii")
        if len(core) >= MIN_ENCODED:
            rest = len(raw) - skip - whole
            cores.append((core, 4 if skip else 0, 4 if rest else 0))
    return cores


class EchoScrubber:
    """Masks, in what a host sent back, the credentials an agent may substitute.

    Forms caught: the raw value; its percent-encoded forms (given by the caller, as sent,
    and fully encoded, with upper- or lower-case escapes); its JSON- and HTML-escaped forms;
    hex, lower or upper case; base64 and URL-safe
    base64, padded or not, also when the value is only part of what was encoded (Basic
    auth's `user:secret`), for values of at least 8 characters. A base64 match also masks
    the up to 4 characters on either side that mix the value's bits with its neighbours'.
    Other transformations (hashes, reversals, double encodings, a value split across
    fields) cannot be recognised: binding a credential to a host trusts that host not to
    reflect it in such forms.

    Only these values are matched: a response never depends on whether the agent's own
    request text happened to equal a secret it was not granted. Every form is a literal, found with
    `str.find` (C speed, no regex over the body): a 1 MB body costs about a millisecond.
    """

    def __init__(self, values: Iterable[str], sent_forms: Iterable[str] = ()) -> None:
        forms: dict[str, tuple[str, int, int]] = {}  # form -> (b64 alphabet, before, after)

        def add(form: str, alphabet: str = "", before: int = 0, after: int = 0) -> None:
            if not form:
                return
            old = forms.get(form, (alphabet, 0, 0))
            forms[form] = (old[0] or alphabet, max(before, old[1]), max(after, old[2]))

        for form in sent_forms:
            add(form)
        for value in values:
            if not value:
                continue
            for form in {value, quote(value, safe=""), quote(value, safe="-._~")}:
                add(form)
                add(_PERCENT.sub(lambda m: m.group().lower(), form))  # %2f as well as %2F
            add(html.escape(value))
            add(html.escape(value, quote=False))
            for form in json_forms(value):
                add(form)
            raw = value.encode("utf-8")
            if len(raw) * 2 >= MIN_ENCODED:
                hexed = binascii.hexlify(raw).decode("ascii")
                add(hexed)
                add(hexed.upper())
            for urlsafe, alphabet in ((False, _B64), (True, _B64URL)):
                for core, before, after in _base64_cores(raw, urlsafe):
                    add(core, alphabet, before, after)
        # longest first: where forms overlap, the longer one decides the span
        self._forms = sorted(forms.items(), key=lambda item: len(item[0]), reverse=True)
        self._bytes = [(f.encode("utf-8"), meta) for f, meta in self._forms]
        longest_core = max((len(f) + 10 for f, (a, _, _) in self._forms if a), default=0)
        longest_literal = max((len(f) for f, _ in self._bytes), default=0)
        self.longest = max(longest_core, longest_literal)

    def __bool__(self) -> bool:
        return bool(self._forms)

    def text(self, text: str) -> str:
        if not self._forms:
            return text
        cleaned: str = _mask(text, self._forms, MASK)
        return cleaned

    def data(self, data: bytes) -> bytes:
        if not self._bytes:
            return data
        cleaned: bytes = _mask(data, self._bytes, MASK_BYTES)
        return cleaned

    def obj(self, value: Any) -> Any:
        """Scrub strings anywhere inside a JSON-like structure (error details)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.obj(k): self.obj(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.obj(v) for v in value]
        return value

    def cut_tail(self, data: bytes) -> bytes:
        """A body cut short at the size limit may end inside a value: drop the last
        `longest` bytes whatever they hold, so what is kept never depends on a match."""
        if not self._forms:
            return data
        return data[: max(0, len(data) - self.longest)]


def _mask(source: Any, forms: list[tuple[Any, tuple[str, int, int]]], mask: Any) -> Any:
    """`source` with every occurrence of every form (and, for base64 cores, the mixed
    characters around it) replaced by one `mask` per merged span."""
    spans: list[tuple[int, int]] = []
    for form, (alphabet, before, after) in forms:
        at = source.find(form)
        while at >= 0:
            start, end = at, at + len(form)
            if alphabet:
                start = _extend_left(source, start, max(0, start - before), alphabet)
                end = _extend_right(source, end, min(len(source), end + after), alphabet)
            spans.append((start, end))
            at = source.find(form, at + len(form))
    if not spans:
        return source
    spans.sort()
    out = []
    last = 0
    for start, end in spans:
        if end <= last:
            continue
        if start < last:  # overlapping spans merge into one mask
            start = last
        else:
            out.append(source[last:start])
        if not out or out[-1] is not mask:
            out.append(mask)
        last = end
    out.append(source[last:])
    return type(source)().join(out)


def _is_b64(ch: int | str, alphabet: str) -> bool:
    c = chr(ch) if isinstance(ch, int) else ch
    if c.isascii() and c.isalnum():
        return True
    return c in ("+/" if alphabet == _B64 else "-_")


def _extend_left(source: Any, start: int, floor: int, alphabet: str) -> int:
    while start > floor and _is_b64(source[start - 1], alphabet):
        start -= 1
    return start


def _extend_right(source: Any, end: int, ceiling: int, alphabet: str) -> int:
    while end < ceiling and _is_b64(source[end], alphabet):
        end += 1
    while end < len(source) and source[end] in ("=", 61):  # padding
        end += 1
    return end


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


class WindowRedactor:
    """Redacts one text that arrives in pieces, holding back a window of fixed size: the
    last `longest form - 1` characters, whatever they are. For text an agent can steer (a
    model's reply echoes its prompt), where `StreamRedactor` would be an oracle: holding
    back exactly when the end of the text could begin a secret tells the agent, one
    character at a time, which of its guesses begin one (a provider key in a few thousand
    calls). Here when text is released depends only on how much has arrived; only a whole
    secret changes what the agent sees (masked), as in a reply that came whole.

    The cost is latency: a stream reaches its reader that many characters late (the end
    comes with `flush()`). What the pieces add up to equals `Redactor.redact` of the whole
    text: a match starting before the window has all its characters, so it is final.
    """

    def __init__(self, redactor: Redactor) -> None:
        self._pattern = redactor.pattern()
        self._window = max(0, redactor.max_secret_len() - 1)
        self._held = ""

    @property
    def held(self) -> int:
        """Characters held back right now."""
        return len(self._held)

    def feed(self, piece: str) -> str:
        if not piece:
            return ""
        text = self._held + piece
        pattern = self._pattern
        if pattern is None:
            self._held = ""
            return text
        cut = len(text) - self._window
        if cut <= 0:
            self._held = text
            return ""
        out: list[str] = []
        last = 0
        for match in pattern.finditer(text):
            if match.start() >= cut:
                break
            out.append(text[last : match.start()])
            out.append(MASK)
            last = match.end()
        cut = max(cut, last)  # a secret that starts before the window is released masked
        out.append(text[last:cut])
        self._held = text[cut:]
        return "".join(out)

    def flush(self) -> str:
        """What is held back, redacted; the stream starts afresh after it."""
        text, self._held = self._held, ""
        if not text or self._pattern is None:
            return text
        return self._pattern.sub(MASK, text)
