"""Pub/sub fan-out: publish-start -> item visible to 32 long-polling subscribers.

Legion: a running Host with 33 agents. 32 subscribers are subscribed to `bench/fanout`;
each long-polls its inbox (POST /v1/inbox/poll, wait_s) on its own socket and acks what
it gets (POST /v1/inbox/ack) before polling again. One publisher POSTs /v1/publish.
Latency = time the poll response's last byte arrives at the subscriber - time the
publisher started writing its publish request.

Baseline: a minimal asyncio HTTP server on 33 Unix sockets in the same child process
that parks each poll and, on a publish, answers every parked poll with the payload
(no routing, validation, permission, audit or storage), driven by the same clients.

Rounds are sequential: the next publish goes out once every subscriber has its item,
has acked it and has been waiting in its next poll for a short settle time.
Target: p99 <= 5 ms (checked at durability "full", the default; "normal" shown).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from typing import Any

from bench._common import (
    RawHttp,
    Report,
    close_server,
    fmt_ms,
    heading,
    line,
    profile_path,
    run_alone,
    serve_minimal,
    server_process,
    short_home,
    start_host,
    summary_ms,
)

P99_MS = 5.0
SUBSCRIBERS = 32
TOPIC = "bench/fanout"
PUBLISHER = "pub"
SETTLE_S = 0.01  # after the last subscriber re-polls, before the next publish
ROUND_TIMEOUT_S = 5.0


def _sub_name(i: int) -> str:
    return f"sub-{i:02d}"


def _config(durability: str) -> str:
    parts = [
        f'[host]\ndurability = "{durability}"\n',
        f'[agents.{PUBLISHER}.permissions]\ncan_publish = ["bench/**"]\n',
    ]
    for i in range(SUBSCRIBERS):
        parts.append(f'[agents.{_sub_name(i)}.permissions]\ncan_subscribe = ["bench/**"]\n')
    return "\n".join(parts)


async def _servers(stack: contextlib.AsyncExitStack, kwargs: dict[str, Any]) -> dict[str, Any]:
    from legion.paths import Paths

    home = kwargs["home"]
    os.environ["LEGION_HOME"] = home
    await start_host(stack, _config(kwargs["durability"]))
    paths = Paths.resolve(home)

    # The baseline: one waiter per subscriber socket, resolved by a publish.
    parked: dict[int, asyncio.Future[bytes]] = {}
    next_id = [0]

    def subscriber_responder(i: int) -> Any:
        async def respond(method: str, target: str, body: bytes) -> bytes:
            if target == "/v1/inbox/poll":
                fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
                parked[i] = fut
                try:
                    return await asyncio.wait_for(fut, json.loads(body)["wait_s"])
                except TimeoutError:
                    return b'{"items":[]}'
                finally:
                    if parked.get(i) is fut:
                        del parked[i]
            return b'{"acked":1}'

        return respond

    async def publisher_responder(method: str, target: str, body: bytes) -> bytes:
        payload = json.loads(body)["payload"]
        delivered = []
        for i, fut in list(parked.items()):
            if not fut.done():
                next_id[0] += 1
                item = {"id": next_id[0], "kind": "topic", "topic": TOPIC, "sender": PUBLISHER}
                item.update(payload=payload, created_at=time.time(), deliveries=1)
                fut.set_result(json.dumps({"items": [item]}).encode())
                delivered.append(_sub_name(i))
        return json.dumps({"topic": TOPIC, "delivered_to": delivered}).encode()

    base_dir = paths.run / "base"
    base_dir.mkdir()
    base_subs = []
    for i in range(SUBSCRIBERS):
        path = base_dir / f"{i}.sock"
        close_server(stack, await serve_minimal(path, subscriber_responder(i)))
        base_subs.append(str(path))
    base_pub = base_dir / "pub.sock"
    close_server(stack, await serve_minimal(base_pub, publisher_responder))
    return {
        "legion": {
            "pub": str(paths.agent_socket(PUBLISHER)),
            "subs": [str(paths.agent_socket(_sub_name(i))) for i in range(SUBSCRIBERS)],
        },
        "base": {"pub": str(base_pub), "subs": base_subs},
    }


class _Fanout:
    """One publisher and SUBSCRIBERS long-polling subscribers on given sockets."""

    def __init__(self, sockets: dict[str, Any]) -> None:
        self.sockets = sockets
        self.sent_at: dict[int, float] = {}
        self.latencies: list[float] = []
        self.got: dict[int, int] = {}  # round -> subscribers that have it
        self.round_done: dict[int, asyncio.Event] = {}
        self.repolled = 0
        self.repolled_event = asyncio.Event()
        self.stopping = False
        self.errors: list[str] = []

    async def subscriber(self, conn: RawHttp, i: int) -> None:
        while not self.stopping:
            self.repolled += 1
            if self.repolled >= SUBSCRIBERS:
                self.repolled_event.set()
            body = b'{"max_items":10,"wait_s":2.0}'
            status, data, _, arrived = await conn.request(
                "POST", "/v1/inbox/poll", body, limit_s=10.0
            )
            if status != 200:
                self.errors.append(f"{_sub_name(i)} poll: {status} {data[:200]!r}")
                return
            items = json.loads(data)["items"]
            if not items:
                continue
            for item in items:
                r = item["payload"].get("round")
                if item["deliveries"] == 1 and r in self.sent_at:
                    self.latencies.append(arrived - self.sent_at[r])
                    self.got[r] = self.got.get(r, 0) + 1
                    if self.got[r] == SUBSCRIBERS:
                        self.round_done[r].set()
            ids = json.dumps({"ids": [item["id"] for item in items]}).encode()
            status, data, _, _ = await conn.request("POST", "/v1/inbox/ack", ids)
            if status != 200:
                self.errors.append(f"{_sub_name(i)} ack: {status} {data[:200]!r}")
                return

    async def run(self, rounds: int, seconds: float) -> tuple[list[float], list[float], int]:
        subs = [await RawHttp.connect(p) for p in self.sockets["subs"]]
        pub = await RawHttp.connect(self.sockets["pub"])
        publish_rtts: list[float] = []
        done_rounds = 0
        try:
            for conn in subs:
                status, data, _, _ = await conn.request(
                    "POST", "/v1/subscriptions", json.dumps({"topic": TOPIC}).encode()
                )
                if status != 200:
                    raise RuntimeError(f"subscribe failed: {status} {data[:300]!r}")
            tasks = [asyncio.create_task(self.subscriber(conn, i)) for i, conn in enumerate(subs)]
            loop = asyncio.get_running_loop()
            deadline = loop.time() + seconds
            for r in range(rounds):
                if loop.time() > deadline or self.errors:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.repolled_event.wait(), ROUND_TIMEOUT_S)
                await asyncio.sleep(SETTLE_S)
                self.repolled = 0
                self.repolled_event.clear()
                self.round_done[r] = asyncio.Event()
                body = json.dumps({"topic": TOPIC, "payload": {"round": r}}).encode()
                self.sent_at[r] = time.perf_counter()
                status, data, t0, t1 = await pub.request("POST", "/v1/publish", body)
                if status != 200:
                    raise RuntimeError(f"publish failed: {status} {data[:300]!r}")
                if len(json.loads(data)["delivered_to"]) != SUBSCRIBERS:
                    raise RuntimeError(f"publish reached only {data[:300]!r}")
                publish_rtts.append(t1 - t0)
                try:
                    await asyncio.wait_for(self.round_done[r].wait(), ROUND_TIMEOUT_S)
                except TimeoutError:
                    self.errors.append(
                        f"round {r}: only {self.got.get(r, 0)}/{SUBSCRIBERS} subscribers got "
                        f"the item within {ROUND_TIMEOUT_S} s"
                    )
                    break
                done_rounds += 1
            # A last publish tells the subscribers to stop once they have acked it, so
            # no poll is left parked in the host when the connections close.
            self.stopping = True
            await pub.request(
                "POST", "/v1/publish", json.dumps({"topic": TOPIC, "payload": {}}).encode()
            )
            await asyncio.wait_for(
                asyncio.gather(*tasks, return_exceptions=True), ROUND_TIMEOUT_S + 10
            )
        finally:
            for conn in [*subs, pub]:
                conn.close()
        if self.errors:
            raise RuntimeError("; ".join(self.errors[:5]))
        return self.latencies, publish_rtts, done_rounds


async def _run_one(
    durability: str, rounds: int, seconds: float, profile: str | None
) -> dict[str, Any]:
    with short_home() as home:
        kwargs = {"home": str(home), "durability": durability}
        async with server_process(_servers, kwargs, profile) as info:
            out: dict[str, Any] = {}
            # Baseline and legion alternate in halves so drift hits both.
            for _ in range(2):
                for name in ("base", "legion"):
                    lat, pub, n = await _Fanout(info[name]).run(rounds // 2, seconds / 2)
                    prev = out.setdefault(name, ([], [], 0))
                    out[name] = (prev[0] + lat, prev[1] + pub, prev[2] + n)
            return out


def run(quick: bool = False, profile: str | None = None) -> Report:
    report = Report("pubsub_fanout")
    heading(f"pubsub_fanout: publish -> visible at {SUBSCRIBERS} long-polling subscribers")
    rounds, seconds = (40, 10.0) if quick else (400, 40.0)
    for durability in ("full", "normal"):
        prof = profile_path(profile, f"pubsub_host_{durability}")
        res = asyncio.run(_run_one(durability, rounds, seconds, prof))
        base, leg = summary_ms(res["base"][0]), summary_ms(res["legion"][0])
        base_pub, leg_pub = summary_ms(res["base"][1]), summary_ms(res["legion"][1])
        line(
            f"durability={durability!r}: {res['legion'][2]} legion rounds, "
            f"{res['base'][2]} baseline rounds, x {SUBSCRIBERS} subscribers"
        )
        line(f"  bare fan-out   delivery  {fmt_ms(base)}")
        line(f"  legion         delivery  {fmt_ms(leg)}")
        line(f"  bare fan-out   publish RTT  {fmt_ms(base_pub)}")
        line(f"  legion         publish RTT  {fmt_ms(leg_pub)}")
        line(
            f"  ratio legion/bare: p50 {leg['p50'] / base['p50']:.1f}x, "
            f"p99 {leg['p99'] / base['p99']:.1f}x; added p99 {leg['p99'] - base['p99']:.3f} ms"
        )
        report.check(
            f"fan-out delivery p99, durability={durability}"
            + (" (default)" if durability == "full" else " (informative)"),
            leg["p99"] <= P99_MS,
            f"{leg['p99']:.3f} ms (target <= {P99_MS} ms)",
        )
    return report


if __name__ == "__main__":
    sys.exit(run_alone(run, __doc__, "pubsub_fanout"))
