"""Issue 7 item 6: a vault value split across streamed deltas is masked, on both upstream
paths, in what the agent receives and in the TokenDelta events the operator sees."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from legion.config import parse_config
from legion.gateway.redact import MASK, Redactor, StreamRedactor
from legion.gateway.vault import Vault
from legion.host import Host
from legion.paths import Paths
from tests.conftest import agent_client
from tests.fakes.provider import FakeProvider, Reply

pytestmark = pytest.mark.anyio

KEY = "sk-fake-provider-key-0123456789"  # system tier: the provider key
# Every masked value is a provider key of a configured model: LLM routes mask provider keys
# only (an agent credential never reaches a prompt, and masking it would be an oracle).
TOKEN = 'tok"en\\with-escapes-7Kq2Zr'  # JSON-escaped it reads tok\"en\\with...
SHORT = "pw-4Kq8Zr2Xv6Tn"  # a proper prefix of LONG: held whole until LONG is ruled out
LONG = "pw-4Kq8Zr2Xv6Tn0Lp3-extended"


# --- the StreamRedactor on its own ------------------------------------------------------


def redactor(*values: str) -> Redactor:
    r = Redactor(lambda: list(values))
    r.refresh()
    return r


def pieces_of(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *sorted(cuts), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def streamed(r: Redactor, pieces: list[str]) -> list[str]:
    stream = StreamRedactor(r)
    return [stream.feed(p) for p in pieces] + [stream.flush()]


@pytest.mark.parametrize("secret", [KEY, TOKEN, json.dumps(TOKEN)[1:-1]], ids=["key", "raw", "esc"])
def test_a_secret_split_two_three_and_len_ways_at_every_offset_is_masked(secret: str) -> None:
    """issue 7: split in 2 at every offset, in 3 at every pair of offsets, and one
    character per piece; the raw and the JSON-escaped form of a value."""
    r = redactor(KEY, TOKEN)
    text = f"before {secret} after"
    start = len("before ")
    splits: list[list[int]] = [[start + i] for i in range(len(secret) + 1)]
    splits += [
        [start + i, start + j] for i in range(len(secret)) for j in range(i + 1, len(secret))
    ]
    splits.append(list(range(1, len(text))))
    for cuts in splits:
        out = streamed(r, pieces_of(text, cuts))
        joined = "".join(out)
        assert joined == f"before {MASK} after", (cuts, out)
        for piece in out:
            assert secret not in piece


def test_ordinary_text_is_held_back_by_at_most_a_possible_start() -> None:
    """issue 7: the hold-back costs ordinary text nothing, a few characters at most."""
    r = redactor(KEY, TOKEN)
    stream = StreamRedactor(r)
    assert stream.feed("Hello, world") == "Hello, world"
    assert stream.feed(" and s") == " and "  # "s" could start the key
    assert stream.held == 1
    assert stream.feed("o on") == "so on"
    assert stream.held == 0
    assert stream.feed("") == ""
    assert stream.flush() == ""


def test_a_secret_that_may_grow_into_a_longer_one_is_held_then_masked_right() -> None:
    """issue 7: SHORT is complete, but could be the start of LONG: whichever the text
    turns out to hold is masked, as the whole text would be."""
    r = redactor(SHORT, LONG)
    assert "".join(streamed(r, ["a ", SHORT, " b"])) == f"a {MASK} b"
    assert "".join(streamed(r, ["a ", SHORT, LONG[len(SHORT) :], " b"])) == f"a {MASK} b"
    assert "".join(streamed(r, ["a ", SHORT])) == f"a {MASK}"  # flushed at the end, masked


@settings(max_examples=300, suppress_health_check=list(HealthCheck), deadline=None)
@given(
    values=st.lists(st.text(alphabet="ab]\\c", min_size=4, max_size=9), min_size=1, max_size=3),
    parts=st.lists(st.sampled_from(["a", "b", "c", "]", "\\", " "]) | st.integers(0, 2)),
    data=st.data(),
)
def test_streamed_redaction_equals_redaction_of_the_whole_text(
    values: list[str], parts: list[str | int], data: st.DataObject
) -> None:
    """issue 7: however the text is cut, and however its secrets overlap or prefix each
    other, the pieces come out as the whole text would."""
    r = redactor(*values)
    text = "".join(p if isinstance(p, str) else values[p % len(values)] for p in parts)
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=20))
    assert "".join(streamed(r, pieces_of(text, cuts))) == r.redact(text)


# --- through the gateway, both upstream paths ---------------------------------------------


@pytest.fixture(params=["direct", "litellm"])
def direct(request: pytest.FixtureRequest) -> bool:
    return bool(request.param == "direct")


@asynccontextmanager
async def host_for(home: Path, fake: FakeProvider, direct: bool) -> AsyncIterator[Host]:
    paths = Paths.resolve(home)
    vault = Vault(paths.vault_db, paths.vault_key)
    vault.set("provider", KEY, tier="system")
    vault.set("token", TOKEN, tier="system")
    vault.set("short", SHORT, tier="system")
    vault.set("long", LONG, tier="system")
    vault.close()
    others = "".join(
        f'[llm.models.{name}]\nmodel = "openai/fake-{name}"\napi_base = "{fake.base_url}"\n'
        f'credential = "{name}"\n\n'
        for name in ("token", "short", "long")
    )
    config = f"""
