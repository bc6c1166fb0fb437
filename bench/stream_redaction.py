"""Redaction of streamed replies (issue 7): what holding back a possible secret costs.

Legion: `DeltaRedactor.chunk` on each delta of a streamed chat completion, as the gateway's
relay runs it (both upstream paths), with a vault of 12 values shaped like real credentials
(OpenAI project keys of 164 characters, Anthropic keys, GitHub tokens, passwords) and their
JSON-escaped forms, over replies cut into deltas of 1 to 8 characters (what providers send).

Measured:
- the CPU time per delta, against the baseline of the relay's own per-delta work in the
  same run (`json.dumps` of the delta, which every relayed delta pays);
- the delivery delay: how many deltas later each character reaches the agent than it would
  unredacted, for the first token of each reply and for all text: ordinary replies; replies
  that mention secrets' beginnings ("sk-", "ghp_") without holding a secret; replies holding
  a secret split across deltas (masked: their text is held until the secret is complete).

Targets: in ordinary replies, the first token and 99% of deltas are delayed by at most one
delta; the per-delta cost p50 <= 10 us. (A character that could begin a secret must wait for
the character that rules it out: with one-character deltas, "s" then "k" against a key
starting "sk-" waits two deltas. No correct redactor can do better.)
"""

from __future__ import annotations

import json
import random
import string
import sys
import time
from typing import Any

from bench._common import Report, heading, line, percentile, run_alone

COST_P50_US = 10.0
_TEXT = (
    "the of and to in is that for it as was with be by on not he this are or his from at "
    "which but have an they you were her she there been one all we their has would when "
    "so if will what about out up them some into than then its more time could these two "
    "may first can any like now my such make over our even most me state after also made "
    "many did must before back see through way where get much go well your know should"
)
WORDS = _TEXT.split(" ")


def _vault(rng: random.Random) -> list[str]:
    def rand(n: int, alphabet: str = string.ascii_letters + string.digits + "-_") -> str:
        return "".join(rng.choice(alphabet) for _ in range(n))

    return [
        "sk-proj-" + rand(156),
        "sk-proj-" + rand(156),
        "sk-ant-api03-" + rand(95),
        "ghp_" + rand(36, string.ascii_letters + string.digits),
        "github_pat_" + rand(82),
        "xoxb-" + rand(50),
        "AKIA" + rand(16, string.ascii_uppercase + string.digits),
        rand(40),
        'pa"ss\\word-' + rand(12),
        "hunter2-" + rand(16),
        rand(24),
        "Bearer-" + rand(32),
    ]


def _reply(rng: random.Random, words: int, extra: str = "") -> str:
    text = " ".join(rng.choice(WORDS) for _ in range(words)) + "."
    if extra:
        at = rng.randrange(len(text))
        text = text[:at] + " " + extra + " " + text[at:]
    return text


def _deltas(rng: random.Random, text: str) -> list[str]:
    out, i = [], 0
    while i < len(text):
        n = rng.randint(1, 8)
        out.append(text[i : i + n])
        i += n
    return out


def _chunk(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-0123456789",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "fast",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }


def _run_reply(delta_redactor: Any, pieces: list[str]) -> tuple[list[float], list[int], int]:
    """Per-delta seconds; for each piece, how many deltas later its first character went
    out; and the delay of the reply's first character."""
    clock = time.perf_counter
    costs: list[float] = []
    raw_chars = 0
    arrivals: list[int] = []  # the delta at which each raw character was let go
    for index, piece in enumerate(pieces):
        data = _chunk(piece)
        t0 = clock()
        delta_redactor.chunk(data)
        costs.append(clock() - t0)
        raw_chars += len(piece)
        released = raw_chars - delta_redactor.held()
        arrivals += [index] * max(0, released - len(arrivals))
    delta_redactor.flush(_chunk(""))
    arrivals += [len(pieces)] * (raw_chars - len(arrivals))
    delays: list[int] = []
    start = 0
    for index, piece in enumerate(pieces):
        if piece and start < len(arrivals):
            delays.append(arrivals[start] - index)
        start += len(piece)
    return costs, delays, delays[0] if delays else 0


def _baseline(pieces: list[str]) -> list[float]:
    clock = time.perf_counter
    costs = []
    for piece in pieces:
        data = _chunk(piece)
        t0 = clock()
        json.dumps(data)
        costs.append(clock() - t0)
    return costs


def run(quick: bool = False, profile: str | None = None) -> Report:
    """`profile` is accepted for a uniform interface; this benchmark runs in-process."""
    from legion.gateway.llm.stream import DeltaRedactor
    from legion.gateway.redact import Redactor

    report = Report("stream_redaction")
    heading("stream_redaction: redacting streamed deltas across their boundaries")
    rng = random.Random(7)
    values = _vault(rng)
    redactor = Redactor(lambda: values)
    redactor.refresh()
    longest = max(map(len, redactor.forms()))
    line(f"  vault: {len(values)} values, {len(redactor.forms())} forms, longest {longest}")
    replies = 60 if quick else 400
    kinds = {
        "ordinary": lambda: _reply(rng, 120),
        "mentions secret starts": lambda: _reply(
            rng, 120, " ".join(v[: rng.randint(2, 6)] for v in rng.sample(values, 4))
        ),
        "holds a secret": lambda: _reply(rng, 120, rng.choice(values)),
    }
    first_ok = True
    for name, make in kinds.items():
        costs: list[float] = []
        base: list[float] = []
        delays: list[int] = []
        firsts: list[int] = []
        leaked = 0
        for _ in range(replies):
            text = make()
            pieces = _deltas(rng, text)
            base += _baseline(pieces)
            reply_costs, reply_delays, first = _run_reply(DeltaRedactor(redactor), pieces)
            costs += reply_costs
            delays += reply_delays
            firsts.append(first)
            stream = DeltaRedactor(redactor)
            out = "".join(stream.chunk(_chunk(p)) for p in pieces)
            out += stream.flush(_chunk(""))[1]
            leaked += any(form in out for form in redactor.forms())
        cost_p50 = percentile(costs, 50) * 1e6
        base_p50 = percentile(base, 50) * 1e6
        delayed = sum(1 for d in delays if d > 0) / max(1, len(delays))
        line(f"  {name} ({replies} replies, {len(delays)} deltas):")
        line(
            f"    per delta: p50 {cost_p50:.2f} us  p99 {percentile(costs, 99) * 1e6:.2f} us"
            f"  (baseline json.dumps of the delta: p50 {base_p50:.2f} us; "
            f"{cost_p50 / base_p50:.2f}x)"
        )
        line(
            f"    delay: {delayed:.1%} of deltas shown later; max {max(delays)} deltas; "
            f"first token delayed in {sum(1 for f in firsts if f)} of {replies} replies "
            f"(max {max(firsts)} deltas); secrets shown: {leaked}"
        )
        if name == "ordinary":
            p99 = sorted(delays)[int(0.99 * (len(delays) - 1))]
            report.check(
                "ordinary replies: first token and 99% of deltas delayed by <= 1 delta",
                max(firsts) <= 1 and p99 <= 1,
                f"first token max {max(firsts)}, p99 {p99}, max {max(delays)} delta(s)",
            )
            report.check(
                "per-delta cost p50",
                cost_p50 <= COST_P50_US,
                f"{cost_p50:.2f} us (target <= {COST_P50_US:.0f} us; baseline {base_p50:.2f} us)",
            )
        first_ok = first_ok and leaked == 0
    report.check("no secret shown in any reply", first_ok, "checked every reply")
    return report


if __name__ == "__main__":
    sys.exit(run_alone(run, __doc__, "stream_redaction"))
