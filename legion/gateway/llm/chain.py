"""A model's failover chain: how a provider failure is classified, what each hop did,
and the error of a chain where no hop answered (its root failure leading)."""

from __future__ import annotations

from dataclasses import dataclass

from legion.config import ModelConfig
from legion.errors import LegionError
from legion.gateway.llm.pricing import Price


class ProviderFailure(LegionError):
    status = 502
    code = "provider_error"


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


PROVIDER_KINDS = frozenset({"timeout", "rate_limit", "auth", "billing", "server", "client"})


@dataclass
class Hop:
    """One model of the chain, as this call uses it: its price and its worst case."""

    alias: str
    model: ModelConfig
    price: Price
    prompt_bound: int
    max_tokens: int


def outcome(model: str, kind: str, message: str) -> dict[str, str]:
    return {"model": model, "kind": kind, "message": message}


def _describe(hop: dict[str, str]) -> str:
    if hop["kind"] == "cooldown":
        return f"model {hop['model']!r} is {hop['message']}"
    if hop["kind"] in PROVIDER_KINDS:
        return f"model {hop['model']!r} failed ({hop['kind']}): {hop['message']}"
    return f"model {hop['model']!r} was refused ({hop['kind']}): {hop['message']}"


def chain_error(chain: list[str], hops: list[dict[str, str]]) -> LegionError:
    """The error of a chain where no hop answered: its message leads with the first (root)
    failure, then every other hop; `detail.hops` lists each hop's outcome."""
    text = "; then ".join(_describe(hop) for hop in hops)
    tried = [hop for hop in hops if hop["kind"] != "cooldown"]
    if not tried:
        return ProviderFailure(
            f"every model in the chain {chain} is cooling down after failures: {text}; retry later",
            status=503,
            code="models_unavailable",
            chain=chain,
            hops=hops,
        )
    first = tried[0]
    if first["kind"] in PROVIDER_KINDS:
        code, status = "provider_error", 504 if first["kind"] == "timeout" else 502
    else:  # a refusal of the host's own: budget_exceeded (402), price_unknown (503)
        code, status = first["kind"], 402 if first["kind"] == "budget_exceeded" else 503
    return ProviderFailure(
        text,
        status=status,
        code=code,
        model=hops[0]["model"],
        kind=hops[0]["kind"],
        chain=chain,
        hops=hops,
    )
