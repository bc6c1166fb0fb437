"""`GET /v1/models`: the models an agent may use, with the limits its runtime plans against.

Each entry's context window and output limit come, first found wins, from the model's
`context_window` / `max_output_tokens` in `[llm.models.X]`, then LiteLLM's model table
(when LiteLLM is loaded; it is never imported just for this), then the documented defaults:
a context window of 8192 tokens and `[llm] default_max_tokens` of output.
"""

from __future__ import annotations

import functools
from typing import Any

from legion.config import Config, LLMConfig
from legion.mesh.permissions import Perm, Permissions
from legion.wire.api import ModelInfo, ModelLimits, ModelList

DEFAULT_CONTEXT_WINDOW = 8192


def usable_aliases(config: Config, permissions: Permissions, agent: str) -> list[str]:
    """The configured aliases `agent` may name (its own model first), by the rule the
    gateway checks each call against."""
    cfg = config.agents.get(agent)
    if cfg is None:
        return []
    candidates = [cfg.model or config.llm.default_model, *cfg.allowed_models]
    seen: list[str] = []
    for alias in candidates:
        if (
            alias
            and alias not in seen
            and alias in config.llm.models
            and permissions.allows(agent, Perm.LLM, alias)
        ):
            seen.append(alias)
    return seen


@functools.lru_cache(maxsize=256)
def _litellm_limits(litellm: Any, model_id: str) -> tuple[int | None, int | None]:
    try:
        info = litellm.get_model_info(model=model_id)
    except Exception:
        return None, None
    window = info.get("max_input_tokens") or info.get("max_tokens")
    output = info.get("max_output_tokens") or info.get("max_tokens")
    return (
        int(window) if isinstance(window, int) and window > 0 else None,
        int(output) if isinstance(output, int) and output > 0 else None,
    )


def limits(llm: LLMConfig, alias: str, litellm: Any | None) -> ModelLimits:
    model = llm.models[alias]
    known: tuple[int | None, int | None] = (None, None)
    if litellm is not None and (model.context_window is None or model.max_output_tokens is None):
        known = _litellm_limits(litellm, model.model)
    if model.context_window is not None:
        window, source = model.context_window, "config"
    elif known[0] is not None:
        window, source = known[0], "litellm"
    else:
        window, source = DEFAULT_CONTEXT_WINDOW, "default"
    output = model.max_output_tokens or known[1] or llm.default_max_tokens
    return ModelLimits(context_window=window, max_output_tokens=output, source=source)


def known_context_window(llm: LLMConfig, alias: str, litellm: Any | None) -> int | None:
    """The model's context window when the config or LiteLLM's table gives one (not the
    default): what bounds a document part's tokens."""
    model = llm.models[alias]
    if model.context_window is not None:
        return model.context_window
    return _litellm_limits(litellm, model.model)[0] if litellm is not None else None


def model_list(llm: LLMConfig, aliases: list[str], litellm: Any | None) -> ModelList:
    data = []
    for alias in aliases:
        model = llm.models[alias]
        provider = model.model.split("/", 1)[0] if "/" in model.model else "legion"
        data.append(ModelInfo(id=alias, owned_by=provider, legion=limits(llm, alias, litellm)))
    return ModelList(data=data)
