"""issue 7 (adversarial pass): a hostile OpenAI-compatible upstream, on both paths: a
redirect toward another loopback service, a stream that never stops, data after [DONE],
an endless line, a huge body."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from legion.config import parse_config
from legion.gateway.vault import Vault
from legion.host import Host
from legion.paths import Paths
from tests.conftest import agent_client, loopback_server

pytestmark = pytest.mark.anyio

KEY = "sk-hostile-upstream-key-4Kq8Zr2Xv6"
CANARY = "internal-canary-9f8e7d"


class Internal(BaseHTTPRequestHandler):
    """A loopback service the host should never be steered to."""

    hits: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        Internal.hits.append(f"{self.command} {self.path} auth={self.headers.get('Authorization')}")
        body = json.dumps({"secret": CANARY}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer


def chunk(text: str) -> bytes:
    event = {
        "id": "x",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(event).encode() + b"\n\n"


class Hostile(BaseHTTPRequestHandler):
    mode: ClassVar[str] = ""
    target: ClassVar[str] = ""
    stop: ClassVar[threading.Event] = threading.Event()
    sent: ClassVar[list[int]] = []
    disguise: ClassVar[bool] = False  # a stream sent as application/json

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        mode = Hostile.mode
        if mode == "redirect":
            self.send_response(307)
            self.send_header("Location", Hostile.target + "/v1/chat/completions")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if not body.get("stream"):
            if mode in ("huge_body", "junk_body"):
                text = "x" * (8 << 20) if mode == "huge_body" else "fine"
                reply = {
                    "id": "x",
                    "object": "chat.completion",
                    "model": "m",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1},
                }
                if mode == "junk_body":
                    reply["junk"] = "j" * (8 << 20)
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            return
        self.send_response(200)
        # a stream that claims to be something else must be bounded all the same
        plain = mode == "long_line" and Hostile.disguise
        self.send_header("Content-Type", "application/json" if plain else "text/event-stream")
        self.end_headers()
        total = 0
        try:
            if mode == "endless":
                piece = chunk("y" * 4096)
                while not Hostile.stop.is_set() and total < (8 << 20):
                    self.wfile.write(piece)
                    total += len(piece)
            elif mode == "after_done":
                self.wfile.write(chunk("hello"))
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                while not Hostile.stop.is_set():
                    self.wfile.write(b": keep\n")
                    self.wfile.flush()
                    time.sleep(0.2)
            elif mode == "long_line":
                self.wfile.write(b"data: ")
                while not Hostile.stop.is_set() and total < (32 << 20):
                    self.wfile.write(b"z" * 65536)
                    total += 65536
        except OSError:
            pass
        Hostile.sent.append(total)


@pytest.fixture
def hostile() -> Iterator[ThreadingHTTPServer]:
    Hostile.stop.clear()
    Hostile.sent.clear()
    Hostile.disguise = False
    Internal.hits.clear()
    with loopback_server(Hostile) as server:
        yield server
        Hostile.stop.set()


@pytest.fixture
def internal() -> Iterator[ThreadingHTTPServer]:
    with loopback_server(Internal) as server:
        yield server


@pytest.fixture(params=["direct", "litellm"])
def direct(request: pytest.FixtureRequest) -> bool:
    return bool(request.param == "direct")


@asynccontextmanager
async def host_for(home: Path, base_url: str, direct: bool) -> AsyncIterator[Host]:
    paths = Paths.resolve(home)
    vault = Vault(paths.vault_db, paths.vault_key)
    vault.set("provider", KEY, tier="system")
    vault.close()
    text = f"""
[llm]
default_max_tokens = 64

[llm.models.fast]
model = "openai/fake-fast"
api_base = "{base_url}/v1"
credential = "provider"
passthrough = {"true" if direct else "false"}
input_cost_per_mtok = 1.0
output_cost_per_mtok = 1.0
timeout_s = 5

