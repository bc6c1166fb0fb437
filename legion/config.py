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

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from legion.errors import ConfigError
from legion.wire.rules import (
    HOST_PORT_RULE,
    KEY_MAX_CEILING,
    NAME_PATTERN,
    NAME_RULE,
    RESERVED_NAMES,
    host_port_problem,
    name_problem,
)

NAME_RE = NAME_PATTERN  # the documented rule for agent and team names (docs/config.md)
# How deeply arrays and inline tables may nest in legion.toml: far beyond any real file,
# far below what the TOML parser's recursion can take.
MAX_TOML_NESTING = 32
# Money and prices: finite, and within what any real fleet spends.
MAX_USD = 1_000_000.0
MAX_USD_PER_MTOK = 100_000.0


def check_name(name: str, kind: str = "agent") -> str | None:
    """Why `name` cannot name an agent (or a team), or None. One rule for the config file and
    the CLI: lowercase letters, digits and '-', starting with a letter, at most 32
    characters, and none of the names the host uses itself."""
    if name_problem(name) is not None:
        return f"{name[:80]!r} is not a valid {kind} name; fix: use {NAME_RULE}"
    if name in RESERVED_NAMES:
        reserved = ", ".join(sorted(RESERVED_NAMES))
        return (
            f"`{name}` is reserved ({reserved} name the host's own principals); "
            f"fix: pick another {kind} name"
        )
    return None


def _named(kind: str) -> AfterValidator:
    def validate(name: str) -> str:
        problem = check_name(name, kind)
        if problem is not None:
            raise ValueError(problem)
        return name

    return AfterValidator(validate)


def _host_port(entry: str) -> str:
    problem = host_port_problem(entry)
    if problem is not None:
        raise ValueError(f"{problem}; fix: write {HOST_PORT_RULE}")
    return entry


AgentName = Annotated[str, _named("agent")]
TeamName = Annotated[str, _named("team")]
HostPort = Annotated[str, AfterValidator(_host_port)]
Usd = Annotated[float, Field(ge=0, le=MAX_USD)]


class _Section(BaseModel):
    # strict: "yes" is not a bool and "10" is not a number; a typo must not grant anything.
    # Numbers are finite: TOML's inf and nan are refused (a budget of inf is no budget).
    model_config = ConfigDict(
        extra="forbid", validate_default=True, strict=True, allow_inf_nan=False
    )


class BlackboardConfig(_Section):
    max_key_length: int = Field(default=256, ge=16, le=KEY_MAX_CEILING)
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
    daily_usd: Usd | None = None
    monthly_usd: Usd | None = None


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
    can_steer: list[str] = Field(default_factory=list)
    can_use_browser: bool = False
    # Empty: every browser action; else only these (see legion.wire.browser.ACTIONS).
    browser_actions: list[BrowserAction] = Field(default_factory=list)
    allowed_mcp: list[str] = Field(default_factory=list)


BrowserAction = Literal[
    "navigate",
    "snapshot",
    "click",
    "type",
    "select",
    "scroll",
    "back",
    "screenshot",
    "extract",
    "tabs",
    "request_human",
]


