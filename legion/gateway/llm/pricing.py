"""Model prices: config overrides first, then LiteLLM's price map.

The price map is the one LiteLLM ships (`model_prices_and_context_window_backup.json`,
which is also what LiteLLM itself reads, with LITELLM_LOCAL_MODEL_COST_MAP set). A model on
the direct path never needs LiteLLM itself: when LiteLLM is not imported, `ModelTable`
reads that file from the installed package without importing it (about 40 ms, once, off
the loop), and only when a direct-path model lacks a configured price or context window.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from legion.config import ModelConfig
from legion.errors import LegionError

log = logging.getLogger("legion.gateway")

PRICE_MAP_FILE = "model_prices_and_context_window_backup.json"
TABLE_FIELDS = (
    "input_cost_per_token",
    "output_cost_per_token",
    "max_input_tokens",
    "max_output_tokens",
    "max_tokens",
)


@dataclass(frozen=True)
class Price:
    input_per_token: float
    output_per_token: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens * self.input_per_token + completion_tokens * self.output_per_token


def _entry(table: dict[str, Any], model_id: str, key: str | None = None) -> dict[str, Any] | None:
    """The table's entry for `model_id` (or its name without the provider), the first that
    has `key` when one is given."""
    candidates = [model_id]
    if "/" in model_id:
        candidates.append(model_id.split("/", 1)[1])
    for name in candidates:
        entry = table.get(name)
        if isinstance(entry, dict) and (key is None or key in entry):
            return entry
    return None


class ModelTable:
    """LiteLLM's model table without LiteLLM: the price and limit lookups the gateway makes
    (`model_cost`, `get_model_info`), read from the installed LiteLLM's price map file. It
    has no tokenizer: where the gateway would count tokens with LiteLLM it books the bound
    instead (legion.gateway.llm.booking)."""

    def __init__(self, model_cost: dict[str, Any]) -> None:
        self.model_cost = model_cost

    def get_model_info(self, model: str) -> dict[str, Any]:
        entry = _entry(self.model_cost, model)
        if entry is None:
            raise KeyError(f"{model} is not in LiteLLM's model table")
        return entry


def price_map_path() -> Path | None:
    """Where the installed LiteLLM keeps its price map, found without importing it."""
    try:
        spec = importlib.util.find_spec("litellm")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / PRICE_MAP_FILE
        if path.is_file():
            return path
    return None


def load_table() -> ModelTable:
    """Read the installed LiteLLM's price map (blocking: call from a worker thread). An
    absent or unreadable map is an empty table: prices must then come from the config."""
    path = price_map_path()
    if path is None:
        return ModelTable({})
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        log.warning("cannot read LiteLLM's price map %s: %s", path, exc)
        return ModelTable({})
    if not isinstance(data, dict):
        return ModelTable({})
    # Only what the gateway looks up is kept (a fifth of the memory of the whole map).
    return ModelTable(
        {
            name: {k: entry[k] for k in TABLE_FIELDS if k in entry}
            for name, entry in data.items()
            if isinstance(entry, dict)
        }
    )


def _litellm_entry(litellm: Any, model_id: str) -> dict[str, Any] | None:
    if litellm is None:
        return None
    return _entry(litellm.model_cost, model_id, "input_cost_per_token")


def needs_table(model: ModelConfig, documents: int = 0) -> bool:
    """Whether pricing (or bounding `documents` document parts of) a call to `model` needs
    LiteLLM's table: a price or, for documents, the context window is not configured."""
    unpriced = model.input_cost_per_mtok is None or model.output_cost_per_mtok is None
    return unpriced or bool(documents and model.context_window is None)


def price_for(alias: str, model: ModelConfig, litellm: Any | None) -> Price:
    """The price of `alias`, or a 503 `price_unknown` telling the operator what to set.
    `litellm` is the LiteLLM module or a `ModelTable` (None: configured prices only)."""
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
