"""The LLM gateway: what happens between an agent's chat request and the provider.

    permission (model allowed) -> price -> reserve worst case -> key from the vault ->
    LiteLLM or the direct path -> relay (redacted across deltas, and published as
    TokenDelta) -> settle actual cost -> CostUpdated

The worst case is priced from the exact bytes forwarded upstream (bound.py). Failover walks
the model's chain only before the first streamed byte; each hop reserves again at its own
price, so failover can never overspend, and a chain that fails reports every hop, the
first (root) failure leading. A settled cost above its reservation is booked as reported,
audited and evented (`llm.over_reservation`). Provider errors reach the agent as typed JSON
errors with every vault value masked.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from legion.api.http import Response, StreamResponse
from legion.config import Config, ModelConfig
from legion.errors import LegionError
from legion.events import EventBus
from legion.gateway.llm import models, passthrough
from legion.gateway.llm.booking import Booker, Produced, usage_of
from legion.gateway.llm.bound import REQUEST_OVERHEAD_TOKENS, UpstreamBody, reply_text_cap
from legion.gateway.llm.budget import Budgets, Reservation, Usage
from legion.gateway.llm.chain import Hop, ProviderFailure, chain_error, classify, outcome
from legion.gateway.llm.health import ModelHealth
from legion.gateway.llm.inflight import AgentPaused, Call, Cut, Dispatch
from legion.gateway.llm.passthrough import Passthrough
from legion.gateway.llm.pricing import needs_table, price_for
from legion.gateway.llm.runtime import STREAM_LINE_CAP, LiteLLM, StreamLineTooLong
from legion.gateway.llm.stream import TEXT_FIELDS, DeltaRedactor
from legion.gateway.llm.toolcalls import StreamedCalls, ToolCalls
from legion.gateway.redact import Redactor
from legion.gateway.vault import Vault
from legion.mesh.audit import AuditLog
from legion.mesh.permissions import Guard, Perm
from legion.wire.api import ChatRequest, EmbeddingRequest, ModelList
from legion.wire.events import CostUpdated, ModelFailover, TokenDelta

log = logging.getLogger("legion.gateway")


# The OpenAI parameters an agent may set. Anything else is dropped before the provider call:
# LiteLLM honours fields such as base_url, api_base, extra_headers or callbacks, and an
# agent must never steer where the host's key goes or what the call costs (n, best_of).
# logprobs are not forwarded: they return the reply again token by token, a form in which
# no redaction can find a secret that spans tokens.
CHAT_PARAMS = frozenset(
    {
        "messages",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "temperature",
        "top_p",
        "stop",
        "response_format",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "user",
        "reasoning_effort",
    }
)
EMBEDDING_PARAMS = frozenset({"input", "dimensions", "encoding_format", "user"})


class ReplyTooLong(Exception):
    """The provider sent more text than the max_tokens the host sent it allows."""

    def __init__(self, cap: int, max_tokens: int) -> None:
        super().__init__(
            f"the provider sent more than {cap} bytes of text for max_tokens {max_tokens} "
            "(more tokens than it was allowed by any tokenizer); the reply was cut off"
        )


def generated(message: dict[str, Any]) -> list[str]:
    """The texts a reply's message or delta carries (what its completion tokens count)."""
    out = [t for f in TEXT_FIELDS if isinstance(t := message.get(f), str)]
    for call in message.get("tool_calls") or ():
        args = (
            ((call or {}).get("function") or {}).get("arguments")
            if isinstance(call, dict)
            else None
        )
        if isinstance(args, str):
            out.append(args)
    legacy = message.get("function_call")
    if isinstance(legacy, dict) and isinstance(legacy.get("arguments"), str):
        out.append(legacy["arguments"])
    return out