class BrowserConfig(_Section):
    """`[browser]`: one browser container per agent with `can_use_browser`, on demand."""

    engine: Literal["chromium", "camoufox"] = "chromium"
    image: str = "legion-browser:latest"
    base_image: str | None = None
    # Inside the image; empty: /usr/bin/chromium, or /opt/camoufox/camoufox for camoufox.
    executable: str | None = None
    idle_timeout_s: float = Field(default=300.0, ge=5, le=86400)
    max_running: int = Field(default=4, ge=1, le=256)
    start_timeout_s: float = Field(default=60.0, ge=5, le=600)
    action_timeout_s: float = Field(default=30.0, ge=1, le=600)
    memory_mb: int = Field(default=1024, ge=256, le=64 * 1024)
    cpus: float = Field(default=1.0, gt=0, le=64)
    pids: int = Field(default=1024, ge=64, le=100_000)
    shm_mb: int = Field(default=256, ge=64, le=8192)
    viewport_width: int = Field(default=1280, ge=320, le=3840)
    viewport_height: int = Field(default=800, ge=240, le=2160)
    snapshot_max_chars: int = Field(default=20000, ge=1000, le=1_000_000)
    extract_max_chars: int = Field(default=20000, ge=1000, le=1_000_000)
    max_tunnels: int = Field(default=64, ge=4, le=4096)
    vnc_port: int = Field(default=6080, ge=0, le=65535)
    novnc_dir: str = "/usr/share/novnc"
    handoff_ttl_s: float = Field(default=900.0, ge=1, le=86400)
    human_timeout_s: float = Field(default=1800.0, ge=10, le=86400)


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
    start_concurrency: int = Field(default=4, ge=1, le=64)
    status_resync_s: float = Field(default=30.0, ge=1, le=3600)


class LoopDetectionConfig(_Section):
    """Identical tool calls in one turn: warn at the Nth, block at the Nth, end the turn at
    the Nth with the same arguments, over a sliding window of the last `window` calls."""

    warn_at: int = Field(default=2, ge=2, le=1000)
    block_at: int = Field(default=4, ge=2, le=1000)
    stop_at: int = Field(default=9, ge=2, le=1000)
    window: int = Field(default=30, ge=2, le=10000)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
