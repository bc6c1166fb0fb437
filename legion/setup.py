"""First run: a provider and a model, its key in the vault, a starter fleet, legion.toml.

One place for what `legion setup` (legion/cli/setup_cmd.py) and the TUI's setup screen
(tui/screens/setup.py) do:

* `PROVIDERS`: what each provider needs (a LiteLLM prefix, a vault credential, suggested
  models; an OpenAI-compatible endpoint needs its URL and, for a free local server, no key);
* `problems(choice)`: every reason a choice cannot be applied, each saying what to fix (the
  key is checked by the vault's value rule, `legion.gateway.redact.value_problem`, and
  never appears in a message);
* `config_text(choice)`: the legion.toml it writes (commented, validated before writing);
* `apply(paths, choice)`: the key into the vault (system tier), then legion.toml written
  atomically; an existing legion.toml is never overwritten unless `force` (then it is kept
  as legion.toml.bak).

Starting the fleet is the caller's: a running host applies the new file with a config
reload (the TUI does; `legion setup` does when a daemon runs on the home).
"""

from __future__ import annotations

import math
import os
import re
import shutil
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from legion.paths import Paths

Starter = Literal["assistant", "research-team"]
STARTERS: dict[str, str] = {
    "assistant": "one assistant you chat with",
    "research-team": "a researcher and a writer sharing the blackboard space research/",
}
DEFAULT_DAILY_USD = 1.0
DEFAULT_FLEET_DAILY_USD = 5.0
MAX_SETUP_USD = 1_000_000.0


@dataclass(frozen=True)
class Provider:
    id: str
    label: str
    prefix: str  # the LiteLLM provider prefix of the model id
    credential: str | None  # the vault name of its key (None: no key needed)
    models: tuple[str, ...]  # suggestions; the first is the default
    key_required: bool = True
    compatible: bool = False  # an OpenAI-compatible endpoint at an api_base


PROVIDERS: dict[str, Provider] = {
    p.id: p
    for p in (
        Provider("openai", "OpenAI", "openai", "openai", ("gpt-4o-mini", "gpt-4o", "gpt-4.1")),
        Provider(
            "anthropic",
            "Anthropic",
            "anthropic",
            "anthropic",
            ("claude-3-5-haiku-20241022", "claude-3-7-sonnet-20250219"),
        ),
        Provider("gemini", "Google Gemini", "gemini", "gemini", ("gemini-2.0-flash",)),
        Provider("mistral", "Mistral", "mistral", "mistral", ("mistral-small-latest",)),
        Provider("groq", "Groq", "groq", "groq", ("llama-3.1-8b-instant",)),
        Provider("deepseek", "DeepSeek", "deepseek", "deepseek", ("deepseek-chat",)),
        Provider("openrouter", "OpenRouter", "openrouter", "openrouter", ("openai/gpt-4o-mini",)),
        Provider(
            "compatible",
            "OpenAI-compatible endpoint (Ollama, vLLM, llama.cpp, a proxy)",
            "openai",
            "compatible",
            ("llama3.1",),
            key_required=False,
            compatible=True,
        ),
    )
}
ALIAS_RE = re.compile(r"[^a-z0-9]+")


@dataclass
class Choice:
    """What the operator picked. `key` is a secret: kept out of repr and every message."""

    provider: str
    model: str
    starter: str = "assistant"
    api_base: str | None = None
    key: str | None = field(default=None, repr=False)
    daily_usd: float = DEFAULT_DAILY_USD
    fleet_daily_usd: float = DEFAULT_FLEET_DAILY_USD
    # Prices in USD per million tokens; an OpenAI-compatible endpoint is free unless given.
    input_cost_per_mtok: float | None = None
    output_cost_per_mtok: float | None = None

    @property
    def spec(self) -> Provider | None:
        return PROVIDERS.get(self.provider)

    @property
    def alias(self) -> str:
        """The model alias agents name: the model, in letters, digits and '-'."""
        slug = ALIAS_RE.sub("-", self.model.lower()).strip("-")[:48]
        return slug if slug and slug[0].isalpha() else f"m-{slug}".rstrip("-")

    @property
    def credential(self) -> str | None:
        spec = self.spec
        if spec is None:
            return None
        if spec.compatible and not self.key:
            return None
        return spec.credential

    @property
    def agents(self) -> list[str]:
        return ["assistant"] if self.starter == "assistant" else ["researcher", "writer"]


