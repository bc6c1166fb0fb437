"""`legion.toml`: pydantic models, loading, and errors that name the file, key, and fix.

Every key is documented in `config.example.toml`. Unknown keys are errors with a
did-you-mean, so a typo never silently turns a permission off.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from legion.errors import ConfigError

NAME_RE = r"^[a-z][a-z0-9-]{0,31}$"
RESERVED_NAMES = frozenset({"operator", "host", "system"})

AgentName = Annotated[str, Field(pattern=NAME_RE)]


class _Section(BaseModel):
    # strict: "yes" is not a bool and "10" is not a number; a typo must not grant anything.
    model_config = ConfigDict(extra="forbid", validate_default=True, strict=True)


class BlackboardConfig(_Section):
    max_key_length: int = Field(default=256, ge=16, le=4096)
    max_value_bytes: int = Field(default=65536, ge=64, le=16 * 1024 * 1024)
    collect_interval_s: float = Field(default=5.0, gt=0, le=3600)
    watch_history: int = Field(default=10000, ge=100, le=1_000_000)


class HostConfig(_Section):
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    durability: Literal["full", "normal"] = "full"
    inbox_max_items: int = Field(default=10000, ge=1, le=10_000_000)
    visibility_timeout_s: float = Field(default=60.0, gt=0, le=86400)
    long_poll_max_s: float = Field(default=30.0, gt=0, le=30)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    blackboard: BlackboardConfig = Field(default_factory=BlackboardConfig)


class SocketLimits(_Section):
    """Limits of one socket's connections (each agent socket has its own set)."""

    max_connections: int = Field(default=128, ge=1, le=100_000)
    header_timeout_s: float = Field(default=10.0, gt=0, le=3600)
    body_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    idle_timeout_s: float = Field(default=30.0, gt=0, le=86400)
    send_timeout_s: float = Field(default=60.0, gt=0, le=86400)
    max_body_bytes_in_flight: int = Field(default=16 * 1024 * 1024, ge=1024, le=2**34)


def _control_limits() -> SocketLimits:
    return SocketLimits(
        max_connections=256,
        header_timeout_s=30.0,
        body_timeout_s=120.0,
        idle_timeout_s=300.0,
        send_timeout_s=300.0,
        max_body_bytes_in_flight=64 * 1024 * 1024,
    )


class RateBucket(_Section):
    """A token bucket: `burst` requests at once, refilled at `per_s` a second."""

    per_s: float = Field(gt=0, le=1_000_000)
    burst: int = Field(ge=1, le=10_000_000)


class RatesConfig(_Section):
    """Per agent, per route class (each agent route names its class in the route table)."""

    read: RateBucket = Field(default_factory=lambda: RateBucket(per_s=2000.0, burst=10000))
    write: RateBucket = Field(default_factory=lambda: RateBucket(per_s=1000.0, burst=10000))
    poll: RateBucket = Field(default_factory=lambda: RateBucket(per_s=200.0, burst=1000))
    llm: RateBucket = Field(default_factory=lambda: RateBucket(per_s=100.0, burst=1000))
    egress: RateBucket = Field(default_factory=lambda: RateBucket(per_s=50.0, burst=500))


class LimitsConfig(_Section):
    requests_per_turn: int = Field(default=4, ge=1, le=10_000)
    log_interval_s: float = Field(default=10.0, gt=0, le=86400)
    agent: SocketLimits = Field(default_factory=SocketLimits)
    control: SocketLimits = Field(default_factory=_control_limits)
    rates: RatesConfig = Field(default_factory=RatesConfig)


class BudgetConfig(_Section):
    daily_usd: float | None = Field(default=None, ge=0)
    monthly_usd: float | None = Field(default=None, ge=0)


class PermissionsConfig(_Section):
    can_message: list[str] = Field(default_factory=list)
    can_publish: list[str] = Field(default_factory=list)
    can_subscribe: list[str] = Field(default_factory=list)
    blackboard_read: list[str] = Field(default_factory=list)
    blackboard_write: list[str] = Field(default_factory=list)
    allowed_apis: list[str] = Field(default_factory=list)
    egress_hosts: list[str] = Field(default_factory=list)
    allowed_credentials: list[str] = Field(default_factory=list)
    can_manage_cron: bool = False
    can_spawn: bool = False


class ResourcesConfig(_Section):
    memory_mb: int | None = Field(default=None, ge=32, le=1024 * 1024)
    cpus: float | None = Field(default=None, gt=0, le=1024)
    pids: int | None = Field(default=None, ge=16, le=1_000_000)


