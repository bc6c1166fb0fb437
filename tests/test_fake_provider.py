"""The fake LLM provider (tests/fakes/provider.py), driven over real HTTP by httpx and LiteLLM.

The LiteLLM half also pins down how LiteLLM 1.110 behaves against an OpenAI-compatible
provider (exception types per fault, retries, timeouts, streaming usage), which the gateway
relies on.
"""

from __future__ import annotations

# Before anything can import litellm: no cost-map fetch from GitHub (there is no network).
import os

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from types import ModuleType
from typing import Any

import anyio
import httpx
import pytest

from tests.fakes.provider import (
    FakeProvider,
    FakeProviderProcess,
    Reply,
    ToolCall,
    cosine,
    count_tokens,
    embed,
    prompt_tokens,
)

pytestmark = [
    pytest.mark.anyio,
    # pydantic warns (once, when LiteLLM first builds a schema for its TypedDicts) and the
    # project's filterwarnings=error would turn that into an exception inside LiteLLM.
    pytest.mark.filterwarnings("ignore:.*using the `ReadOnly` qualifier:UserWarning"),
    # LiteLLM's stream handler reads `model_fields` / `model_computed_fields` on instances
    # (deprecated since pydantic 2.11) for every usage-only chunk.
    pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince211"),
]

USER = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]

# Every outward connection this process makes, seen through an audit hook (it cannot be
# removed once added; it only appends while `_watching` is set).
_NET_EVENTS: list[tuple[str, Any]] = []
_watching = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _watching:
        return
    if event == "socket.connect":
        _NET_EVENTS.append((event, args[1]))
    elif event == "socket.getaddrinfo":
        _NET_EVENTS.append((event, args[0]))


sys.addaudithook(_audit)


def _is_loopback(event: tuple[str, Any]) -> bool:
    kind, target = event
    if kind == "socket.getaddrinfo":
        return target in ("127.0.0.1", "localhost", b"127.0.0.1", None)
    return isinstance(target, str) or (isinstance(target, tuple) and target[0] == "127.0.0.1")


@pytest.fixture
def fp() -> Iterator[FakeProvider]:
    with FakeProvider() as provider:
        yield provider


def client(fp: FakeProvider, **kw: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=fp.base_url, timeout=10, trust_env=False, **kw)


async def sse(response: httpx.Response, into: list[Any] | None = None) -> list[Any]:
    """The `data:` payloads of an SSE response (JSON decoded; "[DONE]" kept as is)."""
    events = [] if into is None else into
    async for line in response.aiter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def text_of(events: list[Any]) -> str:
    return "".join(
        e["choices"][0]["delta"].get("content") or ""
        for e in events
        if isinstance(e, dict) and e["choices"]
    )


# ---------------------------------------------------------------------------------------------
# Plain HTTP


async def test_models_lists_configured_models() -> None:
    with FakeProvider(models=["m1", "m2"]) as fp:
        async with client(fp) as c:
            r = await c.get("/models")
    assert r.status_code == 200
    assert [m["id"] for m in r.json()["data"]] == ["m1", "m2"]


