"""Model prices: config overrides first, then the installed LiteLLM's price map."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from legion.config import ModelConfig
from legion.errors import LegionError


@dataclass(frozen=True)
class Price:
    input_per_token: float
    output_per_token: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens * self.input_per_token + completion_tokens * self.output_per_token


def _litellm_entry(litellm: Any, model_id: str) -> dict[str, Any] | None:
    table: dict[str, Any] = litellm.model_cost
    candidates = [model_id]
    if "/" in model_id:
        candidates.append(model_id.split("/", 1)[1])
    for name in candidates:
        entry = table.get(name)
        if isinstance(entry, dict) and "input_cost_per_token" in entry:
            return entry
    return None


def price_for(alias: str, model: ModelConfig, litellm: Any) -> Price:
    """The price of `alias`, or a 503 `price_unknown` telling the operator what to set."""
    entry = None
    if model.input_cost_per_mtok is None or model.output_cost_per_mtok is None:
        entry = _litellm_entry(litellm, model.model)
    inp = (
        model.input_cost_per_mtok / 1e6
        if model.input_cost_per_mtok is not None
        else entry.get("input_cost_per_token")
        if entry
        else None
    )
    out = (
        model.output_cost_per_mtok / 1e6
        if model.output_cost_per_mtok is not None
        else entry.get("output_cost_per_token")
        if entry
        else None
    )
    if inp is None or out is None:
        raise LegionError(
            f"no price is known for model {alias!r} ({model.model}), so no budget can be "
            f"enforced; the operator must set input_cost_per_mtok and output_cost_per_mtok in "
            f"[llm.models.{alias}] (0 for a free local model)",
            code="price_unknown",
            status=503,
            model=alias,
        )
    return Price(float(inp), float(out))