class RuntimeConfig(_Section):
    backend: Literal["docker", "none"] = "docker"
    image: str = "legion-agent:latest"
    base_image: str | None = None
    container_runtime: str | None = None
    memory_mb: int = Field(default=384, ge=32, le=1024 * 1024)
    cpus: float = Field(default=0.5, gt=0, le=1024)
    pids: int = Field(default=256, ge=16, le=1_000_000)
    agent_uid: int = Field(default=10001, ge=1, le=2**31 - 1)
    restart_max_per_hour: int = Field(default=5, ge=0, le=1000)
    heartbeat_timeout_s: float = Field(default=90.0, ge=5, le=86400)
    debian_mirror: str | None = None


class AgentConfig(_Section):
    role: str | None = None
    mode: Literal["chat", "task"] = "chat"
    system_prompt: str | None = None
    max_tool_rounds: int = Field(default=8, ge=1, le=100)
    max_task_steps: int = Field(default=20, ge=1, le=1000)
    autostart: bool = True
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    model: str | None = None
    team: str | None = None
    allowed_models: list[str] = Field(default_factory=list)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    permissions: PermissionsConfig = Field(default_factory=PermissionsConfig)


class TeamConfig(_Section):
    description: str | None = None


class ModelConfig(_Section):
    """A model alias agents can use: LiteLLM model id, where, with which key, at what price."""

    model: str = Field(min_length=1)
    api_base: str | None = None
    credential: str | None = None
    failover: list[str] = Field(default_factory=list)
    input_cost_per_mtok: float | None = Field(default=None, ge=0)
    output_cost_per_mtok: float | None = Field(default=None, ge=0)
    timeout_s: float = Field(default=120.0, gt=0, le=3600)
    passthrough: bool = True


class LLMConfig(_Section):
    default_model: str | None = None
    default_max_tokens: int = Field(default=4096, ge=1, le=1_000_000)
    fleet_daily_usd: float | None = Field(default=None, ge=0)
    models: dict[str, ModelConfig] = Field(default_factory=dict)


class EgressConfig(_Section):
    allow: list[str] = Field(default_factory=list)
    max_response_bytes: int = Field(default=5 * 1024 * 1024, ge=1024, le=512 * 1024 * 1024)
    timeout_s: float = Field(default=30.0, gt=0, le=600)
    max_redirects: int = Field(default=5, ge=0, le=20)