# The runtime sets these itself for a server with `egress = true`; nobody else may.
PROXY_ENV = frozenset(
    {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"}
    | {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
)


def _mcp_env(env: dict[str, str]) -> dict[str, str]:
    for key, value in env.items():
        if not _ENV_NAME.fullmatch(key):
            raise ValueError(
                f"{key[:80]!r} is not an environment variable name; fix: use letters, digits "
                "and '_', not starting with a digit"
            )
        if key.startswith("LEGION_") or key in PROXY_ENV:
            raise ValueError(
                f"{key} is set by the agent runtime itself; fix: remove it (a server that "
                "needs the web gets the proxy variables with egress = true)"
            )
        if "$CRED{" in value:
            raise ValueError(
                f"env.{key} holds a $CRED{{}} handle: no secret may enter a container, and "
                "nothing substitutes handles in a server's environment; fix: remove it (a "
                "server that needs a credential is a remote server, [mcp.NAME] with "
                "credential = ..., connected by the host)"
            )
        if "\x00" in value or len(value) > 4096:
            raise ValueError(f"env.{key}: at most 4096 characters, no NUL")
    return env


def _mcp_server_name(name: str) -> str:
    from legion.wire.mcp import server_problem

    problem = server_problem(name)
    if problem is not None:
        raise ValueError(f"{problem}; fix: rename the section")
    return name


McpServerName = Annotated[str, AfterValidator(_mcp_server_name)]


class McpStdioConfig(_Section):
    """A local MCP server, run inside the agent's container over stdio."""

    command: str = Field(min_length=1, max_length=4096)
    args: list[Annotated[str, Field(max_length=4096)]] = Field(default_factory=list)
    env: Annotated[dict[str, str], AfterValidator(_mcp_env)] = Field(default_factory=dict)
    egress: bool = False
    call_timeout_s: float = Field(default=60.0, gt=0, le=3600)


class SpawnConfig(_Section):
    """Limits of the sub-agents an agent with `can_spawn` starts (`spawn_agent`)."""

    max_concurrent: int = Field(default=2, ge=0, le=64)
    default_ttl_s: float = Field(default=600.0, gt=0, le=86400)
    max_ttl_s: float = Field(default=3600.0, gt=0, le=86400)
    default_budget_usd: Usd = 0.5
    max_budget_usd: Usd = 2.0
    # What a sub-agent may do at most; its matrix is this intersected with the parent's.
    # Unset: the parent's own permissions (never can_spawn, never can_manage_cron).
    permissions: PermissionsConfig | None = None


class WakeConfig(_Section):
    """Zero-cost wake checks (docs/automation.md): every `interval_s` the host looks for
    work (blackboard changes under `watch`, the rules of HEARTBEAT.md) and starts a turn
    only when it finds some. 0: no wake checks."""

    interval_s: float = Field(default=0.0, ge=0, le=7 * 86400)
    watch: list[str] = Field(default_factory=list, max_length=50)
    timezone: str | None = None


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
    embedding_model: str | None = None
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    permissions: PermissionsConfig = Field(default_factory=PermissionsConfig)
    loop_detection: LoopDetectionConfig = Field(default_factory=LoopDetectionConfig)
    mcp: dict[McpServerName, McpStdioConfig] = Field(default_factory=dict)
    spawn: SpawnConfig = Field(default_factory=SpawnConfig)
    wake: WakeConfig = Field(default_factory=WakeConfig)


class TeamConfig(_Section):
    description: str | None = None


class ModelConfig(_Section):
    """A model alias agents can use: LiteLLM model id, where, with which key, at what price."""

    model: str = Field(min_length=1)
    api_base: str | None = None
    credential: str | None = None
    failover: list[str] = Field(default_factory=list)
    input_cost_per_mtok: float | None = Field(default=None, ge=0, le=MAX_USD_PER_MTOK)
    output_cost_per_mtok: float | None = Field(default=None, ge=0, le=MAX_USD_PER_MTOK)
    timeout_s: float = Field(default=120.0, gt=0, le=3600)
    passthrough: bool = True
    context_window: int | None = Field(default=None, ge=1, le=100_000_000)
    max_output_tokens: int | None = Field(default=None, ge=1, le=100_000_000)


class LLMConfig(_Section):
    default_model: str | None = None
    embedding_model: str | None = None
    default_max_tokens: int = Field(default=4096, ge=1, le=1_000_000)
    fleet_daily_usd: Usd | None = None
    models: dict[str, ModelConfig] = Field(default_factory=dict)


class EgressConfig(_Section):
    allow: list[HostPort] = Field(default_factory=list)
    max_response_bytes: int = Field(default=5 * 1024 * 1024, ge=1024, le=512 * 1024 * 1024)
    timeout_s: float = Field(default=30.0, gt=0, le=600)
    max_redirects: int = Field(default=5, ge=0, le=20)


def _remote_url(url: str) -> str:
    from urllib.parse import urlsplit

    try:
        split = urlsplit(url)
        split.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ValueError(f"not a usable URL ({exc}); fix: write https://HOST/PATH") from None
    if split.scheme not in ("http", "https") or not split.hostname:
        raise ValueError("fix: write an http:// or https:// URL with a host")
    if split.username or split.password:
        raise ValueError("user info in the URL is not allowed; fix: use credential = ...")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise ValueError("the URL has spaces or control characters; fix: percent-encode them")
    return url


def _header_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}", name):
        raise ValueError(f"{name[:80]!r} is not an HTTP header name; fix: e.g. Authorization")
    return name


class McpRemoteConfig(_Section):
    """A remote MCP server (streamable HTTP), connected by the host, never by a container."""

    url: Annotated[str, Field(max_length=2048), AfterValidator(_remote_url)]
    credential: str | None = None
    auth_header: Annotated[str, AfterValidator(_header_name)] = "Authorization"
    auth_scheme: str = Field(default="Bearer", max_length=32, pattern=r"^[A-Za-z0-9._~+/-]*$")
    timeout_s: float = Field(default=60.0, gt=0, le=3600)


_REQUIREMENT = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,-]+\])?"
    r"(\s*(===|==|!=|~=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+(\s*,\s*(===|==|!=|~=|<=|>=|<|>)\s*"
    r"[A-Za-z0-9.*+!_-]+)*)?"
)


