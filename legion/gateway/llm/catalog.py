"""What the operator needs to know about each model alias, without importing LiteLLM.

`legion models ls`, `legion doctor` and the control route `GET /v1/llm/models` read it:
each alias's provider, price (from the config, else LiteLLM's price map read as a file,
exactly the map the gateway loads with LITELLM_LOCAL_MODEL_COST_MAP), credential (stored or
missing, read from vault.db's metadata: never a value), the agents that can reach it (their
model, embedding model, allowed models, and the failover hops of each) and, when a host
runs, its cooldown.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from legion.config import Config, ModelConfig

if TYPE_CHECKING:
    from legion.gateway.llm.health import ModelHealth

PRICE_MAP_FILE = "model_prices_and_context_window_backup.json"


@functools.lru_cache(maxsize=1)
def price_map() -> dict[str, Any]:
    """LiteLLM's installed price map, read as JSON (importing LiteLLM takes seconds); empty
    when LiteLLM or its map cannot be found."""
    try:
        spec = importlib.util.find_spec("litellm")
    except (ImportError, ValueError):
        return {}
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = Path(next(iter(spec.submodule_search_locations))) / PRICE_MAP_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def price_of(alias: str, model: ModelConfig) -> tuple[float | None, float | None, str | None]:
    """(input, output) USD per million tokens and where they come from ("config" or
    "litellm"), by the gateway's own rule (legion.gateway.llm.pricing); (None, None, None)
    when no price is known: the gateway refuses such a model."""
    from legion.errors import LegionError
    from legion.gateway.llm.pricing import price_for

    try:
        price = price_for(alias, model, SimpleNamespace(model_cost=price_map()))
    except LegionError:
        return None, None, None
    source = (
        "config"
        if model.input_cost_per_mtok is not None and model.output_cost_per_mtok is not None
        else "litellm"
    )
    return price.input_per_token * 1e6, price.output_per_token * 1e6, source


def stored_credentials(vault_db: Path) -> tuple[dict[str, str], str]:
    """name -> tier of the credentials in vault.db, read-only (no value, no key needed;
    creates nothing), and a problem when the vault could not be read ("" when it could or
    when there is no vault yet)."""
    if not vault_db.exists():
        return {}, ""
    from legion.store import connect

    try:
        db = connect(vault_db, readonly=True)
    except Exception as exc:  # unreadable for this user, or not a database
        return {}, f"cannot read {vault_db} ({exc}); run as the user the host runs as"
    try:
        conn = db.connection()  # type: ignore[no-untyped-call]
        rows = conn.execute("SELECT name, tier FROM secrets").fetchall()
    except Exception as exc:
        return {}, f"cannot read {vault_db} ({exc})"
    finally:
        db.close()
    return {str(name): str(tier) for name, tier in rows}, ""


def reachable(config: Config, agent: str) -> list[str]:
    """The aliases `agent` can end up calling: its model (or [llm] default_model), its
    embedding model, its allowed_models, and every failover hop of those, in that order."""
    cfg = config.agents.get(agent)
    if cfg is None:
        return []
    todo = [
        cfg.model or config.llm.default_model,
        cfg.embedding_model or config.llm.embedding_model,
        *cfg.allowed_models,
    ]
    seen: list[str] = []
    while todo:
        alias = todo.pop(0)
        if not alias or alias in seen:
            continue
        seen.append(alias)
        model = config.llm.models.get(alias)
        if model is not None:
            todo.extend(model.failover)
    return seen


@dataclass
class ModelRow:
    """One model alias as `legion models ls` shows it."""

    alias: str
    model: str
    provider: str
    api_base: str | None
    credential: str | None
    # "stored", "missing", "wrong tier" (stored as an agent credential: the gateway only
    # uses system-tier keys), "not needed", or "unknown" (the vault could not be read).
    credential_state: str
    input_per_mtok: float | None
    output_per_mtok: float | None
    price_source: str | None
    failover: list[str]
    used_by: list[str] = field(default_factory=list)
    cooldown_s: float | None = None
    failures: int = 0
    last_failure: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def credential_state(model: ModelConfig, stored: dict[str, str], problem: str) -> str:
    if model.credential is None:
        return "not needed"
    if problem:
        return "unknown"
    tier = stored.get(model.credential)
    if tier is None:
        return "missing"
    return "stored" if tier == "system" else "wrong tier"


def model_rows(
    config: Config,
    stored: dict[str, str],
    problem: str = "",
    health: ModelHealth | None = None,
) -> list[ModelRow]:
    """Every configured alias, sorted, with who can reach it; cooldowns when `health`."""
    users: dict[str, list[str]] = {}
    for agent in sorted(config.agents):
        for alias in reachable(config, agent):
            users.setdefault(alias, []).append(agent)
    rows = []
    for alias, model in sorted(config.llm.models.items()):
        inp, out, source = price_of(alias, model)
        row = ModelRow(
            alias=alias,
            model=model.model,
            provider=model.model.split("/", 1)[0] if "/" in model.model else "openai",
            api_base=model.api_base,
            credential=model.credential,
            credential_state=credential_state(model, stored, problem),
            input_per_mtok=inp,
            output_per_mtok=out,
            price_source=source,
            failover=list(model.failover),
            used_by=users.get(alias, []),
        )
        if health is not None:
            state = health.states.get(alias)
            left = health.cooldown_left(alias)
            row.cooldown_s = round(left, 3) if left > 0 else 0.0
            if state is not None:
                row.failures, row.last_failure = state.failures, state.last_reason
        rows.append(row)
    return rows


@dataclass
class Problem:
    """A model an agent can reach that cannot work: what, and how to fix it."""

    alias: str
    agents: list[str]
    what: str
    fix: str


def problems(config: Config, stored: dict[str, str], problem: str = "") -> list[Problem]:
    """Each reachable model without a usable credential or without a price; a model an
    agent names that is not configured (legion config check reports it too)."""
    out: list[Problem] = []
    rows = {r.alias: r for r in model_rows(config, stored, problem)}
    reached: dict[str, list[str]] = {}
    for agent in sorted(config.agents):
        for alias in reachable(config, agent):
            reached.setdefault(alias, []).append(agent)
    for agent, cfg in sorted(config.agents.items()):
        if not (cfg.model or config.llm.default_model):
            out.append(
                Problem(
                    "(none)",
                    [agent],
                    f"{agent} names no model and [llm] sets no default_model: every LLM "
                    "call it makes is refused",
                    f'`model = "ALIAS"` in [agents.{agent}] (`legion models ls` lists them)',
                )
            )
    for alias, agents in reached.items():
        row = rows.get(alias)
        if row is None:
            out.append(
                Problem(
                    alias,
                    agents,
                    f"`{alias}` is not a configured model",
                    f"add [llm.models.{alias}] to legion.toml, or name another model",
                )
            )
            continue
        if row.credential_state == "missing":
            out.append(
                Problem(
                    alias,
                    agents,
                    f"`{alias}` needs the credential `{row.credential}`, which is not stored",
                    f"`legion vault set {row.credential} --tier system` (the provider key; "
                    "prompted, never on the command line)",
                )
            )
        elif row.credential_state == "wrong tier":
            out.append(
                Problem(
                    alias,
                    agents,
                    f"`{alias}`'s credential `{row.credential}` is stored as an agent "
                    "credential; the gateway uses system-tier keys only",
                    f"`legion vault rm {row.credential}`, then "
                    f"`legion vault set {row.credential} --tier system`",
                )
            )
        if row.input_per_mtok is None:
            out.append(
                Problem(
                    alias,
                    agents,
                    f"no price is known for `{alias}` ({row.model}): the gateway refuses it "
                    "(a budget cannot be enforced without one)",
                    f"set input_cost_per_mtok and output_cost_per_mtok in [llm.models.{alias}] "
                    "(0 for a free local model)",
                )
            )
    return out