[agents.alice]
model = "fast"
"""
    async with Host.running(parse_config(text), paths) as host:
        yield host


def url(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


CAP = 64 * 1024  # max_tokens 64 x 1024 bytes, the longest token of any tokenizer


def ledger(host: Host) -> list[tuple[str, int, int]]:
    rows = host.store.execute("SELECT status, prompt_tokens, completion_tokens FROM ledger")
    return [tuple(r) for r in rows]


def streamed_text(raw: bytes) -> tuple[str, list[Any]]:
    events = [
        json.loads(line[6:]) for line in raw.decode().split("\n") if line.startswith("data: {")
    ]
    text = "".join(
        (c.get("delta") or {}).get("content") or "" for e in events for c in e.get("choices") or []
    )
    return text, events


async def call(host: Host, stream: bool) -> Any:
    async with agent_client(host.paths, "alice", timeout=20) as alice:
        body = {"messages": [{"role": "user", "content": "hi"}], "stream": stream}
        return await alice.post("/v1/chat/completions", json=body)


async def test_issue_7_a_stream_past_what_max_tokens_allows_is_cut_off(
    home: Path, direct: bool, hostile: ThreadingHTTPServer
) -> None:
    """issue 7 (adversarial pass): a provider that ignores max_tokens and streams without
    end (8 MB for max_tokens 64, no usage): the host relayed all of it and kept every byte
    for its local count (1.3 GB of RSS for 256 MB). The reply is cut off once its text
    passes max_tokens x 1024 bytes, with an error event; booked at max_tokens."""
    Hostile.mode = "endless"
    async with host_for(home, url(hostile), direct) as host:
        response = await call(host, stream=True)
        assert response.status_code == 200
        text, events = streamed_text(response.content)
        assert CAP <= len(text) <= CAP + 4096
        assert "more than 65536 bytes of text for max_tokens 64" in events[-1]["error"]["message"]
        assert ledger(host) == [("failed_mid_stream", ledger(host)[0][1], 64)]
        assert host.budgets.open == {}


async def test_issue_7_a_reply_longer_than_max_tokens_allows_is_refused(
    home: Path, direct: bool, hostile: ThreadingHTTPServer
) -> None:
    """issue 7 (adversarial pass): a provider answers max_tokens 64 with 8 MB of text and
    reports 1 completion token: the host handed it all on and booked 1 token. It is
    refused (502); the ledger keeps what the provider reported."""
    Hostile.mode = "huge_body"
    async with host_for(home, url(hostile), direct) as host:
        response = await call(host, stream=False)
        assert response.status_code == 502, response.text[:300]
        assert response.json()["error"]["code"] == "provider_error"
        assert len(response.content) < 4096
        # LiteLLM read it and the provider's figures are booked; the direct path refused
        # the body unread (over 1 MiB + 6 x the text cap), so there are none to book
        assert ledger(host) == [("failed_server", 0, 0) if direct else ("failed_server", 1, 1)]
        assert host.budgets.open == {}


async def test_issue_7_the_direct_path_reads_a_bounded_body(
    home: Path, hostile: ThreadingHTTPServer
) -> None:
    """issue 7 (adversarial pass): on the direct path an answer is read up to what a reply
    of max_tokens can need (1 MiB + 6 x its text), an 8 MB body with a junk field is
    refused rather than buffered and handed on."""
    Hostile.mode = "junk_body"
    async with host_for(home, url(hostile), True) as host:
        response = await call(host, stream=False)
        assert response.status_code == 502
        assert "over 1441792 bytes" in response.json()["error"]["message"]
        assert host.budgets.open == {}


async def test_issue_7_an_endless_stream_line_is_refused_not_buffered(
    home: Path, hostile: ThreadingHTTPServer
) -> None:
    """issue 7 (adversarial pass): one `data:` line that never ends (32 MB): the direct path
    buffered it whole before failing to parse it. It is refused at the same bound."""
    Hostile.mode = "long_line"
    async with host_for(home, url(hostile), True) as host:
        response = await call(host, stream=True)
        assert response.status_code == 502
        assert "stream line over 1441792 bytes" in response.json()["error"]["message"]
        assert host.budgets.open == {}


async def test_issue_7_an_endless_stream_line_is_refused_on_the_litellm_path(
    home: Path, hostile: ThreadingHTTPServer
) -> None:
    """issue 7 (adversarial pass, left open then): LiteLLM read an SSE line whole (a 32 MB
    line cost ~1 GB of RSS) and then reported an empty, successful reply. The transport
    under it bounds each line at what a reply of max_tokens can need: refused, booked."""
    Hostile.mode = "long_line"
    for disguise in (False, True):  # and a stream sent as application/json
        Hostile.disguise = disguise
        calls = len(Hostile.sent)
        async with host_for(home, url(hostile), False) as host:  # a new host: no cooldown
            response = await call(host, stream=True)
            assert response.status_code == 502, response.text[:300]
            assert "stream line over 1441792 bytes" in response.json()["error"]["message"]
            assert host.budgets.open == {}
            assert len(ledger(host)) == calls + 1  # booked
        async with asyncio.timeout(10):  # the host hung up: the provider's write fails
            while len(Hostile.sent) == calls:
                await asyncio.sleep(0.02)
        assert Hostile.sent[-1] < (32 << 20)  # it stopped reading long before the end


async def test_issue_7_what_follows_done_cannot_hold_the_call_open(
    home: Path, direct: bool, hostile: ThreadingHTTPServer
) -> None:
    """issue 7 (adversarial pass): a provider sends [DONE] and then keeps the connection
    open, trickling comments: the direct path read on "to the end" and the agent's call
    (and its reservation) stayed open as long as the provider liked. What follows [DONE]
    is read for at most a second."""
    Hostile.mode = "after_done"
    async with host_for(home, url(hostile), direct) as host:
        started = time.monotonic()
        response = await call(host, stream=True)
        assert time.monotonic() - started < 10
        assert response.status_code == 200
        assert host.budgets.open == {}
        assert len(ledger(host)) == 1


async def test_issue_7_a_redirect_from_the_provider_is_never_followed(
    home: Path, direct: bool, hostile: ThreadingHTTPServer, internal: ThreadingHTTPServer
) -> None:
    """issue 7 (adversarial pass): the provider answers 307 toward another loopback service:
    LiteLLM (the OpenAI SDK's client, follow_redirects=True) posted the agent's prompt
    there, past the egress policy, and its answer's keys reached the agent in the error.
    No path follows a redirect; the call fails and nothing reaches the other service."""
    Hostile.mode = "redirect"
    Hostile.target = url(internal)
    async with host_for(home, url(hostile), direct) as host:
        for stream in (False, True):
            response = await call(host, stream=stream)
            assert response.status_code >= 400, response.text[:300]
            assert "secret" not in response.text and CANARY not in response.text
        assert Internal.hits == []
        assert host.budgets.open == {}
