"""The context manager: keep a conversation inside its model's context window.

The window and the output limit of the agent's model come from the host's `GET /v1/models`
(`legion: {context_window, max_output_tokens}`), else DEFAULT_WINDOW. The input budget is
the window less the output reserve (the model's output limit, at most OUTPUT_RESERVE_MAX).

Tokens are estimated, without a tokenizer, as UTF-8 bytes of the JSON messages / 4,
calibrated by the provider's own prompt count whenever a completion reports usage.

Before a completion whose estimate passes COMPACT_AT of the input budget (or when the
provider answered that the context overflowed), the conversation is compacted,
write-then-compact:

1. the messages are grouped so a tool call is never parted from its result (an assistant
   message with `tool_calls` and the `tool` messages answering it are one group);
2. the newest groups are kept, up to KEEP_TAIL of the input budget (at least the last
   one), and so is the latest user message (the request in hand);
3. the older groups go to one summarizing call (no tools) that returns durable facts and
   a summary; the facts are saved to memory FIRST, then the old groups are replaced by
   the summary, quoted as a runtime note;
4. when the summary cannot be had (the call fails, or says nothing usable), the old
   messages' text is written verbatim to `memory/compacted-<time>.md` in the workspace and
   the note points there; if even that fails, nothing is dropped;
5. when what is kept still does not fit (one huge tool result), kept tool results are
   cut to KEPT_RESULT_CHARS, oldest first, the call and its result still paired.

A provider's context-overflow error compacts with only the last group kept (the estimate
was wrong), then the completion is retried once.

So nothing the user said is dropped without first being summarized or saved.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("agent.context")

DEFAULT_WINDOW = 32768
DEFAULT_MAX_OUTPUT = 4096
OUTPUT_RESERVE_MAX = 8192
COMPACT_AT = 0.80
KEEP_TAIL = 0.30
MAX_MESSAGES = 200
BYTES_PER_TOKEN = 4.0
# In the summarizing call's transcript: tool results and arguments are cut to these.
TRANSCRIPT_TOOL_CHARS = 1500
TRANSCRIPT_ARGS_CHARS = 500
SUMMARY_MAX_CHARS = 8000
# A kept tool result too big for the window is cut to this (its call stays paired).
KEPT_RESULT_CHARS = 2000
FACTS_MAX = 20
RUNTIME = "[runtime]"

OVERFLOW = re.compile(
    r"context.{0,3}(length|window)|maximum context|too many tokens|prompt is too long|"
    r"context_length_exceeded|ContextWindowExceeded|reduce the length",
    re.IGNORECASE,
)

SUMMARIZE = (
    "You compact an agent's conversation so it fits its context window. Read the "
    "transcript and answer with one JSON object and nothing else:\n"
    '{"facts": ["..."], "summary": "..."}\n'
    "facts: durable facts worth remembering in later sessions (what the user stated about "
    "themselves, decisions, names, numbers, preferences, results), each one short "
    f"sentence, at most {FACTS_MAX}. summary: what happened so far, in the order it "
    "happened: every request and statement of the user, what was done and found, and what "
    "is still open. Keep names, numbers and paths exact."
)


def is_overflow(message: str) -> bool:
    """Whether a provider error says the prompt did not fit the model's context."""
    return bool(OVERFLOW.search(message))


@dataclass(frozen=True)
class Window:
    context: int = DEFAULT_WINDOW
    max_output: int = DEFAULT_MAX_OUTPUT

    @property
    def input_budget(self) -> int:
        return max(1024, self.context - min(self.max_output, OUTPUT_RESERVE_MAX))