def _requirement(spec: str) -> str:
    if not _REQUIREMENT.fullmatch(spec.strip()):
        raise ValueError(
            f"{spec[:80]!r} is not a package requirement; fix: a name with an optional "
            'version, e.g. "mcp-server-time" or "mcp-server-fetch>=2025.1" (no URLs or '
            "pip options)"
        )
    return spec.strip()


class ImagesConfig(_Section):
    """What `legion images build` puts into the agent image beyond the runtime."""

    mcp_packages: list[Annotated[str, AfterValidator(_requirement)]] = Field(default_factory=list)


class TuiConfig(_Section):
    """The operator's TUI (`legion` with no subcommand)."""

    # binding id -> Textual key string; ids and defaults are in legion/tuikeys.py.
    keys: dict[str, str] = Field(default_factory=dict)


class WebhooksConfig(_Section):
    """The webhook listener (docs/automation.md): loopback by default; put a reverse proxy
    in front of it for a public deployment."""

    enabled: bool = False
    bind: str = "127.0.0.1"
    port: int = Field(default=8787, ge=0, le=65535)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=16 * 1024 * 1024)
    tolerance_s: float = Field(default=300.0, ge=10, le=3600)
    rate_per_min: float = Field(default=60.0, gt=0, le=100_000)
    burst: int = Field(default=20, ge=1, le=10_000)
    replay_window_s: float = Field(default=7 * 86400.0, ge=600, le=90 * 86400)
    result_retention_s: float = Field(default=7 * 86400.0, ge=60, le=365 * 86400)


class AutomationConfig(_Section):
    """Cron schedules, wake checks and webhooks (docs/automation.md)."""

    timezone: str | None = None
    max_jobs_per_agent: int = Field(default=20, ge=0, le=10_000)
    min_interval_s: float = Field(default=60.0, ge=1, le=86400)
    missed_grace_s: float = Field(default=60.0, ge=1, le=86400)
    keep_runs: int = Field(default=100, ge=1, le=100_000)
    webhooks: WebhooksConfig = Field(default_factory=WebhooksConfig)


class Config(_Section):
    host: HostConfig = Field(default_factory=HostConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    llm: LLMConfig = Field(default_factory=LLMConfig)
    egress: EgressConfig = Field(default_factory=EgressConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    images: ImagesConfig = Field(default_factory=ImagesConfig)
    mcp: dict[McpServerName, McpRemoteConfig] = Field(default_factory=dict)
    automation: AutomationConfig = Field(default_factory=AutomationConfig)
    browser: BrowserConfig = Field(default_factory=BrowserConfig)
    agents: dict[AgentName, AgentConfig] = Field(default_factory=dict)
    teams: dict[TeamName, TeamConfig] = Field(default_factory=dict)
    tui: TuiConfig = Field(default_factory=TuiConfig)


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
            if not isinstance(hop, str):
                continue  # a type error, reported by the model
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
    embedding = _table(data, "llm").get("embedding_model")
    if isinstance(embedding, str) and embedding not in models:
        problems.append(
            (
                "llm.embedding_model",
                f"`{embedding}` is not a model alias (aliases: "
                f"{known_models}); fix: add [llm.models.{embedding}]",
            )
        )
    problems += _automation_problems(data)
    for name, agent in agents.items():
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
        loops = agent.get("loop_detection")
        if isinstance(loops, dict):
            order = [loops.get(k, d) for k, d in (("warn_at", 2), ("block_at", 4), ("stop_at", 9))]
            if all(isinstance(v, int) for v in order) and not order[0] <= order[1] <= order[2]:
                problems.append(
                    (
                        f"agents.{name}.loop_detection",
                        f"warn_at ({order[0]}) <= block_at ({order[1]}) <= stop_at "
                        f"({order[2]}) must hold; fix the thresholds",
                    )
                )
        problems += _mcp_problems(name, agent, _table(data, "mcp"))
        spawn = agent.get("spawn")
        if isinstance(spawn, dict):
            for low, high, default in (
                ("default_ttl_s", "max_ttl_s", (600.0, 3600.0)),
                ("default_budget_usd", "max_budget_usd", (0.5, 2.0)),
            ):
                a, b = spawn.get(low, default[0]), spawn.get(high, default[1])
                if isinstance(a, int | float) and isinstance(b, int | float) and a > b:
                    problems.append(
                        (
                            f"agents.{name}.spawn.{low}",
                            f"{low} ({a}) is above {high} ({b}); fix: lower it or raise {high}",
                        )
                    )
        allowed = agent.get("allowed_models")
        wanted = [
            agent.get("model"),
            agent.get("embedding_model"),
            *(allowed if isinstance(allowed, list) else []),
        ]
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
    problems += _key_problems(_table(data, "tui", "keys"))
    return problems


def _key_problems(keys: dict[str, Any]) -> list[tuple[str, str]]:
    """[tui.keys]: known binding ids, well-formed key strings, no two actions on one key."""
    from legion.tuikeys import BINDINGS, BY_ID, key_problem

    problems: list[tuple[str, str]] = []
    for binding_id, value in keys.items():
        where = f"tui.keys.{binding_id}"
        if binding_id not in BY_ID:
            close = difflib.get_close_matches(binding_id, list(BY_ID), n=1)
            hint = (
                f'did you mean "{close[0]}"?'
                if close
                else "fix: use a binding id (open `legion`, then ? lists them) or remove the line"
            )
            problems.append((where, f"`{binding_id}` is not a binding id; {hint}"))
        elif isinstance(value, str) and (problem := key_problem(value)):
            problems.append((where, f'"{value}": {problem}; fix: write e.g. "ctrl+r" or "f6"'))
    effective = {
        spec.id: (keys[spec.id] if isinstance(keys.get(spec.id), str) else spec.key)
        for spec in BINDINGS
    }
    owner: dict[tuple[str, str], str] = {}
    for spec in BINDINGS:
        for key in (k.strip() for k in effective[spec.id].split(",")):
            for scope in {spec.scope, "app"} if spec.scope != "app" else {"app"}:
                other = owner.get((scope, key))
                if other is not None and other != spec.id and (spec.id in keys or other in keys):
                    problems.append(
                        (
                            f"tui.keys.{spec.id if spec.id in keys else other}",
                            f"`{key}` is also the key of {other if spec.id in keys else spec.id}; "
                            "fix: pick another key for one of them",
                        )
                    )
            owner.setdefault((spec.scope, key), spec.id)
    return problems


def timezone_problem(name: str) -> str | None:
    """Why `name` is not an IANA time zone this host knows (e.g. "Europe/Paris"), or None."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return (
            f"`{name}` is not a time zone this host knows; use an IANA name such as "
            '"UTC" or "Europe/Paris" (see /usr/share/zoneinfo)'
        )
    return None


def _automation_problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    import ipaddress

    from legion.mesh.globs import check_agent_pattern

    problems: list[tuple[str, str]] = []
    zones = [("automation.timezone", _table(data, "automation").get("timezone"))]
    for name, agent in _table(data, "agents").items():
        wake = _table(agent, "wake")
        zones.append((f"agents.{name}.wake.timezone", wake.get("timezone")))
        watch = wake.get("watch", [])
        for pattern in watch if isinstance(watch, list) else []:
            problem = check_agent_pattern(pattern) if isinstance(pattern, str) else None
            if problem:
                problems.append((f"agents.{name}.wake.watch", f"`{pattern}`: {problem}"))
    for key, zone in zones:
        problem = timezone_problem(zone) if isinstance(zone, str) and zone else None
        if problem:
            problems.append((key, problem))
    bind = _table(data, "automation", "webhooks").get("bind")
    if isinstance(bind, str):
        try:
            ipaddress.ip_address(bind)
        except ValueError:
            problems.append(
                (
                    "automation.webhooks.bind",
                    f'`{bind}` is not an IP address; write e.g. "127.0.0.1" (loopback, the '
                    'default) or "::1"; a public deployment puts a reverse proxy in front',
                )
            )
    return problems


def _mcp_problems(
    name: str, agent: dict[str, Any], remote: dict[str, Any]
) -> list[tuple[str, str]]:
    """allowed_mcp names that are no remote server, and a local server that shadows a
    remote one the agent may use (both would offer `<server>__*` tools)."""
    problems: list[tuple[str, str]] = []
    allowed = _table(agent, "permissions").get("allowed_mcp")
    patterns = [p for p in allowed if isinstance(p, str)] if isinstance(allowed, list) else []
    known = ", ".join(sorted(remote)) or "none defined"
    for pattern in patterns:
        if not any(c in pattern for c in "*?") and pattern not in remote:
            problems.append(
                (
                    f"agents.{name}.permissions.allowed_mcp",
                    f"`{pattern}` is not a remote MCP server (servers: {known}); fix: add "
                    f"[mcp.{pattern}] or fix the name",
                )
            )
    from legion.mesh.globs import any_match

    for server in _table(agent, "mcp"):
        if server in remote and any_match(patterns, server):
            problems.append(
                (
                    f"agents.{name}.mcp.{server}",
                    f"`{server}` is also a remote server this agent may use ([mcp.{server}]); "
                    "their tools would share the prefix; fix: rename one",
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
    "finite_number": "write a finite number (inf and nan are not allowed)",
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
            if origin is None and args:  # `Model | None`: the model
                ann = next(
                    (a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), ann
                )
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
    if kind == "value_error":  # our own rules: the message says what is wrong and the fix
        return f"{prefix}: {key}: {error['ctx']['error']}"
    got = repr(error.get("input"))
    got_text = "" if kind == "missing" else f" (got {got[:80]}{'...' if len(got) > 80 else ''})"
    fix = _FIXES.get(kind, "see config.example.toml")
    return f"{prefix}: {key}: {error['msg'].lower()}{got_text}; fix: {fix}"


def nesting_problem(text: str, limit: int = MAX_TOML_NESTING) -> tuple[int, str] | None:
    """(line, message) where arrays and inline tables of a TOML text nest deeper than
    `limit`, or None. A scan that skips strings and comments; run before the parser, whose
    recursion a deeply nested file would exhaust."""
    depth, line, i, n = 0, 1, 0, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
        elif c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif c in "\"'":
            quote = c * 3 if text.startswith(c * 3, i) else c
            j = i + len(quote)
            while j < n and not text.startswith(quote, j):
                if quote == c and text[j] == "\n":
                    break  # an unterminated one-line string: the parser reports it
                if c == '"' and text[j] == "\\":
                    j += 1  # an escape: the next character is not a quote
                elif text[j] == "\n":
                    line += 1
                j += 1
            i = j + len(quote)
            continue
        elif c in "[{":
            depth += 1
            if depth > limit:
                return line, (
                    f"arrays and inline tables nest more than {limit} deep; fix: flatten them "
                    "(legion.toml never needs more than a few levels)"
                )
        elif c in "]}":
            depth = max(0, depth - 1)
        i += 1
    return None


def parse_config(text: str, file: str = "legion.toml") -> Config:
    """Parse and validate a config text. Raises ConfigError listing every problem."""
    deep = nesting_problem(text)
    if deep is not None:
        raise ConfigError(file, [f"{file}:{deep[0]}: {deep[1]}"])
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, [f"{file}: not valid TOML: {exc}; fix the syntax there"]) from None
    except RecursionError:  # the scan above bounds nesting; this is the last wall
        raise ConfigError(
            file, [f"{file}: nested too deeply to parse; fix: flatten arrays and tables"]
        ) from None
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