[llm.models.fast]
model = "openai/fake-fast"
api_base = "{fake.base_url}"
credential = "provider"
passthrough = {"true" if direct else "false"}
input_cost_per_mtok = 1.0
output_cost_per_mtok = 1.0

{others}
[agents.alice]
model = "fast"
"""
    async with Host.running(parse_config(config), paths) as host:
        yield host


def stream_text(raw: bytes) -> tuple[str, list[Any]]:
    events = [
        line[6:] for line in raw.decode().split("\n") if line.startswith("data: ") and line[6:]
    ]
    parsed = [e if e == "[DONE]" else json.loads(e) for e in events]
    text = "".join(
        (c.get("delta") or {}).get("content") or ""
        for e in parsed
        if isinstance(e, dict)
        for c in e.get("choices") or []
    )
    return text, parsed


async def stream_once(alice: httpx.AsyncClient) -> bytes:
    body = {"messages": [{"role": "user", "content": "go"}], "stream": True}
    async with alice.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        return await response.aread()


def drain(sub: Any) -> list[Any]:
    seen = []
    while not sub.queue.empty():
        seen.append(sub.queue.get_nowait())
    return seen


def leaks(blob: str) -> list[str]:
    forms = {KEY, TOKEN, json.dumps(TOKEN)[1:-1], SHORT, LONG}
    return [form for form in forms if form in blob]


@pytest.mark.parametrize("ways", ["2", "3", "len"])
async def test_a_secret_split_across_deltas_never_reaches_the_agent_or_the_bus(
    home: Path, direct: bool, ways: str
) -> None:
    """issue 7: the provider key and another provider key (with characters JSON escapes),
    each split across 2, 3 or len(secret) deltas at every offset."""
    async with (
        FakeProvider() as fake,
        host_for(home, fake, direct) as host,
        agent_client(host.paths, "alice") as alice,
        host.bus.subscribe() as sub,
    ):
        for secret in (KEY, TOKEN):
            size = {"2": len(secret), "3": math.ceil(len(secret) / 3), "len": 1}[ways]
            offsets = range(1, len(secret)) if ways != "len" else [0]
            for offset in offsets:
                prefix = "p" * ((size - offset) % size)  # puts a delta boundary at `offset`
                content = f"{prefix}[{secret}]"
                fake.script(Reply(content=content, chunk_chars=size))
                raw = await stream_once(alice)
                text, events = stream_text(raw)
                assert text == f"{prefix}[{MASK}]", (offset, text)
                assert events[-1] == "[DONE]"
                assert leaks(raw.decode()) == []
                deltas = [e.text for e in drain(sub) if e.type == "token_delta"]
                assert "".join(deltas) == text
                assert leaks(json.dumps(deltas)) == []
        assert host.budgets.open == {}


async def test_tool_call_arguments_are_redacted_across_deltas(home: Path, direct: bool) -> None:
    """issue 7: tool call arguments stream in pieces too."""
    async with (
        FakeProvider() as fake,
        host_for(home, fake, direct) as host,
        agent_client(host.paths, "alice") as alice,
    ):
        fake.script(Reply(tool_calls=[{"name": "send", "arguments": {"k": KEY}}], chunk_chars=3))
        raw = await stream_once(alice)
        assert leaks(raw.decode()) == []
        _, events = stream_text(raw)
        args = "".join(
            ((call.get("function") or {}).get("arguments") or "")
            for e in events
            if isinstance(e, dict)
            for c in e.get("choices") or []
            for call in (c.get("delta") or {}).get("tool_calls") or []
        )
        assert json.loads(args) == {"k": MASK}


async def test_text_held_back_when_the_stream_ends_is_flushed_redacted(
    home: Path, direct: bool
) -> None:
    """issue 7: a reply ending in SHORT (which could begin LONG) is held to the end, then
    sent masked, with the finishing delta."""
    async with (
        FakeProvider() as fake,
        host_for(home, fake, direct) as host,
        agent_client(host.paths, "alice") as alice,
        host.bus.subscribe() as sub,
    ):
        fake.script(Reply(content=f"the end {SHORT}", chunk_chars=5))
        raw = await stream_once(alice)
        text, _ = stream_text(raw)
        assert text == f"the end {MASK}"
        assert leaks(raw.decode()) == []
        assert "".join(e.text for e in drain(sub) if e.type == "token_delta") == text


async def test_text_held_back_when_the_provider_cuts_the_stream_is_flushed_and_settled(
    home: Path, direct: bool
) -> None:
    """issue 7: the provider cuts the stream while SHORT is held: it is sent, masked,
    before the error event, and the call is settled."""
    async with (
        FakeProvider() as fake,
        host_for(home, fake, direct) as host,
        agent_client(host.paths, "alice") as alice,
    ):
        content = f"cut {SHORT}" + " and more" * 10
        # events: role, "cut ", SHORT (held: it may begin LONG), then the cut
        fake.script(Reply(content=content, chunk_chars=4, cut_after_chunks=2 + 4))
        raw = await stream_once(alice)
        text, events = stream_text(raw)
        assert leaks(raw.decode()) == []
        assert text.startswith(f"cut {MASK}")
        assert events[-1]["error"]["code"] == "provider_error"
        row = host.store.execute("SELECT status FROM ledger").fetchone()
        assert row[0] == "failed_mid_stream"
        assert host.budgets.open == {}


async def test_text_held_back_when_the_agent_leaves_reaches_the_bus_redacted(
    home: Path, direct: bool
) -> None:
    """issue 7: the agent disconnects while SHORT is held: the operator's TokenDelta feed
    gets it, masked, and the call is settled as aborted."""
    async with (
        FakeProvider() as fake,
        host_for(home, fake, direct) as host,
        host.bus.subscribe() as sub,
    ):
        lead = "b" * len(SHORT)
        # deltas: lead, SHORT (held: it may begin LONG), then more after a pause
        fake.script(Reply(content=lead + SHORT + " tail" * 20, chunk_chars=len(SHORT)))
        fake.chunk_delay_s = 0.3
        async with agent_client(host.paths, "alice") as alice:
            body = {"messages": [{"role": "user", "content": "go"}], "stream": True}
            async with alice.stream("POST", "/v1/chat/completions", json=body) as response:
                seen_lead = False
                async for line in response.aiter_lines():
                    if seen_lead and line.startswith("data: "):
                        # the delta after lead: SHORT, held (its text not sent). Gone now,
                        # while the host waits for the next one: it cancels the stream then.
                        break
                    seen_lead = seen_lead or lead in line
        for _ in range(250):
            booked = host.store.execute("SELECT COUNT(*) FROM ledger").fetchone()[0]
            if booked and not host.budgets.open:
                break
            await asyncio.sleep(0.02)
        deltas = [e.text for e in drain(sub) if e.type == "token_delta"]
        assert deltas == [lead, MASK]
        status = host.store.execute("SELECT status FROM ledger").fetchone()[0]
        assert status == "aborted"
        assert host.budgets.open == {}