def _own_refusal(exc: BaseException) -> StreamLineTooLong | None:
    """A refusal of the host's own transport (`StreamLineTooLong`) somewhere in the chain
    of exceptions LiteLLM wrapped it in (its causes, contexts, `original_exception`)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo and len(seen) < 32:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        if isinstance(current, StreamLineTooLong):
            return current
        seen.add(id(current))
        original = getattr(current, "original_exception", None)
        todo += [
            current.__cause__,
            current.__context__,
            original if isinstance(original, BaseException) else None,
        ]
    return None


class Gateway:
    def __init__(
        self,
        config: Config,
        *,
        vault: Vault,
        budgets: Budgets,
        guard: Guard,
        audit: AuditLog,
        bus: EventBus,
        redactor: Redactor,
        litellm: LiteLLM,
        health: ModelHealth,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.vault = vault
        self.budgets = budgets
        self.guard = guard
        self.audit = audit
        self.bus = bus
        self.redactor = redactor
        self.litellm = litellm
        self.health = health
        self.clock = clock
        self.passthrough = Passthrough()
        self.booker = Booker(budgets, audit, bus, clock)
        self.tool_calls = ToolCalls(bus, clock)
        # Calls in flight and the operator's pauses (the kill switch, inflight.py).
        self.inflight = Dispatch(budgets.store, audit, bus, lambda: self.config.agents, clock)

    # --- resolution -----------------------------------------------------------------

    def resolve_alias(self, agent: str, requested: str | None, *, durable: bool = True) -> str:
        cfg = self.config.agents.get(agent)
        alias = requested or (cfg.model if cfg else None) or self.config.llm.default_model
        if not alias:
            raise LegionError(
                f"{agent} has no model; the operator must set model in "
                f"[agents.{agent}] or [llm] default_model",
                code="no_model",
            )
        configured = alias in self.config.llm.models
        self.guard.check(agent, Perm.LLM, alias, "llm.call", durable=durable or not configured)
        if not configured:
            error = LegionError(
                f"model {alias!r} is not configured; the operator must add [llm.models.{alias}]",
                code="model_not_configured",
                status=503,
                model=alias,
            )
            self._refused(agent, alias, error)
            raise error
        return alias

    def chain(self, alias: str) -> list[str]:
        return [alias, *self.config.llm.models[alias].failover]

    async def models(self, agent: str) -> ModelList:
        """The models `agent` may name, with their context window and output limit."""
        aliases = models.usable_aliases(self.config, self.guard.permissions, agent)
        configs = [self.config.llm.models[alias] for alias in aliases]
        # LiteLLM is imported for a model that needs it anyway, never just for this.
        if any(not passthrough.applies(cfg) for cfg in configs):
            litellm = await self.litellm.get()
        else:
            litellm = self.litellm.loaded()
        return models.model_list(self.config.llm, aliases, litellm)

    def _api_key(self, model: ModelConfig) -> str:
        if model.credential is None:
            return "none"  # local OpenAI-compatible servers ignore it; LiteLLM wants one
        return self.vault.system_secret(model.credential)

    def _kwargs(self, hop: Hop, body: dict[str, Any]) -> dict[str, Any]:
        kwargs = dict(body)
        kwargs["model"] = hop.model.model
        kwargs["api_key"] = self._api_key(hop.model)
        if hop.model.api_base:
            kwargs["api_base"] = hop.model.api_base
        kwargs["timeout"] = hop.model.timeout_s
        kwargs["num_retries"] = 0
        kwargs["max_retries"] = 0
        return kwargs

    def _safe(self, exc: BaseException) -> str:
        own = _own_refusal(exc)
        if own is not None:  # the host's own bound, wrapped by LiteLLM: say it plainly
            return str(own)
        return self.redactor.redact(f"{type(exc).__name__}: {exc}")[:2000]

    def _refused(self, agent: str, alias: str, exc: LegionError, **extra: Any) -> None:
        """Audit a refusal of the host's own (budget, price, configuration) with its reason:
        for a budget, the window, the cap, what was left and what the call needed."""
        detail = {**exc.detail, **extra, "code": exc.code}
        for name in ("actor", "action", "target", "decision", "durable"):
            detail.pop(name, None)  # append()'s own parameters
        self.audit.append(agent, "llm.refused", alias, "deny", **detail)

    def _failover(
        self, agent: str, request_id: str, hop: str, nxt: str | None, reason: str
    ) -> None:
        self.audit.append(
            agent, "llm.failover", hop, "allow", to=nxt, reason=reason, request_id=request_id
        )
        self.bus.publish(
            ModelFailover(
                at=self.clock(),
                agent=agent,
                request_id=request_id,
                from_model=hop,
                to_model=nxt,
                reason=reason,
            )
        )

    def _settled(self, agent: str, request_id: str, alias: str, cost: float) -> None:
        self.bus.emit(
            lambda: CostUpdated(
                at=self.clock(),
                agent=agent,
                request_id=request_id,
                model=alias,
                cost_usd=cost,
                spent_today_usd=self.budgets.spent_today(agent),
                spent_month_usd=self.budgets.spent_month(agent),
            )
        )

    # --- chat completions ---------------------------------------------------------------

    async def close(self) -> None:
        await self.passthrough.close()

    def _wanted(self, agent: str, requested: str | None) -> list[str]:
        """The chain a call would walk (before any check)."""
        cfg = self.config.agents.get(agent)
        alias = requested or (cfg.model if cfg else None) or self.config.llm.default_model
        return self.chain(alias) if alias and alias in self.config.llm.models else []

    def _needs_litellm(self, aliases: list[str]) -> bool:
        models = self.config.llm.models
        return any(not passthrough.applies(models[a]) for a in aliases if a in models)

    def _waits_for_litellm(self, aliases: list[str]) -> bool:
        return self._needs_litellm(aliases) and self.litellm.loaded() is None

    async def _runtime_for(self, aliases: list[str]) -> Any | None:
        """LiteLLM when a model of `aliases` needs it (imported once, off the loop, and
        awaited here); else the module if it happens to be loaded, else None: a chain on
        the direct path never waits for the import nor starts it."""
        if self._needs_litellm(aliases):
            return await self.litellm.get()
        return self.litellm.loaded()

    async def _table_for(
        self, aliases: list[str], litellm: Any | None, documents: int = 0
    ) -> Any | None:
        """What prices and bounds the hops: `litellm` when loaded; else LiteLLM's model
        table read without LiteLLM, when a model lacks a configured price (or context
        window, for document parts); else None (the config says it all)."""
        if litellm is not None:
            return litellm
        models = self.config.llm.models
        if any(needs_table(models[a], documents) for a in aliases if a in models):
            return await self.litellm.table()
        return None

    async def chat(self, agent: str, request: ChatRequest) -> Response | StreamResponse:
        # The permission comes first: a model an agent may not use never makes the host
        # import LiteLLM. The allow record is committed without its own fsync when the
        # reservation's commit follows at once (it makes it durable; every refusal before
        # that is audited durably), and with one when the call first waits for the import.
        waits = self._waits_for_litellm(self._wanted(agent, request.model))
        alias = self.resolve_alias(agent, request.model, durable=waits)
        try:
            flight = self.inflight.open(agent)
        except AgentPaused as exc:
            self._refused(agent, alias, exc)
            raise
        try:
            litellm = await self._runtime_for(self.chain(alias))
            response = await self._chat(agent, alias, request, litellm, flight)
        except BaseException:
            self.inflight.close(flight)
            raise
        if not isinstance(response, StreamResponse):  # a stream closes it when it ends
            self.inflight.close(flight)
        return response

    def _hop(
        self,
        agent: str,
        alias: str,
        request_id: str,
        upstream: UpstreamBody,
        max_tokens: int,
        stream: bool,
        litellm: Any,
    ) -> tuple[Hop, Reservation]:
        """Price the hop and reserve its worst case (BudgetExceeded, price_unknown)."""
        model_cfg = self.config.llm.models[alias]
        name = (
            passthrough.upstream_model(model_cfg)
            if passthrough.applies(model_cfg)
            else model_cfg.model
        )
        window = models.known_context_window(self.config.llm, alias, litellm)
        bound = upstream.prompt_bound(name, max_tokens, stream, window)
        price = price_for(alias, model_cfg, litellm)
        hop = Hop(alias, model_cfg, price, bound, max_tokens)
        worst = price.cost(bound, max_tokens)
        return hop, self.budgets.reserve(agent, alias, model_cfg.model, request_id, worst)

    async def _chat(
        self, agent: str, alias: str, request: ChatRequest, litellm: Any, flight: Call
    ) -> Response | StreamResponse:
        self.tool_calls.request(agent, request.messages)
        raw = request.model_dump(exclude_none=True)
        body = {k: v for k, v in raw.items() if k in CHAT_PARAMS}
        # One output limit, the one reserved for, is what the provider gets.
        asked = [v for v in (request.max_tokens, request.max_completion_tokens) if v]
        max_tokens = max(asked) if asked else self.config.llm.default_max_tokens
        try:
            upstream = UpstreamBody.build(body)
        except ValueError:
            raise LegionError(
                "invalid request body: NaN and infinities are not JSON numbers",
                code="invalid_body",
                status=422,
            ) from None
        request_id = "req_" + uuid.uuid4().hex[:20]
        chain = self.chain(alias)
        litellm = await self._table_for(chain, litellm, upstream.documents)
        hops: list[dict[str, str]] = []
        for index, hop_alias in enumerate(chain):
            nxt = chain[index + 1] if index + 1 < len(chain) else None
            if not self.health.available(hop_alias):
                state = self.health.states.get(hop_alias)
                why = f"after {state.last_reason}" if state and state.last_reason else ""
                left = self.health.cooldown_left(hop_alias)
                reason = f"cooling down {why} ({left:.0f} s left)".replace("  ", " ")
                hops.append(outcome(hop_alias, "cooldown", reason))
                self._failover(agent, request_id, hop_alias, nxt, reason)
                continue
            try:
                hop, reservation = self._hop(
                    agent, hop_alias, request_id, upstream, max_tokens, request.stream, litellm
                )
            except LegionError as exc:  # the host's own refusal: no budget, no price
                self._refused(agent, hop_alias, exc, request_id=request_id)
                if not hops:
                    raise
                hops.append(outcome(hop_alias, exc.code, exc.message))
                self._failover(agent, request_id, hop_alias, nxt, exc.code)
                continue
            # Failures of overlapping attempts count once: an attempt begins when it passed
            # the cooldown check, before it waits for its reservation's fsync (calls
            # admitted together may leave in different group-commit rounds).
            attempt = self.health.clock()
            await self.budgets.durable(reservation)  # on disk before the call goes out
            model_cfg = hop.model
            started = time.monotonic()
            direct = passthrough.applies(model_cfg)
            stream: Any = None
            try:
                if direct:
                    name = passthrough.upstream_model(model_cfg)
                    content = upstream.direct(name, max_tokens, request.stream)
                    key = self._api_key(model_cfg)
                    if request.stream:
                        stream = self.passthrough.stream(agent, model_cfg, key, content, max_tokens)
                        first = await flight.wait(stream.__anext__())
                    else:
                        result = await flight.wait(
                            self.passthrough.complete(agent, model_cfg, key, content, max_tokens)
                        )
                elif request.stream:
                    kwargs = self._kwargs(hop, body)
                    kwargs["max_tokens"] = max_tokens
                    kwargs["stream"] = True
                    kwargs["stream_options"] = {"include_usage": True}
                    capped = STREAM_LINE_CAP.set(passthrough.reply_bytes_cap(max_tokens))
                    try:
                        stream = await flight.wait(litellm.acompletion(**kwargs))
                    finally:
                        STREAM_LINE_CAP.reset(capped)
                    first = await flight.wait(stream.__anext__())
                else:
                    kwargs = self._kwargs(hop, body)
                    kwargs["max_tokens"] = max_tokens
                    result = await flight.wait(litellm.acompletion(**kwargs))
            except StopAsyncIteration:
                first = None
            except Cut as cut:  # the operator paused this agent while it waited
                await _close_upstream(stream)
                # A stream's first byte never came: the prompt is booked. A whole answer
                # nobody saw may have been produced in full: its worst case is booked.
                usage = (
                    usage_of(litellm, hop, request.messages, None, "")
                    if request.stream
                    else Usage(hop.prompt_bound, max_tokens, reservation.amount)
                )
                self.booker.book(
                    hop,
                    reservation,
                    usage,
                    status="paused",
                    latency_ms=(time.monotonic() - started) * 1000,
                )
                self._settled(agent, request_id, hop_alias, usage.cost_usd)
                raise cut.error from None
            except Exception as exc:
                kind, status, retry_after = classify(exc)
                self.booker.book(
                    hop,
                    reservation,
                    Usage(0, 0, 0.0),
                    status=f"failed_{kind}",
                    latency_ms=(time.monotonic() - started) * 1000,
                )
                message = self._safe(exc)
                if kind == "client":
                    extra = {"hops": [*hops, outcome(hop_alias, kind, message)]} if hops else {}
                    raise LegionError(
                        f"the provider refused the request: {message}",
                        code="provider_rejected",
                        status=400,
                        model=hop_alias,
                        **extra,
                    ) from None
                cooldown = self.health.failure(
                    hop_alias, kind, retry_after, attempt_started=attempt
                )
                log.warning(
                    "model call failed",
                    extra={
                        "fields": {
                            "agent": agent,
                            "model": hop_alias,
                            "kind": kind,
                            "status": status,
                            "cooldown_s": cooldown,
                            "error": message,
                        }
                    },
                )
                hops.append(outcome(hop_alias, kind, message))
                self._failover(agent, request_id, hop_alias, nxt, kind)
                continue
            self.health.success(hop_alias)
            if request.stream:
                return self._stream_response(
                    agent,
                    request_id,
                    hop,
                    reservation,
                    request,
                    stream,
                    first,
                    started,
                    litellm,
                    flight,
                    attempt,
                )
            try:
                return self._finish(
                    agent, request_id, hop, reservation, request, result, started, litellm
                )
            except ProviderFailure:  # booked and refused by `_finish` (a reply too long)
                raise
            except Exception as exc:  # a malformed 200: book the worst case, then refuse
                self.booker.book(
                    hop, reservation, Usage(0, 0, reservation.amount), status="failed_bad_response"
                )
                raise ProviderFailure(
                    f"model {hop_alias!r} sent a malformed response: {self._safe(exc)}",
                    model=hop_alias,
                ) from None
        error = chain_error(chain, hops)
        if error.status in (402, 503):
            self._refused(agent, alias, error, request_id=request_id)
        raise error

    def _stream_response(
        self,
        agent: str,
        request_id: str,
        hop: Hop,
        reservation: Reservation,
        request: ChatRequest,
        stream: Any,
        first: Any,
        started: float,
        litellm: Any,
        flight: Call,
        attempt: float,
    ) -> StreamResponse:
        async def abandon() -> None:
            """The agent left before the first byte reached it: close the upstream and
            settle what the provider had produced."""
            self.inflight.close(flight)
            await _close_upstream(stream)
            text = ""
            if first is not None:
                data = first if isinstance(first, dict) else first.model_dump()
                text = "".join(
                    (c.get("delta") or {}).get("content") or "" for c in data.get("choices") or []
                )
            usage = usage_of(litellm, hop, request.messages, None, text)
            self.booker.book(
                hop,
                reservation,
                usage,
                status="abandoned",
                latency_ms=(time.monotonic() - started) * 1000,
            )

        return StreamResponse(
            self._relay(
                agent,
                request_id,
                hop,
                reservation,
                request,
                stream,
                first,
                started,
                litellm,
                flight,
                attempt,
            ),
            content_type="text/event-stream",
            on_abandon=abandon,
        )

    def _finish(
        self,
        agent: str,
        request_id: str,
        hop: Hop,
        reservation: Reservation,
        request: ChatRequest,
        result: Any,
        started: float,
        litellm: Any,
    ) -> Response:
        data = result if isinstance(result, dict) else result.model_dump(exclude_none=True)
        data["model"] = hop.alias
        produced = Produced(reply_text_cap(hop.max_tokens))
        for choice in data.get("choices") or ():
            message = choice.get("message") if isinstance(choice, dict) else None
            for text in generated(message) if isinstance(message, dict) else ():
                produced.add(text)
        usage = usage_of(
            litellm, hop, request.messages, data.get("usage"), produced.text(), produced.over
        )
        if produced.over:  # the provider ignored max_tokens: book it, hand nothing on
            elapsed = (time.monotonic() - started) * 1000
            self.booker.book(hop, reservation, usage, status="failed_server", latency_ms=elapsed)
            self._settled(agent, request_id, hop.alias, usage.cost_usd)
            self.health.failure(hop.alias, "server")
            raise ProviderFailure(
                f"model {hop.alias!r} failed: {ReplyTooLong(produced.cap, hop.max_tokens)}",
                model=hop.alias,
                kind="server",
            )
        for choice in data.get("choices", []):
            self.tool_calls.reply(
                agent, request_id, (choice.get("message") or {}).get("tool_calls")
            )
        elapsed = (time.monotonic() - started) * 1000
        self.booker.book(hop, reservation, usage, status="ok", latency_ms=elapsed, ttft_ms=elapsed)
        self._settled(agent, request_id, hop.alias, usage.cost_usd)
        data["id"] = data.get("id") or request_id
        data.setdefault("legion", {})["request_id"] = request_id
        data["legion"]["cost_usd"] = usage.cost_usd
        return Response(200, json.dumps(data).encode())

    def _shown(self, agent: str, request_id: str, text: str) -> None:
        if text:
            self.bus.emit(
                lambda: TokenDelta(at=self.clock(), agent=agent, request_id=request_id, text=text)
            )

    async def _relay(
        self,
        agent: str,
        request_id: str,
        hop: Hop,
        reservation: Reservation,
        request: ChatRequest,
        stream: Any,
        first: Any,
        started: float,
        litellm: Any,
        flight: Call,
        attempt: float,
    ) -> AsyncIterator[bytes]:
        """Relay the stream; every streamed text goes through a redactor that holds back a
        fixed window for the agent, and a possible start of a secret for the operator's
        token events (stream.py). A pause of the agent cuts it between two chunks
        (`flight.wait`, inflight.py)."""
        # the provider's raw text, for a local count of usage, and the bound on its length
        produced = Produced(reply_text_cap(hop.max_tokens))
        calls = StreamedCalls()
        usage_seen: Any = None
        ttft: float | None = None
        status = "aborted"
        redactor = DeltaRedactor(self.redactor)
        last: dict[str, Any] = {}
        try:
            chunk = first
            while chunk is not None:
                if ttft is None:
                    ttft = (time.monotonic() - started) * 1000
                data = chunk if isinstance(chunk, dict) else chunk.model_dump(exclude_none=True)
                data["model"] = hop.alias
                last = data
                if data.get("usage"):
                    usage_seen = data["usage"]
                for choice in data.get("choices") or ():
                    delta = choice.get("delta") if isinstance(choice, dict) else None
                    if isinstance(delta, dict):
                        for text in generated(delta):
                            produced.add(text)
                        if delta.get("tool_calls"):
                            calls.add(delta["tool_calls"])
                if produced.over:  # ignoring max_tokens: nothing more of it goes on
                    raise ReplyTooLong(produced.cap, hop.max_tokens)
                self._shown(agent, request_id, redactor.chunk(data))
                yield b"data: " + json.dumps(data).encode() + b"\n\n"
                try:
                    chunk = await flight.wait(stream.__anext__())
                except StopAsyncIteration:
                    chunk = None
            status = "ok"
            tail, shown = redactor.flush(last)
            self._shown(agent, request_id, shown)
            if tail is not None:
                yield b"data: " + json.dumps(tail).encode() + b"\n\n"
            self.tool_calls.reply(agent, request_id, calls.finished())
            yield b"data: [DONE]\n\n"
        except Cut as cut:  # the operator paused the agent: settled for what was produced
            status = "paused"
            await _close_upstream(stream)
            tail, shown = redactor.flush(last)
            if tail is not None:
                self._shown(agent, request_id, shown)
                yield b"data: " + json.dumps(tail).encode() + b"\n\n"
            yield b"data: " + cut.error.body().model_dump_json().encode() + b"\n\n"
        except Exception as exc:
            status = "failed_mid_stream"
            kind, _, _ = classify(exc)
            self.health.failure(hop.alias, kind, attempt_started=attempt)
            tail, shown = redactor.flush(last)
            self._shown(agent, request_id, shown)
            if tail is not None:
                yield b"data: " + json.dumps(tail).encode() + b"\n\n"
            error = ProviderFailure(
                f"model {hop.alias!r} failed mid-stream: {self._safe(exc)}",
                model=hop.alias,
                kind=kind,
            )
            yield b"data: " + error.body().model_dump_json().encode() + b"\n\n"
        finally:
            self.inflight.close(flight)
            if flight.cut is not None and status == "aborted":
                status = "paused"  # cancelled while writing to an agent that did not read
                await _close_upstream(stream)
            if redactor.held():  # the agent left while text was held back: the TUI sees it
                _, shown = redactor.flush(last)
                self._shown(agent, request_id, shown)
            usage = usage_of(
                litellm, hop, request.messages, usage_seen, produced.text(), produced.over
            )
            self.booker.book(
                hop,
                reservation,
                usage,
                status=status,
                latency_ms=(time.monotonic() - started) * 1000,
                ttft_ms=ttft,
            )
            self._settled(agent, request_id, hop.alias, usage.cost_usd)

    # --- embeddings ---------------------------------------------------------------------

    async def embeddings(self, agent: str, request: EmbeddingRequest) -> Response:
        alias = self.resolve_alias(agent, request.model)
        try:
            self.inflight.check(agent)
        except AgentPaused as exc:
            self._refused(agent, alias, exc)
            raise
        litellm = await self._table_for([alias], await self._runtime_for([alias]))
        model_cfg = self.config.llm.models[alias]
        inputs = [request.input] if isinstance(request.input, str) else request.input
        bound = sum(len(text.encode()) + 1 for text in inputs) + REQUEST_OVERHEAD_TOKENS
        request_id = "req_" + uuid.uuid4().hex[:20]
        try:
            price = price_for(alias, model_cfg, litellm)
            reservation = self.budgets.reserve(
                agent, alias, model_cfg.model, request_id, price.cost(bound, 0)
            )
        except LegionError as exc:
            self._refused(agent, alias, exc, request_id=request_id)
            raise
        await self.budgets.durable(reservation)  # on disk before the call goes out
        hop = Hop(alias, model_cfg, price, bound, 0)
        started = time.monotonic()
        attempt = self.health.clock()
        raw = request.model_dump(exclude_none=True)
        body = {k: v for k, v in raw.items() if k in EMBEDDING_PARAMS}
        try:
            if passthrough.applies(model_cfg):
                result = await self.passthrough.embeddings(
                    agent, model_cfg, self._api_key(model_cfg), body
                )
            else:
                module = await self.litellm.get()  # loaded above: this model needs it
                result = await module.aembedding(**self._kwargs(hop, body))
        except Exception as exc:
            kind, _, retry_after = classify(exc)
            self.booker.book(
                hop, reservation, Usage(0, 0, 0.0), status=f"failed_{kind}", kind="embedding"
            )
            self.health.failure(alias, kind, retry_after, attempt_started=attempt)
            raise ProviderFailure(
                f"embedding model {alias!r} failed: {self._safe(exc)}", model=alias, kind=kind
            ) from None
        data = result if isinstance(result, dict) else result.model_dump(exclude_none=True)
        reported = (data.get("usage") or {}).get("prompt_tokens")
        tokens = reported if isinstance(reported, int) and reported >= 0 else bound
        usage = Usage(tokens, 0, price.cost(tokens, 0))
        self.booker.book(
            hop,
            reservation,
            usage,
            status="ok",
            kind="embedding",
            latency_ms=(time.monotonic() - started) * 1000,
        )
        self._settled(agent, request_id, alias, usage.cost_usd)
        data["model"] = alias
        return Response(200, json.dumps(data).encode())


async def _close_upstream(stream: Any) -> None:
    """Close a provider stream (its connection), whatever state it is in."""
    closer = getattr(stream, "aclose", None)
    if closer is not None:
        with contextlib.suppress(Exception):
            await closer()