class Config(_Section):
    host: HostConfig = Field(default_factory=HostConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    llm: LLMConfig = Field(default_factory=LLMConfig)
    egress: EgressConfig = Field(default_factory=EgressConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    agents: dict[AgentName, AgentConfig] = Field(default_factory=dict)
    teams: dict[AgentName, TeamConfig] = Field(default_factory=dict)


def _table(data: Any, *path: str) -> dict[str, Any]:
    for part in path:
        data = data.get(part) if isinstance(data, dict) else None
    return data if isinstance(data, dict) else {}


def reference_problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    """Cross-references the models cannot check alone, on the raw TOML data.

    Run even when field checks fail, so every problem is reported at once.
    Returns (key path, message) pairs.
    """
    problems: list[tuple[str, str]] = []
    models = _table(data, "llm", "models")
    teams = _table(data, "teams")
    agents = _table(data, "agents")
    known_models = ", ".join(sorted(models)) or "none defined"
    for alias, model in models.items():
        failover = model.get("failover", []) if isinstance(model, dict) else []
        for hop in failover if isinstance(failover, list) else []:
            key = f"llm.models.{alias}.failover"
            if hop == alias:
                problems.append((key, "a model cannot fail over to itself; remove it"))
            elif hop not in models:
                problems.append(
                    (
                        key,
                        f"`{hop}` is not a model alias (aliases: {known_models}); "
                        f"fix: add [llm.models.{hop}] or fix the name",
                    )
                )
    default = _table(data, "llm").get("default_model")
    if isinstance(default, str) and default not in models:
        problems.append(
            (
                "llm.default_model",
                f"`{default}` is not a model alias (aliases: "
                f"{known_models}); fix: add [llm.models.{default}]",
            )
        )
    allow = _table(data, "egress").get("allow", [])
    for entry in allow if isinstance(allow, list) else []:
        host, sep, port = str(entry).rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            problems.append(
                ("egress.allow", f'`{entry}` is not HOST:PORT; fix: write e.g. "127.0.0.1:8080"')
            )
    for name, agent in agents.items():
        if name in RESERVED_NAMES:
            problems.append(
                (f"agents.{name}", f"`{name}` is reserved; fix: pick another agent name")
            )
        if not isinstance(agent, dict):
            continue
        team = agent.get("team")
        if isinstance(team, str) and team not in teams:
            known = ", ".join(sorted(teams)) or "none defined"
            problems.append(
                (
                    f"agents.{name}.team",
                    f"team `{team}` is not defined (teams: "
                    f"{known}); fix: add a [teams.{team}] section "
                    "or fix the name",
                )
            )
        wanted = [agent.get("model"), *list(agent.get("allowed_models") or [])]
        for alias in wanted:
            if isinstance(alias, str) and models and alias not in models:
                problems.append(
                    (
                        f"agents.{name}.model",
                        f"`{alias}` is not a model alias "
                        f"(aliases: {known_models}); fix: add "
                        f"[llm.models.{alias}] or fix the name",
                    )
                )
    return problems


# --- loading -------------------------------------------------------------------

_FIXES: dict[str, str] = {
    "missing": "add the key",
    "extra_forbidden": "remove it",
    "string_type": 'write a quoted string, e.g. key = "text"',
    "int_type": "write a whole number, e.g. key = 10",
    "int_parsing": "write a whole number, e.g. key = 10",
    "float_type": "write a number, e.g. key = 5.0",
    "float_parsing": "write a number, e.g. key = 5.0",
    "bool_type": "write true or false",
    "bool_parsing": "write true or false",
    "list_type": 'write a list, e.g. key = ["a", "b"]',
    "dict_type": "write a table, e.g. [section]",
    "model_type": "write a table, e.g. [section]",
    "literal_error": "use one of the allowed values",
    "string_pattern_mismatch": "use lowercase letters, digits and '-', starting with a letter",
    "greater_than_equal": "use a larger value",
    "greater_than": "use a larger value",
    "less_than_equal": "use a smaller value",
    "less_than": "use a smaller value",
}


def _fields_at(path: tuple[str | int, ...]) -> list[str]:
    """Known field names of the model at `path` (for did-you-mean)."""
    model: Any = Config
    args: tuple[Any, ...]
    for part in path:
        if isinstance(model, type) and issubclass(model, BaseModel):
            field = model.model_fields.get(str(part))
            if field is None:
                return []
            ann = field.annotation
            args = getattr(ann, "__args__", ())
            origin = getattr(ann, "__origin__", None)
            model = ("dict", args[1]) if origin is dict and len(args) == 2 else ann
        elif isinstance(model, tuple) and model[0] == "dict":
            model = model[1]
        else:
            return []
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


class _LineIndex:
    """Maps dotted key paths to line numbers in a TOML text (best effort, for messages)."""

    _header = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
    _key = re.compile(r"^\s*([A-Za-z0-9_\-\.\"']+)\s*=")

    def __init__(self, text: str) -> None:
        self.lines: dict[str, int] = {}
        table: list[str] = []
        for number, line in enumerate(text.splitlines(), start=1):
            header = self._header.match(line)
            if header:
                table = [p.strip().strip("\"'") for p in header.group(1).split(".")]
                self.lines.setdefault(".".join(table), number)
                continue
            key = self._key.match(line)
            if key:
                parts = [p.strip().strip("\"'") for p in key.group(1).split(".")]
                self.lines.setdefault(".".join(table + parts), number)

    def find(self, path: str) -> int | None:
        parts = path.split(".")
        while parts:
            line = self.lines.get(".".join(parts))
            if line is not None:
                return line
            parts.pop()
        return None


def _describe(error: Any, where: str, index: _LineIndex, file: str) -> str:
    loc: tuple[str | int, ...] = tuple(p for p in error["loc"] if p != "[key]")
    kind = error["type"]
    key = ".".join(str(p) for p in loc) or "(top level)"
    line = index.find(key)
    prefix = f"{file}:{line}" if line else file
    if kind == "extra_forbidden":
        known = _fields_at(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = (
            f'did you mean "{close[0]}"?'
            if close
            else ("known keys: " + ", ".join(known) if known else "remove it")
        )
        return f"{prefix}: {key}: unknown key; {hint}"
    got = error.get("input")
    got_text = "" if kind == "missing" else f" (got {got!r})"
    fix = _FIXES.get(kind, "see config.example.toml")
    return f"{prefix}: {key}: {error['msg'].lower()}{got_text}; fix: {fix}"


def parse_config(text: str, file: str = "legion.toml") -> Config:
    """Parse and validate a config text. Raises ConfigError listing every problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, [f"{file}: not valid TOML: {exc}; fix the syntax there"]) from None
    index = _LineIndex(text)
    problems: list[str] = []
    config: Config | None = None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(e, "", index, file) for e in exc.errors()]
    for key, message in reference_problems(data):
        line = index.find(key)
        problems.append(f"{file}:{line}: {key}: {message}" if line else f"{file}: {key}: {message}")
    if problems or config is None:
        raise ConfigError(file, problems)
    return config


def load_config(path: Path) -> Config:
    """Load `path`; a missing file is the empty (valid) config."""
    if not path.exists():
        return Config()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [f"{path}: cannot read: {exc}"]) from None
    return parse_config(text, str(path))
