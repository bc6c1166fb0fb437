"""What legion's LLM gateway adds to one chat completion, at concurrency 1.

Three paths to the same fake OpenAI-compatible provider (its own process, zero latency),
each timed over the same number of sequential, non-streaming calls after a warm-up:

(a) legion, `passthrough = false` (the LiteLLM path): an agent's Unix socket -> the host's
    HTTP server -> gateway (permission +
    audit record, budget reserve, key from the vault, LiteLLM, settle, CostUpdated) ->
    LiteLLM -> provider. The host runs in its own process, as it does for agent
    containers; the client is a raw keep-alive HTTP/1.1 protocol on the agent socket.
(b) LiteLLM alone: `litellm.acompletion` with the gateway's own arguments, configured by
    legion's `load_blocking()`, called directly in this process.
(c) plain httpx: one `httpx.AsyncClient.post` (keep-alive) of the same JSON body.

The paths take turns in blocks of 25 back-to-back calls (rotating order), so drift and
noise fall on all three alike. Legion's own layers are (a) - (b): the socket hop,
HTTP parse/validation, policy + audit, budget bookkeeping, vault and redaction. A second,
separate pass times each of those steps inside the host (median us per call).

Target: (a) - (b) <= 1 ms at p50 (checked at durability "full", the default; "normal"
shown). With --profile DIR the host is profiled under cProfile and the
heaviest legion functions per call are printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import pstats
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from bench._common import (
    RawHttp,
    Report,
    close_server,
    fmt_ms,
    heading,
    line,
    percentile,
    profile_path,
    run_alone,
    serve_minimal,
    server_process,
    short_home,
    start_host,
    summary_ms,
)

ADDED_P50_MS = 1.0
AGENT = "bench"
KEY = "sk-bench-provider-key-0123456789"
MAX_TOKENS = 64
MESSAGES = [{"role": "user", "content": "Summarise the state of the build in one line."}]
PROVIDER_MODEL = "openai/fake-model"
TIME_LIMIT_S = 120.0  # per durability: the timed rounds stop here whatever is left
BLOCK = 25  # back-to-back calls of one path before the next path takes its turn

CONFIG = """
[host]
durability = "{durability}"

[llm]
default_max_tokens = {max_tokens}

[llm.models.fast]
model = "{model}"
api_base = "{api_base}"
credential = "provider"
passthrough = {passthrough}
input_cost_per_mtok = 1.0
output_cost_per_mtok = 2.0

[agents.bench]
model = "fast"

[agents.bench.budget]
daily_usd = 1000000.0
monthly_usd = 1000000.0
"""


# --- the breakdown: timers on legion's own steps, switched on for a separate pass ----------

# key -> (module, class or None, attribute); each is timed per call while the timers are on.
TIMED: dict[str, tuple[str, str | None, str]] = {
    "handle": ("legion.api.conn", "Connection", "_run"),
    "dispatch": ("legion.api.http", "HttpServer", "dispatch"),
    "chat": ("legion.gateway.llm.gateway", "Gateway", "chat"),
    "check": ("legion.mesh.permissions", "Guard", "check"),
    "reserve": ("legion.gateway.llm.budget", "Budgets", "reserve"),
    "secret": ("legion.gateway.vault", "Vault", "system_secret"),
    "touch": ("legion.gateway.vault", "Vault", "_touch"),
    "litellm": ("litellm", None, "acompletion"),
    "finish": ("legion.gateway.llm.gateway", "Gateway", "_finish"),
    "settle": ("legion.gateway.llm.budget", "Budgets", "settle"),
    "settled": ("legion.gateway.llm.gateway", "Gateway", "_settled"),
}


# What the bare hop answers: about the size of legion's answer to MESSAGES.
BARE_REPLY = json.dumps(
    {
        "id": "chatcmpl-0123456789abcdef0123456789",
        "created": 1700000000,
        "model": "fast",
        "object": "chat.completion",
        "choices": [
            {
                "finish_reason": "stop",
                "index": 0,
                "message": {"content": "echo: " + MESSAGES[0]["content"], "role": "assistant"},
            }
        ],
        "usage": {"completion_tokens": 12, "prompt_tokens": 13, "total_tokens": 25},
        "legion": {"request_id": "req_0123456789abcdef0123", "cost_usd": 3.7e-05},
    }
).encode()


class Timers:
    """Wraps the TIMED callables (class or module attributes) while switched on."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}
        self.patched: list[tuple[Any, str, Any]] = []

    def on(self) -> None:
        import importlib
        import inspect

        self.off()
        self.times = {key: [] for key in TIMED}
        for key, (module, cls, attr) in TIMED.items():
            owner = importlib.import_module(module)
            if cls is not None:
                owner = getattr(owner, cls)
            original = owner.__dict__[attr] if cls is not None else getattr(owner, attr)
            out = self.times[key]
            setattr(owner, attr, self._wrap(original, out, inspect.iscoroutinefunction(original)))
            self.patched.append((owner, attr, original))

    @staticmethod
    def _wrap(fn: Any, out: list[float], is_async: bool) -> Any:
        clock = time.perf_counter
        if is_async:

            async def timed_async(*args: Any, **kw: Any) -> Any:
                t0 = clock()
                try:
                    return await fn(*args, **kw)
                finally:
                    out.append(clock() - t0)

            return timed_async

        def timed(*args: Any, **kw: Any) -> Any:
            t0 = clock()
            try:
                return fn(*args, **kw)
            finally:
                out.append(clock() - t0)

        return timed

    def off(self) -> None:
        for owner, attr, original in reversed(self.patched):
            setattr(owner, attr, original)
        self.patched.clear()