def window_for(models: list[dict[str, Any]] | None, model: str | None) -> Window:
    """The window of `model` in a `GET /v1/models` list (DEFAULT_WINDOW when unknown)."""
    for entry in models or []:
        if entry.get("id") != model:
            continue
        info = entry.get("legion")
        if not isinstance(info, dict):
            break
        context, output = info.get("context_window"), info.get("max_output_tokens")
        if isinstance(context, int) and context > 0:
            out = output if isinstance(output, int) and output > 0 else DEFAULT_MAX_OUTPUT
            return Window(context, min(out, context // 2))
        break
    return Window()


def raw_size(messages: list[dict[str, Any]]) -> int:
    return len(json.dumps(messages, ensure_ascii=False).encode())


class Tokens:
    """Estimates prompt tokens; each provider count seen corrects the bytes-per-token."""

    def __init__(self) -> None:
        self.ratio = 1.0

    def estimate(self, messages: list[dict[str, Any]], extra_bytes: int = 0) -> int:
        return int((raw_size(messages) + extra_bytes) / BYTES_PER_TOKEN * self.ratio) + 8

    def observe(self, messages: list[dict[str, Any]], extra_bytes: int, actual: int) -> None:
        guess = (raw_size(messages) + extra_bytes) / BYTES_PER_TOKEN
        if guess > 0 and actual > 0:
            measured = min(4.0, max(0.25, actual / guess))
            self.ratio = 0.5 * self.ratio + 0.5 * measured


def groups(messages: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Messages in groups that must stay together: a tool-calling assistant message with
    the tool results that follow it; every other message alone."""
    out: list[list[dict[str, Any]]] = []
    for message in messages:
        if message.get("role") == "tool" and out and out[-1][0].get("tool_calls"):
            out[-1].append(message)
        else:
            out.append([message])
    return out


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f" [... {len(text) - limit} more]"


def transcript(old: list[list[dict[str, Any]]], tool_chars: int = TRANSCRIPT_TOOL_CHARS) -> str:
    lines: list[str] = []
    for group in old:
        for m in group:
            role, content = m.get("role"), m.get("content")
            text = content if isinstance(content, str) else json.dumps(content or "")
            if role == "tool":
                lines.append(f"tool result: {_clip(text, tool_chars)}")
                continue
            if text:
                lines.append(f"{role}: {text}")
            for call in m.get("tool_calls") or []:
                fn = call.get("function") or {}
                args = _clip(str(fn.get("arguments") or ""), TRANSCRIPT_ARGS_CHARS)
                lines.append(f"{role} called {fn.get('name')}({args})")
    return "\n".join(lines)


def verbatim(old: list[list[dict[str, Any]]]) -> str:
    """The text of the user's and the assistant's messages, whole (tool traffic left out)."""
    parts = []
    for group in old:
        for m in group:
            if m.get("role") in ("user", "assistant") and isinstance(m.get("content"), str):
                parts.append(f"## {m['role']}\n\n{m['content']}\n")
    return "\n".join(parts)


def parse_summary(text: str) -> tuple[list[str], str]:
    """(facts, summary) from the summarizing call's answer; a non-JSON answer is the summary."""
    start, end = text.find("{"), text.rfind("}")
    if start != -1 and end > start:
        try:
            data = json.loads(text[start : end + 1])
        except ValueError:
            data = None
        if isinstance(data, dict):
            facts = [
                " ".join(str(f).split())
                for f in data.get("facts") or []
                if isinstance(f, str | int | float) and str(f).strip()
            ][:FACTS_MAX]
            summary = str(data.get("summary") or "").strip()
            return facts, summary
    return [], text.strip()


Complete = Callable[[list[dict[str, Any]]], Awaitable[tuple[str, int | None]]]
SaveFacts = Callable[[list[str]], Awaitable[None]]
SaveText = Callable[[str, str], str]


@dataclass
class Compacted:
    dropped: int
    facts: int
    summarized: bool
    saved_to: str | None = None
    results_cut: int = 0


class ContextManager:
    """Decides when to compact and does it, through the callables it is given:

    * `complete(messages)`: one completion without tools -> (text, prompt tokens or None);
    * `save_facts(facts)`: store facts in long-term memory (raises to refuse);
    * `save_text(name, text)`: write a workspace file, return its path (raises to refuse).
    """

    def __init__(
        self,
        complete: Complete,
        save_facts: SaveFacts,
        save_text: SaveText,
        window: Window | None = None,
        clock: Callable[[], float] = time.time,
        tokens: Tokens | None = None,
    ) -> None:
        self.complete = complete
        self.save_facts = save_facts
        self.save_text = save_text
        self.window = window or Window()
        self.tokens = tokens or Tokens()
        self.clock = clock

    def over(self, messages: list[dict[str, Any]], extra_bytes: int = 0) -> bool:
        """Whether the next completion should compact first: its estimate passes COMPACT_AT
        of the input budget, or the conversation holds more than MAX_MESSAGES messages."""
        if len(messages) > MAX_MESSAGES:
            return True
        limit = COMPACT_AT * self.window.input_budget
        return self.tokens.estimate(messages, extra_bytes) > limit

    async def compact(
        self,
        messages: list[dict[str, Any]],
        extra_bytes: int = 0,
        *,
        pin: dict[str, Any] | None = None,
        force: bool = False,
    ) -> Compacted | None:
        """Compact `messages` in place; None when there was nothing older to compact.

        `pin` (the user message of the turn in hand; by default the last user message) is
        kept even when it is older than the kept tail.
        """
        head = messages[:1] if messages and messages[0].get("role") == "system" else []
        body = groups(messages[len(head) :])
        if len(body) < 2:
            return None
        users = [i for i, g in enumerate(body) if g[0].get("role") == "user"]
        pinned_at = next((i for i, g in enumerate(body) if g[0] is pin), None)
        if pinned_at is None and pin is None and users:
            pinned_at = users[-1]
        budget = KEEP_TAIL * self.window.input_budget
        start, size = len(body) - 1, self.tokens.estimate(body[-1])
        while start > 0 and not force:  # forced (the provider overflowed): the last group only
            cost = self.tokens.estimate(body[start - 1])
            if size + cost > budget:
                break
            size += cost
            start -= 1
        pinned = body[pinned_at] if pinned_at is not None and pinned_at < start else []
        old = [g for i, g in enumerate(body[:start]) if i != pinned_at]
        if not old:
            cut = self.shrink(messages, extra_bytes)
            return Compacted(0, 0, False, None, cut) if cut else None
        note, facts, saved_to = await self._summarize(old)
        if note is None:
            return None
        messages[:] = [
            *head,
            {"role": "user", "content": note},
            *pinned,
            *(m for g in body[start:] for m in g),
        ]
        dropped = sum(len(g) for g in old)
        cut = self.shrink(messages, extra_bytes) if self.over(messages, extra_bytes) else 0
        log.info("compacted %d messages (%d facts saved, %d results cut)", dropped, facts, cut)
        return Compacted(dropped, facts, saved_to is None, saved_to, cut)

    def shrink(self, messages: list[dict[str, Any]], extra_bytes: int = 0) -> int:
        """Cut kept tool results (oldest first) to KEPT_RESULT_CHARS until the estimate is
        under the threshold; the call and its result stay paired. Returns how many."""
        cut = 0
        for message in messages:
            if not self.over(messages, extra_bytes):
                break
            content = message.get("content")
            big = isinstance(content, str) and len(content) > KEPT_RESULT_CHARS
            if message.get("role") == "tool" and big:
                assert isinstance(content, str)
                message["content"] = (
                    content[:KEPT_RESULT_CHARS]
                    + f"\n[... {len(content) - KEPT_RESULT_CHARS} characters of this "
                    "result were cut to fit the context window; run the tool again "
                    "for a narrower part]"
                )
                cut += 1
        return cut

    async def _summarize(
        self, old: list[list[dict[str, Any]]]
    ) -> tuple[str | None, int, str | None]:
        """(note replacing `old`, facts saved, file saved to); note None: keep everything."""
        budget_bytes = int(0.6 * self.window.input_budget * BYTES_PER_TOKEN / self.tokens.ratio)
        text = transcript(old)
        if len(text.encode()) > budget_bytes:
            text = transcript(old, tool_chars=200)
        summary, facts = "", list[str]()
        if len(text.encode()) <= budget_bytes:
            request = [
                {"role": "system", "content": SUMMARIZE},
                {"role": "user", "content": text},
            ]
            try:
                answer, _ = await self.complete(request)
                facts, summary = parse_summary(answer)
            except Exception as exc:  # the provider, the budget, the host: save instead
                log.warning("summarizing for compaction failed: %s", exc)
        if summary:
            try:
                if facts:
                    await self.save_facts(facts)
            except Exception as exc:
                log.warning("saving compaction facts failed (%s); saving verbatim too", exc)
            else:
                return (
                    f"{RUNTIME} Summary of the earlier part of this conversation (compacted to "
                    f"stay within the context window; {len(facts)} facts were saved to "
                    f"memory):\n{_clip(summary, SUMMARY_MAX_CHARS)}",
                    len(facts),
                    None,
                )
        stamp = datetime.fromtimestamp(self.clock(), UTC).strftime("%Y-%m-%d-%H%M%S")
        try:
            path = self.save_text(f"memory/compacted-{stamp}.md", verbatim(old))
        except Exception as exc:
            log.error("could not save the compacted messages (%s); keeping them", exc)
            return None, 0, None
        return (
            f"{RUNTIME} The earlier part of this conversation was moved out of the context "
            f"window and saved verbatim to {path} in your workspace (read it with read_file "
            "when you need it).",
            0,
            path,
        )