async def test_default_reply_echoes_and_counts_tokens(fp: FakeProvider) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hello, world"}]},
    ]
    async with client(fp) as c:
        r = await c.post(
            "/chat/completions",
            json={"model": "m", "messages": messages},
            headers={"Authorization": "Bearer sk-injected"},
        )
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "echo: Hello, world"}
    assert body["choices"][0]["finish_reason"] == "stop"
    # 2 messages x 3 + "Be brief." (3) + "Hello, world" (3); "echo: Hello, world" = 5.
    assert prompt_tokens(messages) == 12
    assert body["usage"] == {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
    [rec] = fp.requests
    assert (rec.method, rec.path, rec.model) == ("POST", "/v1/chat/completions", "m")
    assert rec.headers["authorization"] == "Bearer sk-injected"
    assert rec.body["messages"] == messages


async def test_scripted_replies_in_order_per_model_first(fp: FakeProvider) -> None:
    fp.script(Reply(content="one"), Reply(content="two"))
    fp.script(Reply(content="for b", usage={"prompt_tokens": 7, "completion_tokens": 9}), model="b")
    fp.default_reply = Reply(content="fallback")
    got = []
    async with client(fp) as c:
        for model in ("a", "b", "b", "a", "a"):
            r = await c.post("/chat/completions", json={"model": model, "messages": USER})
            got.append(r.json()["choices"][0]["message"]["content"])
            if len(got) == 2:
                assert r.json()["usage"] == {
                    "prompt_tokens": 7,
                    "completion_tokens": 9,
                    "total_tokens": 16,
                }
    assert got == ["one", "for b", "two", "fallback", "fallback"]
    assert fp.pending() == 0


async def test_max_tokens_truncates_with_finish_reason_length(fp: FakeProvider) -> None:
    fp.script(Reply(content="one two three four five"))
    async with client(fp) as c:
        r = await c.post(
            "/chat/completions", json={"model": "m", "messages": USER, "max_tokens": 2}
        )
    choice = r.json()["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == ("one two", "length")
    assert r.json()["usage"]["completion_tokens"] == 2


async def test_stream_chunks_usage_and_done(fp: FakeProvider) -> None:
    fp.script(Reply(content="abcdefghij", chunk_chars=3))
    async with (
        client(fp) as c,
        c.stream(
            "POST", "/chat/completions", json={"model": "m", "messages": USER, "stream": True}
        ) as r,
    ):
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["transfer-encoding"] == "chunked"
        events = await sse(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(e["object"] == "chat.completion.chunk" for e in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [e["choices"][0]["delta"]["content"] for e in chunks[1:5]] == ["abc", "def", "ghi", "j"]
    assert chunks[5]["choices"][0] == {
        "index": 0,
        "delta": {},
        "finish_reason": "stop",
        "logprobs": None,
    }
    # Usage comes last by default, even without stream_options.include_usage.
    assert chunks[6]["choices"] == []
    assert chunks[6]["usage"]["completion_tokens"] == count_tokens("abcdefghij")
    assert len(chunks) == 7


async def test_stream_usage_policy_follows_include_usage_when_requested() -> None:
    with FakeProvider(stream_usage="requested") as fp:
        async with client(fp) as c:
            body = {"model": "m", "messages": USER, "stream": True}
            async with c.stream("POST", "/chat/completions", json=body) as r:
                plain = await sse(r)
            body["stream_options"] = {"include_usage": True}
            async with c.stream("POST", "/chat/completions", json=body) as r:
                with_usage = await sse(r)
    assert all("usage" not in e for e in plain[:-1])
    # As OpenAI does: "usage": null on every chunk but the last, which has no choices.
    assert all(e["usage"] is None for e in with_usage[:-2])
    assert with_usage[-2]["choices"] == [] and with_usage[-2]["usage"]["total_tokens"] > 0


async def test_stream_tool_call_arguments_arrive_in_pieces(fp: FakeProvider) -> None:
    fp.script(
        Reply(
            content="Checking.",
            tool_calls=[
                ToolCall("get_weather", {"city": "Paris"}, id="call_1"),
                {"name": "get_time", "arguments": '{"tz":"CET"}'},
            ],
            chunk_chars=5,
        )
    )
    async with (
        client(fp) as c,
        c.stream(
            "POST", "/chat/completions", json={"model": "m", "messages": USER, "stream": True}
        ) as r,
    ):
        events = await sse(r)
    calls: dict[int, dict[str, Any]] = {}
    pieces = 0
    for e in events[:-1]:
        for d in (e["choices"][0]["delta"].get("tool_calls") or []) if e["choices"] else []:
            call = calls.setdefault(d["index"], {"id": None, "name": "", "arguments": ""})
            call["id"] = d.get("id") or call["id"]
            call["name"] += d.get("function", {}).get("name") or ""
            call["arguments"] += d.get("function", {}).get("arguments") or ""
            pieces += 1
    assert text_of(events) == "Checking."
    assert calls[0] == {"id": "call_1", "name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert calls[1]["name"] == "get_time" and calls[1]["arguments"] == '{"tz":"CET"}'
    assert calls[1]["id"].startswith("call_")
    assert pieces > 4
    assert [e for e in events[:-1] if e["choices"]][-1]["choices"][0]["finish_reason"] == (
        "tool_calls"
    )


async def test_non_stream_tool_calls(fp: FakeProvider) -> None:
    fp.script(Reply(tool_calls=[ToolCall("get_weather", {"city": "Paris"})]))
    async with client(fp) as c:
        r = await c.post("/chat/completions", json={"model": "m", "messages": USER})
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert r.json()["usage"]["completion_tokens"] == count_tokens("get_weather") + count_tokens(
        '{"city":"Paris"}'
    )


@pytest.mark.parametrize("status", [429, 500, 502, 503, 401, 402])
async def test_fault_status_and_openai_error_body(fp: FakeProvider, status: int) -> None:
    fp.script(Reply(status=status), Reply(status=status))
    async with client(fp) as c:
        r = await c.post("/chat/completions", json={"model": "m", "messages": USER})
        streamed = await c.post(
            "/chat/completions", json={"model": "m", "messages": USER, "stream": True}
        )
    for resp in (r, streamed):
        assert resp.status_code == status
        assert resp.headers["content-type"] == "application/json"
        assert set(resp.json()["error"]) == {"message", "type", "param", "code"}
    assert ("retry-after" in r.headers) == (status == 429)
    if status == 429:
        assert r.headers["retry-after"] == "1"


async def test_fault_custom_error_body_and_headers(fp: FakeProvider) -> None:
    fp.script(Reply(status=429, retry_after=7, error="slow down", headers={"x-extra": "1"}))
    fp.script(Reply(status=500, error={"detail": "raw body"}))
    async with client(fp) as c:
        r1 = await c.post("/chat/completions", json={"model": "m", "messages": USER})
        r2 = await c.post("/chat/completions", json={"model": "m", "messages": USER})
    assert r1.headers["retry-after"] == "7" and r1.headers["x-extra"] == "1"
    assert r1.json()["error"]["message"] == "slow down"
    assert r2.json() == {"detail": "raw body"}


async def test_required_api_key() -> None:
    with FakeProvider(api_key="sk-right") as fp:
        async with client(fp) as c:
            bad = await c.post("/chat/completions", json={"model": "m", "messages": USER})
            good = await c.post(
                "/chat/completions",
                json={"model": "m", "messages": USER},
                headers={"authorization": "Bearer sk-right"},
            )
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
    assert good.status_code == 200


async def test_cut_stream_closes_without_final_chunk_or_done(fp: FakeProvider) -> None:
    fp.script(Reply(content="a" * 40, chunk_chars=4, cut_after_chunks=3))
    events: list[Any] = []
    async with client(fp) as c:
        with pytest.raises(httpx.RemoteProtocolError, match="incomplete chunked read"):
            async with c.stream(
                "POST", "/chat/completions", json={"model": "m", "messages": USER, "stream": True}
            ) as r:
                assert r.status_code == 200
                await sse(r, into=events)
    assert len(events) == 3  # the role chunk and two content chunks
    assert text_of(events) == "aaaaaaaa"
    await fp.await_for(lambda: fp.requests[0].outcome == "cut")


async def test_cut_non_stream_body(fp: FakeProvider) -> None:
    fp.script(Reply(cut_after_chunks=0))
    async with client(fp) as c:
        with pytest.raises(httpx.RemoteProtocolError):
            await c.post("/chat/completions", json={"model": "m", "messages": USER})


async def test_latency_first_byte_and_chunk_delays() -> None:
    with FakeProvider(latency_s=0.15) as fp:
        fp.script(Reply(), Reply(first_byte_delay_s=0.2), Reply(latency_s=0))
        fp.script(Reply(latency_s=0, content="abcd", chunk_chars=1, chunk_delay_s=0.05))
        async with client(fp) as c:
            elapsed = []
            for _ in range(3):
                t = time.perf_counter()
                await c.post("/chat/completions", json={"model": "m", "messages": USER})
                elapsed.append(time.perf_counter() - t)
            t = time.perf_counter()
            body = {"model": "m", "messages": USER, "stream": True}
            async with c.stream("POST", "/chat/completions", json=body) as r:
                await sse(r)
            streamed = time.perf_counter() - t
    assert elapsed[0] >= 0.15
    assert elapsed[1] >= 0.35
    assert elapsed[2] < 0.1
    # role + 4 content + finish + usage = 7 events, 6 gaps of 50 ms
    assert streamed >= 0.3


async def test_keep_alive_reuses_one_connection(fp: FakeProvider) -> None:
    async with client(fp) as c:
        for _ in range(3):
            await c.post("/chat/completions", json={"model": "m", "messages": USER})
            body = {"model": "m", "messages": USER, "stream": True}
            async with c.stream("POST", "/chat/completions", json=body) as r:
                await sse(r)
    assert fp.connections == 1
    assert len(fp.requests) == 6


async def test_many_concurrent_streams() -> None:
    n = 48
    with FakeProvider(latency_s=0.02, chunk_delay_s=0.02, chunk_chars=2) as fp:

        async def one(c: httpx.AsyncClient, i: int, out: dict[int, str]) -> None:
            body = {
                "model": "m",
                "messages": [{"role": "user", "content": f"n{i}"}],
                "stream": True,
            }
            async with c.stream("POST", "/chat/completions", json=body) as r:
                out[i] = text_of(await sse(r))

        out: dict[int, str] = {}
        t = time.perf_counter()
        limits = httpx.Limits(max_connections=n)
        async with client(fp, limits=limits) as c, anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, c, i, out)
        elapsed = time.perf_counter() - t
    assert out == {i: f"echo: n{i}" for i in range(n)}
    assert fp.connections == n
    # One stream takes ~0.02 + 7 x 0.02 s; 48 of them one after another would take ~8 s.
    assert elapsed < 3.0


async def test_client_disconnect_is_recorded(fp: FakeProvider) -> None:
    fp.script(Reply(content="x" * 200, chunk_chars=1, chunk_delay_s=0.01))
    async with client(fp) as c:
        body = {"model": "m", "messages": USER, "stream": True}
        async with c.stream("POST", "/chat/completions", json=body) as r:
            async for _ in r.aiter_lines():
                break
    await fp.await_for(lambda: fp.requests[0].outcome is not None)
    assert fp.requests[0].outcome == "disconnected"


async def test_bad_requests_get_400_and_chunked_bodies_work(fp: FakeProvider) -> None:
    async def chunks() -> Any:
        yield b'{"model": "m", '
        yield b'"messages": [{"role": "user", "content": "hi"}]}'

    async with client(fp) as c:
        bad = await c.post("/chat/completions", content=b"{not json")
        not_object = await c.post("/chat/completions", json=[1])
        missing = await c.get("/nope")
        chunked = await c.post("/chat/completions", content=chunks())
    assert bad.status_code == 400 and not_object.status_code == 400
    assert missing.status_code == 404
    assert chunked.json()["choices"][0]["message"]["content"] == "echo: hi"
    assert fp.requests[-1].headers["transfer-encoding"] == "chunked"


async def test_embeddings_deterministic_similar_and_formats(fp: FakeProvider) -> None:
    texts = ["the cat sat on the mat", "the cat sat on a mat", "quantum chromodynamics"]
    async with client(fp) as c:
        r = await c.post("/embeddings", json={"model": "e", "input": texts})
        one = await c.post("/embeddings", json={"model": "e", "input": texts[0], "dimensions": 8})
        b64 = await c.post(
            "/embeddings", json={"model": "e", "input": texts[0], "encoding_format": "base64"}
        )
    vectors = [d["embedding"] for d in r.json()["data"]]
    assert [d["index"] for d in r.json()["data"]] == [0, 1, 2]
    assert all(len(v) == 64 for v in vectors)
    assert abs(sum(x * x for x in vectors[0]) - 1) < 1e-9
    assert vectors[0] == embed(texts[0])
    assert cosine(vectors[0], vectors[1]) > 0.7 > 0.3 > cosine(vectors[0], vectors[2])
    assert r.json()["usage"] == {"prompt_tokens": 14, "total_tokens": 14}
    assert len(one.json()["data"][0]["embedding"]) == 8
    import base64
    import struct

    raw = base64.b64decode(b64.json()["data"][0]["embedding"])
    assert list(struct.unpack("<64f", raw)) == pytest.approx(vectors[0], abs=1e-6)


async def test_embeddings_faults(fp: FakeProvider) -> None:
    fp.script(Reply(status=503), endpoint="embeddings")
    async with client(fp) as c:
        chat = await c.post("/chat/completions", json={"model": "m", "messages": USER})
        failed = await c.post("/embeddings", json={"model": "e", "input": "x"})
        ok = await c.post("/embeddings", json={"model": "e", "input": "x"})
    assert (chat.status_code, failed.status_code, ok.status_code) == (200, 503, 200)


async def test_http_control_endpoints(fp: FakeProvider) -> None:
    root = fp.base_url.removesuffix("/v1")
    async with httpx.AsyncClient(base_url=root, trust_env=False) as c:
        reply = {"content": "scripted over http", "tool_calls": [{"name": "t", "arguments": {}}]}
        assert (await c.post("/_fake/script", json={"replies": [reply], "model": "m"})).is_success
        r = await c.post("/v1/chat/completions", json={"model": "m", "messages": USER})
        assert r.json()["choices"][0]["message"]["content"] == "scripted over http"
        recorded = (await c.get("/_fake/requests")).json()["requests"]
        assert [x["path"] for x in recorded] == ["/v1/chat/completions"]
        assert (await c.post("/_fake/config", json={"latency_s": 0.1})).is_success
        assert fp.latency_s == 0.1
        bad = await c.post("/_fake/script", json={"replies": [{"nope": 1}]})
        assert bad.status_code == 400
        await c.post("/_fake/reset")
    assert fp.requests == []


async def test_async_mode_serves_on_the_running_loop() -> None:
    async with FakeProvider() as fp:
        fp.script(Reply(content="in loop"))
        async with client(fp) as c:
            r = await c.post("/chat/completions", json={"model": "m", "messages": USER})
        assert r.json()["choices"][0]["message"]["content"] == "in loop"
        assert len(await fp.await_requests(1)) == 1
        assert fp.requests[0].outcome == "completed"


@pytest.mark.slow
def test_process_mode_is_scripted_over_http() -> None:
    with FakeProviderProcess(latency_ms=20) as proc:
        assert proc.base_url.startswith("http://127.0.0.1:") and proc.base_url.endswith("/v1")
        proc.script(Reply(content="from a process"))
        with httpx.Client(base_url=proc.base_url, trust_env=False) as c:
            t = time.perf_counter()
            r = c.post("/chat/completions", json={"model": "m", "messages": USER})
            elapsed = time.perf_counter() - t
        assert r.json()["choices"][0]["message"]["content"] == "from a process"
        assert elapsed >= 0.02
        [rec] = proc.requests
        assert rec.body["model"] == "m" and rec.seq == 1
        proc.reset()
        assert proc.requests == []
    assert proc.proc is None


# ---------------------------------------------------------------------------------------------
# Through LiteLLM


@pytest.fixture(scope="module")
def litellm() -> Iterator[ModuleType]:
    global _watching
    _watching = True
    import litellm as module

    module.suppress_debug_info = True
    yield module
    _watching = False


@pytest.fixture
def loopback_only(litellm: ModuleType) -> Iterator[None]:
    """Fails the test if LiteLLM connected (or resolved a name) beyond 127.0.0.1."""
    _NET_EVENTS.clear()
    yield
    outside = [e for e in _NET_EVENTS if not _is_loopback(e)]
    assert outside == []


Call = Callable[..., Awaitable[Any]]


@pytest.fixture
def complete(litellm: ModuleType, fp: FakeProvider, loopback_only: None) -> Call:
    """`await complete(**kwargs)`: litellm.acompletion against `fp`, no retries unless given."""

    async def call(**kwargs: Any) -> Any:
        kwargs.setdefault("model", "openai/fake-model")
        kwargs.setdefault("messages", USER)
        kwargs.setdefault("num_retries", 0)
        return await litellm.acompletion(api_base=fp.base_url, api_key="sk-test", **kwargs)

    return call


@pytest.mark.slow
def test_import_litellm_offline_and_time() -> None:
    """`import litellm` with LITELLM_LOCAL_MODEL_COST_MAP=True opens no socket."""
    code = (
        "import json, sys, time\n"
        "events = []\n"
        "def hook(e, a):\n"
        "    if e in ('socket.connect', 'socket.getaddrinfo'): events.append([e, repr(a)])\n"
        "sys.addaudithook(hook)\n"
        "t = time.perf_counter()\n"
        "import litellm\n"
        "print(json.dumps({'seconds': time.perf_counter() - t, 'net': events}))\n"
    )
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["net"] == []
    assert "cost map fetch" not in out.stderr
    assert result["seconds"] < 60


async def test_litellm_completion(complete: Call, fp: FakeProvider) -> None:
    r = await complete()
    assert r.choices[0].message.content == "echo: What is the weather in Paris?"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == prompt_tokens(USER)
    assert r.usage.completion_tokens == count_tokens(r.choices[0].message.content)
    [rec] = fp.requests
    assert rec.headers["authorization"] == "Bearer sk-test"
    assert rec.body["model"] == "fake-model"  # the "openai/" prefix is LiteLLM's
    assert rec.body["messages"] == USER
    assert "stream" not in rec.body


async def test_litellm_stream_with_usage(complete: Call, fp: FakeProvider) -> None:
    fp.script(Reply(content="Sunny and mild.", chunk_chars=2))
    stream = await complete(stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Sunny and mild."
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["stop"]
    # The usage arrives on a last chunk of its own, with no choices.
    last = chunks[-1]
    assert last.choices == []
    assert last.usage.prompt_tokens == prompt_tokens(USER)
    assert last.usage.completion_tokens == count_tokens("Sunny and mild.")
    assert fp.requests[0].body["stream_options"] == {"include_usage": True}


async def test_litellm_stream_without_include_usage(
    complete: Call, fp: FakeProvider, litellm: ModuleType
) -> None:
    stream = await complete(stream=True)
    chunks = [c async for c in stream]
    # LiteLLM does not ask a custom api_base for usage, and hides the usage chunk the
    # provider sends anyway (it keeps it for its own cost tracking).
    assert "stream_options" not in fp.requests[0].body
    assert all(c.choices for c in chunks)
    assert all(getattr(c, "usage", None) is None for c in chunks)
    built = litellm.stream_chunk_builder(chunks, messages=USER)
    assert built.choices[0].message.content == "echo: What is the weather in Paris?"


async def test_litellm_tool_call_round_trip(complete: Call, fp: FakeProvider) -> None:
    fp.script(Reply(tool_calls=[ToolCall("get_weather", {"city": "Paris"})]))
    fp.script(Reply(content="It is sunny in Paris."))
    first = await complete(tools=TOOLS)
    assert first.choices[0].finish_reason == "tool_calls"
    [call] = first.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    messages = [
        *USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "clear"}'},
    ]
    second = await complete(messages=messages, tools=TOOLS)
    assert second.choices[0].message.content == "It is sunny in Paris."
    sent = fp.requests[1].body
    assert sent["tools"] == TOOLS
    assert sent["messages"][1]["tool_calls"][0]["id"] == call.id
    assert sent["messages"][2] == {
        "role": "tool",
        "tool_call_id": call.id,
        "content": '{"sky": "clear"}',
    }


async def test_litellm_streamed_tool_call(
    complete: Call, fp: FakeProvider, litellm: ModuleType
) -> None:
    args = {"city": "Paris", "unit": "celsius"}
    fp.script(Reply(tool_calls=[ToolCall("get_weather", args)], chunk_chars=3))
    stream = await complete(tools=TOOLS, stream=True)
    chunks = [c async for c in stream]
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(deltas) > 5  # name first, then the arguments three characters at a time
    built = litellm.stream_chunk_builder(chunks, messages=USER)
    [call] = built.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == args
    assert built.choices[0].finish_reason == "tool_calls"


async def test_litellm_embeddings_similarity(
    litellm: ModuleType, fp: FakeProvider, loopback_only: None
) -> None:
    texts = ["the cat sat on the mat", "the cat sat on a mat", "stock market prices fell sharply"]
    r = await litellm.aembedding(
        model="openai/fake-embedding", api_base=fp.base_url, api_key="sk-test", input=texts
    )
    vectors = [d["embedding"] for d in r.data]
    assert len(vectors) == 3 and len(vectors[0]) == 64
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])
    assert cosine(vectors[0], vectors[1]) > 0.7
    assert r.usage.prompt_tokens == sum(count_tokens(t) for t in texts)
    assert fp.requests[0].body == {"model": "fake-embedding", "input": texts}


async def test_litellm_embedding_retries_ignore_max_retries_zero(
    litellm: ModuleType, fp: FakeProvider, loopback_only: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aembedding turns max_retries=0 into 2 (`max_retries or litellm.DEFAULT_MAX_RETRIES`);
    only litellm.DEFAULT_MAX_RETRIES = 0 stops its retries."""
    kwargs = {
        "model": "openai/fake-embedding",
        "api_base": fp.base_url,
        "api_key": "sk-test",
        "input": "x",
    }
    # legion's own runtime sets DEFAULT_MAX_RETRIES = 0 (for this very reason): undo it here
    monkeypatch.setattr(litellm, "DEFAULT_MAX_RETRIES", 2)
    fp.script(Reply(status=500), endpoint="embeddings")
    r = await litellm.aembedding(**kwargs, max_retries=0)
    assert len(r.data) == 1 and len(fp.requests) == 2  # retried once, despite max_retries=0
    monkeypatch.setattr(litellm, "DEFAULT_MAX_RETRIES", 0)
    fp.script(Reply(status=429), endpoint="embeddings")
    with pytest.raises(litellm.RateLimitError):
        await litellm.aembedding(**kwargs)
    assert len(fp.requests) == 3


FAULTS = [
    (429, "RateLimitError"),
    (500, "InternalServerError"),
    (502, "BadGatewayError"),
    (503, "ServiceUnavailableError"),
    (401, "AuthenticationError"),
    (402, "APIError"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(("status", "name"), FAULTS, ids=[str(s) for s, _ in FAULTS])
async def test_litellm_fault_exceptions(
    complete: Call, fp: FakeProvider, litellm: ModuleType, status: int, name: str, stream: bool
) -> None:
    fp.script(Reply(status=status), Reply(status=status))
    with pytest.raises(getattr(litellm, name)) as info:
        await complete(stream=stream)
    assert type(info.value) is getattr(litellm, name)
    assert info.value.status_code == status
    assert len(fp.requests) == 1  # num_retries=0: no retry


async def test_litellm_retries_by_default_and_honours_retry_after(
    complete: Call, fp: FakeProvider
) -> None:
    fp.script(Reply(status=429, retry_after=1), Reply(status=503), Reply(content="finally"))
    t = time.perf_counter()
    r = await complete(num_retries=None)  # LiteLLM's default: the OpenAI SDK's 2 retries
    assert time.perf_counter() - t >= 0.9
    assert r.choices[0].message.content == "finally"
    assert len(fp.requests) == 3
    assert fp.requests[1].received_at - fp.requests[0].received_at >= 0.9  # Retry-After: 1


async def test_litellm_max_retries_also_disables_retries(complete: Call, fp: FakeProvider) -> None:
    fp.script(Reply(status=500), Reply(content="retried"))
    with pytest.raises(Exception, match="server had an error"):
        await complete(num_retries=None, max_retries=0)
    assert len(fp.requests) == 1
    fp.reset()
    fp.script(Reply(status=500), Reply(content="retried"))
    r = await complete(num_retries=1, max_retries=0)  # num_retries wins over max_retries
    assert r.choices[0].message.content == "retried"
    assert len(fp.requests) == 2


async def test_litellm_slow_first_byte_within_and_past_timeout(
    complete: Call, fp: FakeProvider, litellm: ModuleType
) -> None:
    fp.script(Reply(first_byte_delay_s=0.3), Reply(first_byte_delay_s=2))
    t = time.perf_counter()
    r = await complete(timeout=5)
    assert time.perf_counter() - t >= 0.3
    assert r.choices[0].message.content
    t = time.perf_counter()
    with pytest.raises(litellm.Timeout):
        await complete(timeout=0.3)
    assert time.perf_counter() - t < 1.5


async def test_litellm_stream_stall_times_out_per_read(
    complete: Call, fp: FakeProvider, litellm: ModuleType
) -> None:
    fp.script(Reply(content="abcdef", chunk_chars=1, chunk_delay_s=0), Reply(chunk_delay_s=2))
    stream = await complete(stream=True, timeout=0.3)
    assert len([c async for c in stream]) == 8  # a fast stream is not bound by the timeout
    got: list[Any] = []
    t = time.perf_counter()
    with pytest.raises(litellm.Timeout):
        stream = await complete(stream=True, timeout=0.3)
        async for chunk in stream:
            got.append(chunk)
    assert time.perf_counter() - t < 1.5
    assert len(got) <= 1


async def test_litellm_latency(litellm: ModuleType, loopback_only: None) -> None:
    with FakeProvider(latency_s=0.2) as fp:
        t = time.perf_counter()
        await litellm.acompletion(
            model="openai/m", api_base=fp.base_url, api_key="k", messages=USER, num_retries=0
        )
        assert time.perf_counter() - t >= 0.2


async def test_litellm_cut_stream_raises_after_partial_output(
    complete: Call, fp: FakeProvider, litellm: ModuleType
) -> None:
    from litellm.exceptions import MidStreamFallbackError

    fp.script(Reply(content="abcdefghijkl", chunk_chars=2, cut_after_chunks=4))
    got: list[str] = []
    with pytest.raises(MidStreamFallbackError) as info:
        stream = await complete(stream=True)
        async for chunk in stream:
            got.append(chunk.choices[0].delta.content or "")
    assert isinstance(info.value, litellm.ServiceUnavailableError)
    assert info.value.status_code == 500
    assert "".join(got) == "abcdef"  # what arrived before the cut was delivered
    assert len(fp.requests) == 1  # a broken stream is never retried


async def test_litellm_cut_non_stream_body(
    complete: Call, fp: FakeProvider, litellm: ModuleType
) -> None:
    fp.script(Reply(cut_after_chunks=0))
    with pytest.raises(litellm.InternalServerError, match="Connection error"):
        await complete()


async def test_litellm_provider_down(litellm: ModuleType, loopback_only: None) -> None:
    with FakeProvider() as fp:
        base_url = fp.base_url
    with pytest.raises(litellm.InternalServerError, match="Connection error"):
        await litellm.acompletion(
            model="openai/m", api_base=base_url, api_key="k", messages=USER, num_retries=0
        )