async def _servers(stack: contextlib.AsyncExitStack, kwargs: dict[str, Any]) -> dict[str, Any]:
    """In the server child: seed the vault, start the host (LiteLLM preloaded), and a
    small control socket that switches the breakdown timers on and reads them."""
    from legion.gateway.vault import Vault
    from legion.paths import Paths

    home = kwargs["home"]
    os.environ["LEGION_HOME"] = home
    paths = Paths.resolve(home)
    vault = Vault(paths.vault_db, paths.vault_key)
    vault.set("provider", KEY, tier="system")
    vault.close()
    host = await start_host(
        stack,
        CONFIG.format(
            durability=kwargs["durability"],
            max_tokens=MAX_TOKENS,
            model=PROVIDER_MODEL,
            api_base=kwargs["api_base"],
            passthrough="true" if kwargs.get("passthrough") else "false",
        ),
    )
    await host.litellm.get()  # the import is start-up work, not part of any call
    timers = Timers()
    stack.callback(timers.off)

    async def control(method: str, target: str, body: bytes) -> bytes:
        if target == "/timers/on":
            timers.on()
            return b"{}"
        if target == "/bare":
            return BARE_REPLY
        timers.off()
        return json.dumps(timers.times).encode()

    stats = paths.run / "bench-stats.sock"
    close_server(stack, await serve_minimal(stats, control))
    return {"agent": str(paths.agent_socket(AGENT)), "stats": str(stats)}


def _litellm() -> Any:
    """LiteLLM configured exactly as the host configures it."""
    from legion.gateway.llm.runtime import load_blocking

    return load_blocking()


async def _legion_call(client: RawHttp, body: bytes, limit_s: float = 10.0) -> float:
    status, data, t0, t1 = await client.request(
        "POST", "/v1/chat/completions", body, limit_s=limit_s
    )
    if status != 200:
        raise RuntimeError(f"legion call failed: {status} {data[:300]!r}")
    return t1 - t0


async def _litellm_call(litellm: Any, kwargs: dict[str, Any]) -> float:
    t0 = time.perf_counter()
    result = await litellm.acompletion(**kwargs)
    t1 = time.perf_counter()
    if not result.choices:
        raise RuntimeError("LiteLLM returned no choices")
    return t1 - t0


async def _httpx_call(client: httpx.AsyncClient, url: str, body: bytes) -> float:
    t0 = time.perf_counter()
    response = await client.post(url, content=body)
    t1 = time.perf_counter()
    if response.status_code != 200:
        raise RuntimeError(f"direct call failed: {response.status_code} {response.text[:300]}")
    return t1 - t0


