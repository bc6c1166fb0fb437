"""Per-socket limits: timeouts for reading requests (never for answering them), the
connection cap, bytes in flight, rate buckets with 429 + Retry-After, throttled logs.

issue 7 items 3 and 4.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from legion.config import parse_config
from legion.gateway.vault import Vault
from legion.host import Host
from legion.mesh import audit
from legion.paths import Paths
from tests.api.raw import RawConn, exchange, request
from tests.conftest import agent_client, control_client
from tests.fakes.provider import FakeProvider

pytestmark = pytest.mark.anyio

SHORT = """
[host]
max_body_bytes = 2048
[limits]
log_interval_s = {interval}
[limits.agent]
max_connections = {conns}
header_timeout_s = 0.4
body_timeout_s = 0.4
idle_timeout_s = 0.4
send_timeout_s = 2.0
max_body_bytes_in_flight = 4096
[limits.control]
header_timeout_s = 0.4
idle_timeout_s = 0.4
[agents.alice]
[agents.alice.permissions]
blackboard_read = ["**"]
blackboard_write = ["**"]
[agents.bob]
"""


@asynccontextmanager
async def host_with(home: Path, text: str) -> AsyncIterator[Host]:
    async with Host.running(parse_config(text), Paths.resolve(home)) as host:
        yield host


def short(conns: int = 8, interval: float = 60.0) -> str:
    return SHORT.format(conns=conns, interval=interval)


async def test_a_slow_head_is_cut_off_and_a_silent_connection_closed(home: Path) -> None:
    """issue 7: slowloris: a head that never completes gets 408 within the header timeout."""
    async with host_with(home, short()) as host:
        sock = host.paths.agent_socket("alice")
        slow = await RawConn.open(sock)
        silent = await RawConn.open(sock)
        try:
            started = time.monotonic()
            await slow.send(b"GET /v1/whoami HTTP/1.1\r\nhost: x\r\nx-slow: ")
            for _ in range(3):  # trickling bytes does not extend the deadline
                await asyncio.sleep(0.1)
                await slow.send(b"a")
            answer = await slow.answer(timeout_s=3)
            assert answer.status == 408
            assert json.loads(answer.body)["error"]["code"] == "request_timeout"
            assert time.monotonic() - started < 2.0
            assert await slow.closed(3)
            assert await silent.closed(3)
        finally:
            slow.close()
            silent.close()


async def test_a_slow_body_is_cut_off(home: Path) -> None:
    async with host_with(home, short()) as host:
        conn = await RawConn.open(host.paths.agent_socket("alice"))
        try:
            await conn.send(
                b"PUT /v1/blackboard/entries/k HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n"
                b'{"value": '
            )
            answer = await conn.answer(timeout_s=3)
            assert answer.status == 408
            assert await conn.closed(3)
        finally:
            conn.close()
        assert host.blackboard.get("k") is None


async def test_an_idle_keep_alive_connection_is_closed(home: Path) -> None:
    async with host_with(home, short()) as host:
        conn = await RawConn.open(host.paths.agent_socket("alice"))
        try:
            await conn.send(request("GET", "/v1/whoami"))
            assert (await conn.answer()).status == 200
            assert await conn.closed(3)
        finally:
            conn.close()


async def test_long_polls_outlive_every_read_timeout(home: Path) -> None:
    """The timeouts are for reading the request: a 1.5 s long poll (timeouts 0.4 s) is
    answered, with an item sent at 1 s; a 1.5 s blackboard watch too."""
    async with (
        host_with(home, short()) as host,
        agent_client(host.paths, "alice") as alice,
        control_client(host.paths) as operator,
    ):
        poll = asyncio.create_task(alice.post("/v1/inbox/poll", json={"wait_s": 5}))
        cursor = (await alice.post("/v1/blackboard/watch", json={"pattern": "w/**"})).json()
        watch = asyncio.create_task(
            alice.post(
                "/v1/blackboard/watch",
                json={"pattern": "w/**", "cursor": cursor["cursor"], "wait_s": 5},
            )
        )
        await asyncio.sleep(1.0)  # longer than every read timeout: the polls must survive it
        sent = await operator.post("/v1/messages", json={"to": "alice", "payload": "late"})
        await alice.put("/v1/blackboard/entries/w/x", json={"value": 1})
        got = await poll
        assert got.status_code == 200, got.text
        assert [i["id"] for i in got.json()["items"]] == [sent.json()["item_id"]]
        changed = await watch
        assert changed.status_code == 200 and changed.json()["changes"][0]["key"] == "w/x"
        assert host is not None


async def test_a_slow_streamed_reply_outlives_the_read_timeouts(home: Path) -> None:
    """An LLM streaming turn whose chunks come 0.3 s apart (longer than every read
    timeout) streams to the end; so does the control socket's event stream."""
    paths = Paths.resolve(home)
    paths.home.mkdir(parents=True, exist_ok=True)
    vault = Vault(paths.vault_db, paths.vault_key)
    vault.set("provider", "sk-limits-test-provider-key", tier="system")
    vault.close()
    with FakeProvider(latency_s=0.6, chunk_delay_s=0.3, chunk_chars=8) as fake:
        text = (
            short()
            + f"""
[llm.models.m]
model = "openai/fake"
api_base = "{fake.base_url}"
credential = "provider"
input_cost_per_mtok = 1.0
output_cost_per_mtok = 1.0
"""
        )
        text = text.replace("[agents.alice]\n", '[agents.alice]\nmodel = "m"\n')
        async with (
            host_with(home, text) as host,
            agent_client(paths, "alice") as alice,
            control_client(paths) as operator,
            operator.stream("GET", "/v1/events") as events,
        ):
            body = {
                "model": "m",
                "stream": True,
                "messages": [{"role": "user", "content": "one two three four five six"}],
            }
            started = time.monotonic()
            async with alice.stream("POST", "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200
                lines = [line async for line in response.aiter_lines() if line]
            assert time.monotonic() - started > 1.0  # the stream took longer than any timeout
            assert lines[-1] == "data: [DONE]"
            text_out = "".join(
                (json.loads(x[6:])["choices"] or [{}])[0].get("delta", {}).get("content") or ""
                for x in lines[:-1]
            )
            assert text_out == "echo: one two three four five six"
            # The event stream, open all along, still delivers.
            seen = events.aiter_lines()
            await alice.put("/v1/blackboard/entries/after", json={"value": 1})
            async with asyncio.timeout(5):
                while True:
                    line = await seen.__anext__()
                    if '"blackboard_changed"' in line:
                        break
            assert host is not None


async def test_the_connection_cap_holds_new_connections_until_one_closes(home: Path) -> None:
    """issue 7: at its cap an agent's new connection waits (in the kernel's backlog, costing
    the host nothing) until one of its own closes; other sockets are unaffected."""
    text = short(conns=4).replace("header_timeout_s = 0.4\nbody", "header_timeout_s = 30\nbody")
    async with host_with(home, text) as host:
        sock = host.paths.agent_socket("alice")
        held = [await RawConn.open(sock) for _ in range(4)]
        try:
            for conn in held:
                await conn.send(b"GET /v1/whoami HTTP/1.1\r\n")  # half a head: held open
            extra = await RawConn.open(sock)  # the kernel takes it; the host does not
            await extra.send(request("GET", "/v1/whoami"))
            with pytest.raises(TimeoutError):
                await extra.answer(timeout_s=0.5)
            serving = host.http._serving[sock]
            assert len(serving.conns) == 4, (len(serving.conns), serving.pending)
            bob = await exchange(host.paths.agent_socket("bob"), request("GET", "/v1/whoami"))
            assert bob.status == 200
            held.pop().close()
            answer = await extra.answer(timeout_s=5)
            assert answer.status == 200 and b'"alice"' in answer.body
            extra.close()
        finally:
            for conn in held:
                conn.close()
        records = audit.query(host.store.conn, actor="alice")
        assert any(r.action == "limit.connection_cap" and r.decision == "deny" for r in records)


async def test_bodies_in_flight_are_capped_per_agent(home: Path) -> None:
    """issue 7: an agent cannot make the host buffer bodies without bound across many
    connections: past its bytes in flight a new body is refused (503, Retry-After)."""
    text = short().replace("body_timeout_s = 0.4", "body_timeout_s = 30")
    async with host_with(home, text) as host:
        sock = host.paths.agent_socket("alice")
        head = b"PUT /v1/blackboard/entries/k HTTP/1.1\r\nhost: x\r\ncontent-length: 2000\r\n\r\n"
        held = [await RawConn.open(sock) for _ in range(2)]
        try:
            for conn in held:
                await conn.send(head + b"x" * 100)
            await asyncio.sleep(0.05)
            assert host.http._serving[sock].inflight == 4000
            answer = await exchange(sock, head + b"x" * 100)
            assert answer.status == 503 and answer.headers["retry-after"] == "1"
            assert json.loads(answer.body)["error"]["code"] == "busy"
            # Another agent's budget is its own.
            bob = host.paths.agent_socket("bob")
            other = await exchange(bob, request("PUT", "/v1/blackboard/entries/b", b"{}"))
            assert other.status in (403, 422)
        finally:
            for conn in held:
                conn.close()
        async with asyncio.timeout(5):
            while host.http._serving[sock].inflight:
                await asyncio.sleep(0.01)


async def test_rate_buckets_answer_429_with_retry_after(home: Path) -> None:
    """issue 7 item 4: a bucket declared in the route table; 429, Retry-After, typed JSON."""
    text = short() + "[limits.rates.write]\nper_s = 0.5\nburst = 3\n"
    async with host_with(home, text) as host, agent_client(host.paths, "alice") as alice:
        codes = [
            (await alice.put(f"/v1/blackboard/entries/r{i}", json={"value": i})).status_code
            for i in range(3)
        ]
        assert codes == [200, 200, 200]
        refused = await alice.put("/v1/blackboard/entries/r9", json={"value": 9})
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "2"
        error = refused.json()["error"]
        assert error["code"] == "rate_limited" and error["detail"]["bucket"] == "write"
        assert "[limits.rates.write]" in error["message"]
        assert host.blackboard.get("r9") is None
        # Reads have their own bucket; the control socket is not metered.
        assert (await alice.get("/v1/blackboard/entries/r0")).status_code == 200
        async with control_client(host.paths) as operator:
            for i in range(5):
                put = await operator.put(f"/v1/blackboard/entries/o{i}", json={"value": i})
                assert put.status_code == 200
        denied = [r for r in audit.query(host.store.conn, actor="alice") if r.decision == "deny"]
        assert [r.action for r in denied] == ["limit.rate_limited"]


async def test_every_agent_route_names_its_rate_bucket(home: Path) -> None:
    """The route table declares a bucket for every agent route (a new route must pick one)."""
    async with host_with(home, short()) as host:
        router = host.http._serving[host.paths.agent_socket("alice")].listener.router
        classes = set(type(host.config.limits.rates).model_fields)
        for route in router.routes:
            assert route.rate in classes, (route.method, route.template)


async def test_default_limits_do_not_throttle_a_busy_agent(home: Path) -> None:
    """Defaults: a burst of 1500 blackboard writes on one connection, 40 concurrent
    connections, and polls back to back are all served."""
    text = '[agents.alice]\n[agents.alice.permissions]\nblackboard_write = ["**"]\n'
    async with host_with(home, text) as host:
        conn = await RawConn.open(host.paths.agent_socket("alice"))
        try:
            for i in range(1500):
                await conn.send(request("PUT", f"/v1/blackboard/entries/b{i % 50}", b'{"value":1}'))
                assert (await conn.answer()).status == 200
            for _ in range(200):
                await conn.send(request("POST", "/v1/inbox/poll", b'{"wait_s": 0}'))
                assert (await conn.answer()).status == 200
        finally:
            conn.close()
        clients = [agent_client(host.paths, "alice") for _ in range(40)]
        try:
            answers = await asyncio.gather(*(c.get("/v1/whoami") for c in clients))
        finally:
            await asyncio.gather(*(c.aclose() for c in clients))
        assert {a.status_code for a in answers} == {200}


async def test_a_flood_of_refusals_is_one_log_line_per_interval(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """issue 7: 300 malformed requests and 300 timed-out connections write a handful of
    log lines (with counts), not one per event (an attack wrote 41 MB in 40 s)."""
    caplog.set_level(logging.INFO, logger="legion.http")
    async with host_with(home, short(conns=400, interval=0.5)) as host:
        sock = host.paths.agent_socket("alice")
        for _ in range(300):
            answer = await exchange(sock, b"BAD\r\n\r\n")
            assert answer.status == 400
        silent = [await RawConn.open(sock) for _ in range(300)]
        try:
            for conn in silent:
                assert await conn.closed(5)
        finally:
            for conn in silent:
                conn.close()
        await asyncio.sleep(0.6)  # let the last interval's count be written
        reports = [
            r.__dict__.get("fields", {}) for r in caplog.records if r.message == "limit reached"
        ]
        kinds = {}
        for fields in reports:
            kinds.setdefault(fields["limit"], []).append(fields["count"])
        assert sum(kinds["protocol_error"]) == 300
        assert sum(kinds["header_timeout"]) == 300
        assert len(reports) <= 12, reports


async def test_answers_an_agent_leaves_unread_are_bounded(home: Path) -> None:
    """issue 7: an agent asking for big answers on many connections and reading none makes
    the host hold one answer, not one per connection: past its bytes in flight nothing
    more of it starts until they drain (or the send timeout drops them)."""
    text = short(conns=16).replace("send_timeout_s = 2.0", "send_timeout_s = 30")
    async with host_with(home, text) as host:
        for i in range(10):
            host.blackboard.put(f"big/{i}", "x" * 60000, "alice")
        sock = host.paths.agent_socket("alice")
        serving = host.http._serving[sock]
        readers = [await RawConn.open(sock) for _ in range(12)]
        try:
            for conn in readers:
                await conn.send(request("GET", "/v1/blackboard/entries?prefix=big/"))
            async with asyncio.timeout(5):
                while serving.waiting_for_drain < 1:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            # At most one turn's worth of answers (requests_per_turn = 4) was made.
            one_answer = 10 * 60000 + 10000
            assert serving.outbound <= serving.inflight_cap + 4 * one_answer
            assert serving.waiting_for_drain + len(serving.gate.waiting) >= 12 - 4 - 4
            bob = await exchange(host.paths.agent_socket("bob"), request("GET", "/v1/whoami"))
            assert bob.status == 200
            # The first one read whole: the next gets its turn.
            answer = await readers[0].answer(timeout_s=10)
            assert answer.status == 200 and len(answer.body) > 600000
        finally:
            for conn in readers:
                conn.close()
        async with asyncio.timeout(5):
            while serving.outbound or serving.waiting_for_drain:
                await asyncio.sleep(0.01)
        records = audit.query(host.store.conn, actor="alice")
        assert any(r.action == "limit.answers_unread" for r in records)