@dataclass(frozen=True)
class Applied:
    config: str
    backup: str | None
    credential: str | None
    model: str
    agents: list[str]


def _url_problem(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"--api-base {url!r} is not an http(s) URL; write e.g. http://127.0.0.1:11434/v1"
    if parts.username or parts.password:
        return "--api-base must not hold a user or password; give the key with --key-stdin"
    return None


def _usd_problem(name: str, value: float | None) -> str | None:
    if value is None:
        return None
    if not math.isfinite(value) or not 0 <= value <= MAX_SETUP_USD:
        return f"{name} must be a number of USD from 0 to {MAX_SETUP_USD:g}"
    return None


def problems(choice: Choice) -> list[str]:
    """Every reason `choice` cannot be applied, each with the fix (never the key itself)."""
    from legion.gateway.redact import value_problem

    out: list[str] = []
    spec = choice.spec
    if spec is None:
        out.append(
            f"unknown provider {choice.provider!r}; pick one of {', '.join(PROVIDERS)}"
            " (compatible: any OpenAI-compatible endpoint, with --api-base)"
        )
        return out
    model = choice.model.strip()
    if not model or len(model) > 200 or any(c.isspace() or ord(c) < 32 for c in model):
        out.append(
            f"the model {choice.model!r} is not a model name (e.g. {spec.models[0]}); "
            "no spaces, at most 200 characters"
        )
    if choice.starter not in STARTERS:
        out.append(f"unknown starter {choice.starter!r}; pick one of {', '.join(STARTERS)}")
    if spec.compatible:
        if not choice.api_base:
            out.append(
                "an OpenAI-compatible endpoint needs its URL: --api-base "
                "http://127.0.0.1:11434/v1 (Ollama), http://HOST:8000/v1 (vLLM)"
            )
        else:
            problem = _url_problem(choice.api_base)
            if problem:
                out.append(problem)
    elif choice.api_base:
        problem = _url_problem(choice.api_base)
        if problem:
            out.append(problem)
    if choice.key:
        problem = value_problem(choice.key)
        if problem is not None:
            out.append(f"the key was not accepted: {problem}. Paste the key your provider issued")
    elif spec.key_required:
        out.append(
            f"{spec.label} needs an API key: give it with --key-stdin (or at the prompt); "
            "it goes into the vault, never into legion.toml"
        )
    for name, value in (
        ("--daily-usd", choice.daily_usd),
        ("--fleet-daily-usd", choice.fleet_daily_usd),
        ("--input-price", choice.input_cost_per_mtok),
        ("--output-price", choice.output_cost_per_mtok),
    ):
        problem = _usd_problem(name, value)
        if problem:
            out.append(problem)
    return out


def _s(value: str) -> str:
    """A TOML basic string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _num(value: float) -> str:
    return repr(float(value))


def config_text(choice: Choice) -> str:
    """The legion.toml of `choice` (call `problems` first)."""
    spec = choice.spec
    assert spec is not None
    alias = choice.alias
    lines = [
        "# legion.toml, written by `legion setup`. Every key is documented in",
        "# config.example.toml (`legion config init` writes it); check with `legion config check`.",
        "",
        "[llm]",
        f"default_model = {_s(alias)}",
        "# Fleet-wide spend cap per UTC day, USD.",
        f"fleet_daily_usd = {_num(choice.fleet_daily_usd)}",
        "",
        f"[llm.models.{alias}]",
        f"model = {_s(spec.prefix + '/' + choice.model.strip())}",
    ]
    if choice.credential:
        lines.append("# The provider key, in the vault (system tier): `legion vault ls`.")
        lines.append(f"credential = {_s(choice.credential)}")
    if choice.api_base:
        lines.append(f"api_base = {_s(choice.api_base)}")
    input_price, output_price = choice.input_cost_per_mtok, choice.output_cost_per_mtok
    if spec.compatible:  # a local server is free unless told otherwise
        input_price = 0.0 if input_price is None else input_price
        output_price = 0.0 if output_price is None else output_price
    if input_price is not None or output_price is not None:
        lines.append("# Prices in USD per million tokens (budgets reserve by them).")
        lines.append(f"input_cost_per_mtok = {_num(input_price or 0.0)}")
        lines.append(f"output_cost_per_mtok = {_num(output_price or 0.0)}")
    budget = [
        f"daily_usd = {_num(choice.daily_usd)}",
        f"monthly_usd = {_num(min(MAX_SETUP_USD, choice.daily_usd * 31))}",
    ]
    if choice.starter == "assistant":
        lines += [
            "",
            "[agents.assistant]",
            'role = "a helpful assistant"',
            "",
            "[agents.assistant.budget]",
            *budget,
            "",
            "[agents.assistant.permissions]",
            'blackboard_read = ["assistant/**"]',
            'blackboard_write = ["assistant/**"]',
        ]
    else:
        lines += [
            "",
            "[teams.research]",
            'description = "finds sources and writes them up, sharing research/ on the blackboard"',
        ]
        for name, role, writes, other in (
            ("researcher", "finds and summarises sources", "research/notes/**", "writer"),
            ("writer", "writes up what the researcher found", "research/drafts/**", "researcher"),
        ):
            lines += [
                "",
                f"[agents.{name}]",
                f"role = {_s(role)}",
                'team = "research"',
                "",
                f"[agents.{name}.budget]",
                *budget,
                "",
                f"[agents.{name}.permissions]",
                'blackboard_read = ["research/**"]',
                f"blackboard_write = [{_s(writes)}]",
                f"can_message = [{_s(other)}]",
            ]
    return "\n".join(lines) + "\n"


def apply(paths: Paths, choice: Choice, *, force: bool = False) -> Applied:
    """Store the key, then write legion.toml (validated, atomic). Raises SetupError."""
    from legion.config_edit import write_validated
    from legion.errors import ConfigError, LegionError
    from legion.gateway.vault import Vault

    found = problems(choice)
    if found:
        raise SetupError(found)
    config = paths.config
    if config.exists() and not force:
        raise SetupError(
            [
                f"{config} exists: legion is set up already; edit it (`legion config check`), "
                "or run `legion setup --force` to replace it (the old file is kept as "
                f"{config.name}.bak)"
            ]
        )
    text = config_text(choice)
    from legion.config import parse_config

    try:
        parse_config(text, str(config))
    except ConfigError as exc:  # a bug of ours: say so rather than write a broken file
        raise SetupError([f"the generated config is invalid: {p}" for p in exc.problems]) from None
    paths.home.mkdir(parents=True, exist_ok=True)
    os.chmod(paths.home, 0o700)
    if choice.key and choice.credential:
        try:
            vault = Vault(paths.vault_db, paths.vault_key)
        except LegionError as exc:
            raise SetupError([str(exc)]) from None
        try:
            vault.set(choice.credential, choice.key, tier="system")
        except LegionError as exc:
            raise SetupError([str(exc)]) from None
        finally:
            vault.close()
    backup = None
    if config.exists():  # --force: the old file stays beside the new one
        backup_path = config.with_name(config.name + ".bak")
        shutil.copy2(config, backup_path)
        backup = str(backup_path)
    write_validated(config, text)
    return Applied(
        config=str(config),
        backup=backup,
        credential=choice.credential if choice.key else None,
        model=choice.alias,
        agents=choice.agents,
    )


class SetupError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems
