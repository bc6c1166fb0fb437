"""The LLM gateway: what happens between an agent's chat request and the provider.

    permission (model allowed) -> price -> reserve worst case -> key from the vault ->
    LiteLLM -> relay (and publish TokenDelta) -> settle actual cost -> CostUpdated

Failover walks the model's chain only before the first streamed byte; each hop reserves
again at its own price, so failover can never overspend. Provider errors reach the agent
as typed JSON errors with every vault value masked.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from legion.api.http import Response, StreamResponse
from legion.config import Config, ModelConfig
from legion.errors import LegionError
from legion.events import EventBus
from legion.gateway.llm import passthrough
from legion.gateway.llm.budget import Budgets, Reservation, Usage
from legion.gateway.llm.health import ModelHealth
from legion.gateway.llm.passthrough import Passthrough
from legion.gateway.llm.pricing import Price, price_for
from legion.gateway.llm.runtime import LiteLLM
from legion.gateway.llm.toolcalls import StreamedCalls, ToolCalls
from legion.gateway.redact import Redactor
from legion.gateway.vault import Vault
from legion.mesh.audit import AuditLog
from legion.mesh.permissions import Guard, Perm
from legion.wire.api import ChatRequest, EmbeddingRequest
from legion.wire.events import CostUpdated, ModelFailover, TokenDelta

log = logging.getLogger("legion.gateway")

MESSAGE_OVERHEAD_TOKENS = 4
REQUEST_OVERHEAD_TOKENS = 16


class ProviderFailure(LegionError):
    status = 502
    code = "provider_error"


# The OpenAI parameters an agent may set. Anything else is dropped before the provider call:
# LiteLLM honours fields such as base_url, api_base, extra_headers or callbacks, and an
# agent must never steer where the host's key goes or what the call costs (n, best_of).
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
        "logprobs",
        "top_logprobs",
        "user",
        "reasoning_effort",
    }
)
EMBEDDING_PARAMS = frozenset({"input", "dimensions", "encoding_format", "user"})
# Tokens assumed for a non-text content part (an image, audio): far above what providers
# charge for one, since its bytes (a URL) say nothing about its tokens.
NON_TEXT_PART_TOKENS = 8192


def prompt_upper_bound(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> int:
    """A safe over-estimate of prompt tokens: no tokenizer yields more tokens than bytes of
    text; every non-text part (image, audio) counts NON_TEXT_PART_TOKENS more."""
    size = len(json.dumps(messages, ensure_ascii=False).encode())
    if tools:
        size += len(json.dumps(tools, ensure_ascii=False).encode())
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            size += NON_TEXT_PART_TOKENS * sum(
                1
                for part in content
                if isinstance(part, dict) and part.get("type", "text") != "text"
            )
    return size + MESSAGE_OVERHEAD_TOKENS * len(messages) + REQUEST_OVERHEAD_TOKENS


def classify(exc: BaseException) -> tuple[str, int | None, float | None]:
    """(kind, status, retry_after) of a provider exception, for health and failover."""
    status = getattr(exc, "status_code", None)
    name = type(exc).__name__
    retry_after: float | None = None
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or getattr(exc, "headers", None)
    if headers is not None:
        try:
            retry_after = float(headers.get("retry-after"))
        except (TypeError, ValueError):
            retry_after = None
    if "Timeout" in name or status == 408 or isinstance(exc, TimeoutError):
        return "timeout", status, retry_after
    if status == 429 or "RateLimit" in name:
        return "rate_limit", status, retry_after
    if status in (401, 403) or "Authentication" in name or "PermissionDenied" in name:
        return "auth", status, retry_after
    if status == 402 or "Budget" in name:
        return "billing", status, retry_after
    if status is None or status >= 500 or "Connection" in name or "ServiceUnavailable" in name:
        return "server", status, retry_after
    return "client", status, retry_after


@dataclass
class Hop:
    alias: str
    model: ModelConfig
    price: Price


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
        self.tool_calls = ToolCalls(bus, clock)

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
            raise LegionError(
                f"model {alias!r} is not configured; the operator must add [llm.models.{alias}]",
                code="model_not_configured",
                status=503,
                model=alias,
            )
        return alias

    def chain(self, alias: str) -> list[str]:
        return [alias, *self.config.llm.models[alias].failover]

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
        return self.redactor.redact(f"{type(exc).__name__}: {exc}")[:2000]

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

    async def chat(self, agent: str, request: ChatRequest) -> Response | StreamResponse:
        litellm = await self.litellm.get()
        # The allow record is committed without its own fsync: the reservation's commit
        # below makes it durable, and every refusal before that is audited durably.
        alias = self.resolve_alias(agent, request.model, durable=False)
        try:
            return await self._chat(agent, alias, request, litellm)
        except LegionError as exc:
            if exc.status in (402, 503):  # refused before anything was committed durably
                self.audit.append(agent, "llm.refused", alias, "deny", code=exc.code)
            raise

    async def _chat(
        self, agent: str, alias: str, request: ChatRequest, litellm: Any
    ) -> Response | StreamResponse:
        self.tool_calls.request(agent, request.messages)
        raw = request.model_dump(exclude_none=True)
        body = {k: v for k, v in raw.items() if k in CHAT_PARAMS}
        # One output limit, the one reserved for, is what the provider gets.
        asked = [v for v in (request.max_tokens, request.max_completion_tokens) if v]
        max_tokens = max(asked) if asked else self.config.llm.default_max_tokens
        body["max_tokens"] = max_tokens
        prompt_bound = prompt_upper_bound(request.messages, request.tools)
        request_id = "req_" + uuid.uuid4().hex[:20]
        chain = self.chain(alias)
        last_error: LegionError | None = None
        for index, hop_alias in enumerate(chain):
            nxt = chain[index + 1] if index + 1 < len(chain) else None
            if not self.health.available(hop_alias):
                self._failover(
                    agent,
                    request_id,
                    hop_alias,
                    nxt,
                    f"cooling down ({self.health.cooldown_left(hop_alias):.0f}s left)",
                )
                continue
            model_cfg = self.config.llm.models[hop_alias]
            hop = Hop(hop_alias, model_cfg, price_for(hop_alias, model_cfg, litellm))
            worst = hop.price.cost(prompt_bound, max_tokens)
            reservation = self.budgets.reserve(agent, hop_alias, model_cfg.model, request_id, worst)
            started = time.monotonic()
            direct = passthrough.applies(model_cfg)
            try:
                if request.stream and direct:
                    stream = self.passthrough.stream(
                        agent, model_cfg, self._api_key(model_cfg), body
                    )
                    first = await stream.__anext__()
                elif request.stream:
                    kwargs = self._kwargs(hop, body)
                    kwargs["stream"] = True
                    kwargs["stream_options"] = {"include_usage": True}
                    stream = await litellm.acompletion(**kwargs)
                    first = await stream.__anext__()
                elif direct:
                    result = await self.passthrough.complete(
                        agent, model_cfg, self._api_key(model_cfg), body
                    )
                else:
                    result = await litellm.acompletion(**self._kwargs(hop, body))
            except StopAsyncIteration:
                first = None
            except Exception as exc:
                kind, status, retry_after = classify(exc)
                self.budgets.settle(
                    reservation,
                    Usage(0, 0, 0.0),
                    status=f"failed_{kind}",
                    latency_ms=(time.monotonic() - started) * 1000,
                )
                message = self._safe(exc)
                if kind == "client":
                    raise LegionError(
                        f"the provider refused the request: {message}",
                        code="provider_rejected",
                        status=400,
                        model=hop_alias,
                    ) from None
                cooldown = self.health.failure(hop_alias, kind, retry_after)
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
                last_error = ProviderFailure(
                    f"model {hop_alias!r} failed ({kind}): {message}",
                    status=504 if kind == "timeout" else 502,
                    model=hop_alias,
                    kind=kind,
                )
                self._failover(agent, request_id, hop_alias, nxt, kind)
                continue
            self.health.success(hop_alias)
            if request.stream:

                async def abandon(
                    stream: Any = stream,
                    first: Any = first,
                    hop: Hop = hop,
                    reservation: Reservation = reservation,
                    started: float = started,
                ) -> None:
                    """The agent left before the first byte reached it: close the upstream
                    and settle what the provider had produced."""
                    closer = getattr(stream, "aclose", None)
                    if closer is not None:
                        with contextlib.suppress(Exception):
                            await closer()
                    text = ""
                    if first is not None:
                        data = first if isinstance(first, dict) else first.model_dump()
                        text = "".join(
                            (c.get("delta") or {}).get("content") or ""
                            for c in data.get("choices") or []
                        )
                    usage = self._usage(litellm, hop, request, None, text)
                    self.budgets.settle(
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
                    ),
                    content_type="text/event-stream",
                    on_abandon=abandon,
                )
            try:
                return self._finish(
                    agent, request_id, hop, reservation, request, result, started, litellm
                )
            except Exception as exc:  # a malformed 200: book the worst case, then refuse
                self.budgets.settle(
                    reservation, Usage(0, 0, reservation.amount), status="failed_bad_response"
                )
                raise ProviderFailure(
                    f"model {hop_alias!r} sent a malformed response: {self._safe(exc)}",
                    model=hop_alias,
                ) from None
        if last_error is None:
            last_error = ProviderFailure(
                f"every model in the chain {chain} is cooling down after failures; retry later",
                status=503,
                code="models_unavailable",
                chain=chain,
            )
        raise last_error

    def _usage(
        self, litellm: Any, hop: Hop, request: ChatRequest, usage: Any, produced: str
    ) -> Usage:
        if isinstance(usage, dict):
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        else:
            prompt = getattr(usage, "prompt_tokens", None) if usage is not None else None
            completion = getattr(usage, "completion_tokens", None) if usage is not None else None
        if prompt is None:
            try:
                prompt = int(
                    litellm.token_counter(model=hop.model.model, messages=request.messages)
                )
            except Exception:
                prompt = prompt_upper_bound(request.messages, request.tools)
        if completion is None:
            try:
                completion = int(litellm.token_counter(model=hop.model.model, text=produced))
            except Exception:
                completion = len(produced.encode())
        return Usage(int(prompt), int(completion), hop.price.cost(int(prompt), int(completion)))

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
        text = "".join(
            (choice.get("message") or {}).get("content") or "" for choice in data.get("choices", [])
        )
        usage = self._usage(litellm, hop, request, data.get("usage"), text)
        for choice in data.get("choices", []):
            self.tool_calls.reply(
                agent, request_id, (choice.get("message") or {}).get("tool_calls")
            )
        elapsed = (time.monotonic() - started) * 1000
        self.budgets.settle(reservation, usage, status="ok", latency_ms=elapsed, ttft_ms=elapsed)
        self._settled(agent, request_id, hop.alias, usage.cost_usd)
        data["id"] = data.get("id") or request_id
        data.setdefault("legion", {})["request_id"] = request_id
        data["legion"]["cost_usd"] = usage.cost_usd
        return Response(200, json.dumps(data).encode())

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
    ) -> AsyncIterator[bytes]:
        produced: list[str] = []
        calls = StreamedCalls()
        usage_seen: Any = None
        ttft: float | None = None
        status = "aborted"
        try:
            chunk = first
            while chunk is not None:
                if ttft is None:
                    ttft = (time.monotonic() - started) * 1000
                data = chunk if isinstance(chunk, dict) else chunk.model_dump(exclude_none=True)
                data["model"] = hop.alias
                if data.get("usage"):
                    usage_seen = data["usage"]
                for choice in data.get("choices") or []:
                    if (choice.get("delta") or {}).get("tool_calls"):
                        calls.add(choice["delta"]["tool_calls"])
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        produced.append(text)
                        self.bus.emit(
                            lambda text=text: TokenDelta(  # type: ignore[misc]
                                at=self.clock(), agent=agent, request_id=request_id, text=text
                            )
                        )
                yield b"data: " + json.dumps(data).encode() + b"\n\n"
                try:
                    chunk = await stream.__anext__()
                except StopAsyncIteration:
                    chunk = None
            status = "ok"
            self.tool_calls.reply(agent, request_id, calls.finished())
            yield b"data: [DONE]\n\n"
        except Exception as exc:
            status = "failed_mid_stream"
            kind, _, _ = classify(exc)
            self.health.failure(hop.alias, kind)
            error = ProviderFailure(
                f"model {hop.alias!r} failed mid-stream: {self._safe(exc)}",
                model=hop.alias,
                kind=kind,
            )
            yield b"data: " + error.body().model_dump_json().encode() + b"\n\n"
        finally:
            usage = self._usage(litellm, hop, request, usage_seen, "".join(produced))
            self.budgets.settle(
                reservation,
                usage,
                status=status,
                latency_ms=(time.monotonic() - started) * 1000,
                ttft_ms=ttft,
            )
            self._settled(agent, request_id, hop.alias, usage.cost_usd)

    # --- embeddings ---------------------------------------------------------------------

    async def embeddings(self, agent: str, request: EmbeddingRequest) -> Response:
        litellm = await self.litellm.get()
        alias = self.resolve_alias(agent, request.model)
        model_cfg = self.config.llm.models[alias]
        hop = Hop(alias, model_cfg, price_for(alias, model_cfg, litellm))
        inputs = [request.input] if isinstance(request.input, str) else request.input
        bound = sum(len(text.encode()) + 1 for text in inputs) + REQUEST_OVERHEAD_TOKENS
        request_id = "req_" + uuid.uuid4().hex[:20]
        reservation = self.budgets.reserve(
            agent, alias, model_cfg.model, request_id, hop.price.cost(bound, 0)
        )
        started = time.monotonic()
        raw = request.model_dump(exclude_none=True)
        body = {k: v for k, v in raw.items() if k in EMBEDDING_PARAMS}
        try:
            if passthrough.applies(model_cfg):
                result = await self.passthrough.embeddings(
                    agent, model_cfg, self._api_key(model_cfg), body
                )
            else:
                result = await litellm.aembedding(**self._kwargs(hop, body))
        except Exception as exc:
            kind, _, retry_after = classify(exc)
            self.budgets.settle(
                reservation, Usage(0, 0, 0.0), status=f"failed_{kind}", kind="embedding"
            )
            self.health.failure(alias, kind, retry_after)
            raise ProviderFailure(
                f"embedding model {alias!r} failed: {self._safe(exc)}", model=alias, kind=kind
            ) from None
        data = result if isinstance(result, dict) else result.model_dump(exclude_none=True)
        tokens = int((data.get("usage") or {}).get("prompt_tokens") or bound)
        usage = Usage(tokens, 0, hop.price.cost(tokens, 0))
        self.budgets.settle(
            reservation,
            usage,
            status="ok",
            kind="embedding",
            latency_ms=(time.monotonic() - started) * 1000,
        )
        self._settled(agent, request_id, alias, usage.cost_usd)
        data["model"] = alias
        return Response(200, json.dumps(data).encode())