async def _measure(
    info: dict[str, Any], api_base: str, warmup: int, rounds: int
) -> dict[str, list[float]]:
    litellm = await asyncio.to_thread(_litellm)
    gc.freeze()  # LiteLLM's ~400k objects out of this process's full collections (~200 ms)
    legion_body = json.dumps({"messages": MESSAGES}).encode()
    direct = {"model": PROVIDER_MODEL.split("/", 1)[1], "messages": MESSAGES}
    direct_body = json.dumps({**direct, "max_tokens": MAX_TOKENS}).encode()
    # The arguments the gateway passes (Gateway._kwargs), minus what only it knows.
    litellm_kwargs = {
        "messages": MESSAGES,
        "max_tokens": MAX_TOKENS,
        "model": PROVIDER_MODEL,
        "api_key": KEY,
        "api_base": api_base,
        "timeout": 120.0,
        "num_retries": 0,
        "max_retries": 0,
    }
    out: dict[str, list[float]] = {
        "httpx": [],
        "litellm": [],
        "legion": [],
        "breakdown_rtt": [],
        "bare": [],
    }
    agent = await RawHttp.connect(info["agent"])
    stats = await RawHttp.connect(info["stats"])
    http = httpx.AsyncClient(
        trust_env=False,
        timeout=10.0,
        headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"},
    )
    url = api_base + "/chat/completions"
    paths: dict[str, Callable[[], Awaitable[float]]] = {
        "httpx": lambda: _httpx_call(http, url, direct_body),
        "litellm": lambda: _litellm_call(litellm, litellm_kwargs),
        "legion": lambda: _legion_call(agent, legion_body),
    }
    order = list(paths)
    try:
        await _legion_call(agent, legion_body, limit_s=60.0)
        for _ in range(warmup):
            for name in order:
                await paths[name]()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIME_LIMIT_S
        for i in range(rounds // BLOCK):
            if loop.time() > deadline:
                break
            # Blocks of back-to-back calls per path, the paths in a rotating order.
            for name in order[i % 3 :] + order[: i % 3]:
                for _ in range(BLOCK):
                    out[name].append(await paths[name]())
        # The breakdown pass (timers on in the host): not part of the figures above.
        await stats.request("POST", "/timers/on")
        for _ in range(rounds // BLOCK // 2):
            for _ in range(BLOCK):
                out["breakdown_rtt"].append(await _legion_call(agent, legion_body))
            for _ in range(BLOCK):
                _, _, t0, t1 = await stats.request("POST", "/bare", legion_body)
                out["bare"].append(t1 - t0)
        _, data, _, _ = await stats.request("GET", "/timers")
        for key, samples in json.loads(data).items():
            out["t:" + key] = samples
    finally:
        agent.close()
        stats.close()
        await http.aclose()
    return out


def _sizes(quick: bool) -> tuple[int, int]:
    """(warm-up calls per path, timed calls per path)."""
    return (20, 100) if quick else (50, 600)


async def _run_one(
    durability: str, api_base: str, quick: bool, profile: str | None, passthrough: bool = False
) -> dict[str, list[float]]:
    warmup, rounds = _sizes(quick)
    with short_home() as home:
        kwargs = {
            "home": str(home),
            "durability": durability,
            "api_base": api_base,
            "passthrough": passthrough,
        }
        async with server_process(_servers, kwargs, profile) as info:
            return await _measure(info, api_base, warmup, rounds)


def print_breakdown(res: dict[str, list[float]]) -> None:
    """Median microseconds per call of each step of a legion call (a separate pass with the
    timers on; each wrapper adds about a microsecond). Medians of parts do not add up
    exactly to the median of the whole; "rest" rows are differences of medians."""
    calls = len(res["breakdown_rtt"])
    if not calls:
        return
    t = {key: percentile(res.get("t:" + key, []), 50) * 1e6 for key in TIMED}
    rtt = percentile(res["breakdown_rtt"], 50) * 1e6
    bare = percentile(res["bare"], 50) * 1e6
    chat_rest = t["chat"] - t["check"] - t["reserve"] - t["secret"] - t["litellm"] - t["finish"]
    finish_rest = t["finish"] - t["settle"] - t["settled"]
    commits = t["check"] + t["reserve"] + t["touch"] + t["settle"]
    rows = [
        (rtt, "client round trip on the agent socket, of which:"),
        (rtt - t["handle"], "  socket hop both ways + waiting for the host loop, see below"),
        (bare, "    (a whole bare HTTP round trip to the host process: the hop alone)"),
        (t["handle"] - t["dispatch"], "  response redaction and write (h11 parse: in the hop)"),
        (t["dispatch"] - t["chat"], "  routing + ChatRequest validation"),
        (t["check"], "  permission check + its audit record (a commit)"),
        (t["reserve"], "  budget reserve (a commit)"),
        (t["secret"], "  provider key from the vault, of which:"),
        (t["touch"], "    last_used_at UPDATE on vault.db (a commit, always synchronous=FULL)"),
        (t["litellm"], "  LiteLLM acompletion (not legion's)"),
        (t["settle"], "  budget settle (a commit)"),
        (t["settled"], "  CostUpdated event"),
        (finish_rest, "  response: model_dump, usage, json.dumps"),
        (chat_rest, "  rest of gateway.chat (pricing, kwargs, uuid, ...)"),
        (rtt - t["litellm"], "round trip minus LiteLLM's call"),
        (
            rtt - t["litellm"] - (rtt - t["handle"] - bare),
            "legion's own share: the above minus the wait for LiteLLM's leftover work",
        ),
        (commits, "  of which the four SQLite commits (audit, reserve, vault, settle)"),
    ]
    line(f"breakdown (separate pass, {calls} calls, timers on; median us per call):")
    for value, label in rows:
        line(f"  {value:8.1f}  {label}")
    line("  (the wait = hop minus bare hop: the host loop is still busy when the request")
    line("  arrives, with LiteLLM's post-call logging tasks of the previous call; (b) pays")
    line("  the same, in this process)")


def print_profile(path: str, calls: int, top: int = 15) -> None:
    """The heaviest functions in the host, in microseconds per legion call (cProfile slows
    Python code several-fold, not system calls such as fsync: read shares, not totals)."""
    stats = pstats.Stats(path)
    rows = []
    for (filename, lineno, name), (_, _, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        short = filename
        for marker in ("/site-packages/", "/work/main/", "/lib/python3.11/"):
            if marker in filename:
                short = filename.split(marker, 1)[1]
                break
        rows.append((cumtime / calls * 1e6, tottime / calls * 1e6, f"{short}:{lineno}({name})"))
    line(f"host profile {path} (us per legion call; cumulative, own):")
    line("  legion functions, by cumulative time:")
    ours = [r for r in rows if r[2].startswith("legion/")]
    for cum, tot, where in sorted(ours, reverse=True)[:top]:
        line(f"  {cum:9.1f} {tot:9.1f}  {where}")
    line("  any code, by own time:")
    for cum, tot, where in sorted(rows, key=lambda r: r[1], reverse=True)[:top]:
        line(f"  {cum:9.1f} {tot:9.1f}  {where}")


def run(quick: bool = False, profile: str | None = None) -> Report:
    from tests.fakes.provider import FakeProviderProcess

    report = Report("llm_overhead")
    heading("llm_overhead: one chat completion via legion vs LiteLLM alone vs plain httpx")
    with FakeProviderProcess(latency_ms=0) as provider:
        line(f"fake provider: {provider.base_url} (own process, zero latency), concurrency 1")
        for durability in ("full", "normal"):
            prof = profile_path(profile, f"llm_overhead_host_{durability}")
            res = asyncio.run(_run_one(durability, provider.base_url, quick, prof))
            direct, alone, legion = (summary_ms(res[k]) for k in ("httpx", "litellm", "legion"))
            line(f"durability={durability!r}:" + (" (host under cProfile)" if prof else ""))
            line(f"  (c) plain httpx      {fmt_ms(direct)}")
            line(f"  (b) LiteLLM alone    {fmt_ms(alone)}")
            line(f"  (a) legion gateway   {fmt_ms(legion)}")
            line(
                f"  LiteLLM over httpx: p50 +{alone['p50'] - direct['p50']:.3f} ms "
                f"({alone['p50'] / direct['p50']:.2f}x)"
            )
            added = legion["p50"] - alone["p50"]
            line(
                f"  legion over LiteLLM: p50 +{added:.3f} ms "
                f"({legion['p50'] / alone['p50']:.2f}x), "
                f"p99 +{legion['p99'] - alone['p99']:.3f} ms "
                f"({legion['p99'] / alone['p99']:.2f}x)"
            )
            report.check(
                f"legion added p50 over LiteLLM, durability={durability}"
                + (" (default)" if durability == "full" else " (informative)"),
                added <= ADDED_P50_MS,
                f"+{added:.3f} ms (target <= {ADDED_P50_MS} ms)",
            )
            alone_in_host = summary_ms(res["t:litellm"])
            line(f"  (LiteLLM inside the host, breakdown pass: p50 {alone_in_host['p50']:.3f} ms)")
            print_breakdown(res)
            if prof:
                print_profile(
                    prof, len(res["legion"]) + len(res["breakdown_rtt"]) + _sizes(quick)[0] + 1
                )
        # The direct path (an OpenAI-compatible upstream, no LiteLLM in the call) for contrast.
        res = asyncio.run(_run_one("full", provider.base_url, quick, None, passthrough=True))
        direct_path = summary_ms(res["legion"])
        line("direct upstream path (passthrough = true, durability full), same provider:")
        line(f"  (a') legion direct   {fmt_ms(direct_path)}")
        alone_p50 = summary_ms(res["litellm"])["p50"]
        line(f"  vs LiteLLM alone: p50 {direct_path['p50'] - alone_p50:+.3f} ms")
    return report


if __name__ == "__main__":
    sys.exit(run_alone(run, __doc__, "llm_overhead"))
