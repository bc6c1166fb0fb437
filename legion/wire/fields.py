"""Field types of the request models: each validates with a rule of `legion.wire.rules` and
states the same rule in its JSON Schema, so the OpenAPI document is as strict as the server.

A schema node may carry `x-legion-configured` (`{"maxLength": "max_key_length"}`): the value
depends on the host's configuration, and `Router.openapi(configured=...)` writes the
configured value in its place (or drops the keyword when the host gives none).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, WithJsonSchema
from typing_extensions import TypeAliasType

from legion.wire import rules

CONFIGURED = "x-legion-configured"


def _checked(check: Callable[[str], str | None]) -> AfterValidator:
    def validate(value: str) -> str:
        problem = check(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    return AfterValidator(validate)


def _schema(node: dict[str, Any], **extra: Any) -> WithJsonSchema:
    return WithJsonSchema({**node, **extra})


# --- numbers ----------------------------------------------------------------------------


def _integral(value: Any) -> Any:
    """JSON Schema's `integer` is any number without a fraction, so `2.0` is 2; a float with
    a fraction, a bool or a numeric string is still refused by the strict `int` after."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# Integers as JSON Schema means them (models are strict: no bool, no numeric string). The
# constraints come before the validator, so the generated schema states them.
InboxId = Annotated[
    int,
    Field(ge=rules.ID_MIN, le=rules.SQLITE_MAX, description="An inbox item id (from a poll)."),
    BeforeValidator(_integral),
]
Version = Annotated[int, Field(ge=0, le=rules.SQLITE_MAX), BeforeValidator(_integral)]
Cursor = Annotated[int, Field(ge=0, le=rules.SQLITE_MAX), BeforeValidator(_integral)]
TokenCount = Annotated[int, Field(ge=1, le=rules.SQLITE_MAX), BeforeValidator(_integral)]
ItemCount = Annotated[int, Field(ge=1, le=100), BeforeValidator(_integral)]
Count = Annotated[int, Field(ge=0, le=rules.SQLITE_MAX), BeforeValidator(_integral)]
BurstSize = Annotated[int, Field(ge=1, le=10_000), BeforeValidator(_integral)]
TabIndex = Annotated[int, Field(ge=0, le=100), BeforeValidator(_integral)]
# Seconds. Finite (models refuse inf and nan) and bounded, so `1e400` is refused rather than
# becoming "never expires".
TTL_MAX_S = 366 * 86400
TtlSeconds = Annotated[float, Field(gt=0, le=TTL_MAX_S, allow_inf_nan=False)]
WaitSeconds = Annotated[float, Field(ge=0, le=3600, allow_inf_nan=False)]

# --- names, keys, topics, globs ---------------------------------------------------------

# `?agent=` on a listing: an agent name, or empty for every agent.
AgentFilter = Annotated[
    str,
    _checked(lambda text: None if text == "" else rules.name_problem(text)),
    _schema(
        rules.schema_string(
            pattern=f"^(?:{rules.NAME_PATTERN[1:-1]})?$", max_length=rules.NAME_MAX
        ),
        description=f"An agent name ({rules.NAME_RULE}), or empty for every agent.",
    ),
]

AgentName = Annotated[
    str,
    _checked(rules.name_problem),
    _schema(
        rules.schema_string(pattern=rules.NAME_PATTERN, min_length=1, max_length=rules.NAME_MAX),
        description=f"An agent name: {rules.NAME_RULE}.",
        **{CONFIGURED: {"examples": "agent_names"}},
    ),
]

BlackboardKey = Annotated[
    str,
    _checked(rules.key_problem),
    _schema(
        rules.schema_string(
            pattern=rules.KEY_PATTERN, min_length=1, max_length=rules.KEY_MAX_CEILING
        ),
        description=f"A blackboard key: {rules.KEY_RULE}; at most [host.blackboard] "
        "max_key_length characters.",
        **{CONFIGURED: {"maxLength": "max_key_length"}},
    ),
]

Topic = Annotated[
    str,
    _checked(rules.topic_problem),
    _schema(
        rules.schema_string(pattern=rules.KEY_PATTERN, min_length=1, max_length=rules.TOPIC_MAX),
        description=f"A topic: {rules.KEY_RULE}.",
    ),
]

Glob = Annotated[
    str,
    _checked(rules.glob_problem),
    _schema(
        rules.schema_string(pattern=rules.GLOB_PATTERN, min_length=1, max_length=rules.GLOB_MAX),
        description=f"A glob: {rules.GLOB_RULE}.",
    ),
]

AgentAction = Literal["start", "stop", "restart"]

# --- egress -----------------------------------------------------------------------------

# The URL and header rules are stated here and enforced by the egress proxy itself
# (`legion.gateway.egress.parse_url`, `_agent_headers`, with the same functions of
# `legion.wire.rules`), so that a refused URL or header is audited like any refused request.
EgressUrl = Annotated[
    str,
    Field(min_length=1, max_length=rules.URL_MAX),
    _schema(
        rules.schema_string(pattern=rules.URL_PATTERN, min_length=1, max_length=rules.URL_MAX),
        description=f"{rules.URL_RULE}; `$CRED{{name}}` may appear in the path or query.",
    ),
]
HeaderName = Annotated[
    str, _schema(rules.schema_string(pattern=rules.HEADER_NAME_PATTERN, min_length=1))
]
HeaderValue = Annotated[str, _schema(rules.schema_string(pattern=rules.HEADER_VALUE_PATTERN))]
Base64Text = Annotated[
    str,
    _checked(rules.base64_problem),
    _schema(rules.schema_string(pattern=rules.BASE64_PATTERN), contentEncoding="base64"),
]

# --- automation ---------------------------------------------------------------------------

# Named aliases (`TypeAliasType`): the document states each once, as a component that every
# body using it refers to (the schedule pattern and the zone list are long).
CronSchedule = TypeAliasType(
    "CronSchedule",
    Annotated[
        str,
        _checked(rules.schedule_problem),
        _schema(
            rules.schema_string(
                pattern=rules.schedule_pattern(), min_length=1, max_length=rules.SCHEDULE_MAX
            ),
            description=f"A schedule: {rules.SCHEDULE_RULE}. Runs at most as often as [automation] "
            "min_interval_s allows (the document carries the pattern for this host's value).",
            **{CONFIGURED: {"pattern": "schedule_pattern"}},
        ),
    ],
)
TimeZoneName = TypeAliasType(
    "TimeZoneName",
    Annotated[
        str,
        _checked(rules.timezone_problem),
        _schema(
            rules.schema_string(min_length=1, max_length=rules.TIMEZONE_MAX),
            description=f"{rules.TIMEZONE_RULE} (the document lists this host's).",
            **{CONFIGURED: {"enum": "timezones"}},
        ),
    ],
)
JobName = Annotated[
    str,
    _checked(rules.job_name_problem),
    _schema(
        rules.schema_string(
            pattern=rules.JOB_NAME_PATTERN, min_length=1, max_length=rules.JOB_NAME_MAX
        ),
        description=f"A cron job's name: {rules.JOB_NAME_RULE}.",
    ),
]
JobId = Annotated[
    int,
    Field(ge=rules.ID_MIN, le=rules.SQLITE_MAX, description="A cron job's id."),
    BeforeValidator(_integral),
]
HookName = Annotated[
    str,
    _checked(rules.hook_name_problem),
    _schema(
        rules.schema_string(
            pattern=rules.HOOK_NAME_PATTERN, min_length=1, max_length=rules.HOOK_NAME_MAX
        ),
        description=f"A webhook's name: {rules.HOOK_NAME_RULE}.",
    ),
]
WebhookJobId = Annotated[
    str,
    _checked(rules.webhook_job_problem),
    _schema(
        rules.schema_string(pattern=rules.WEBHOOK_JOB_PATTERN, min_length=27, max_length=27),
        description="A webhook delivery's job id (from the listener's 202 answer).",
    ),
]
StripeSecret = Annotated[
    str,
    _checked(rules.stripe_secret_problem),
    _schema(
        rules.schema_string(
            pattern=rules.STRIPE_SECRET_PATTERN,
            min_length=6 + rules.STRIPE_SECRET_MIN,
            max_length=6 + rules.STRIPE_SECRET_MAX,
        ),
        description=rules.STRIPE_SECRET_RULE + ".",
    ),
]


def _not_null(value: Any) -> Any:
    if value is None:
        raise ValueError("must not be null")
    return value


# Any JSON value but null (a message or payload that says nothing is refused).
JSONNotNull = Annotated[Any, AfterValidator(_not_null), WithJsonSchema({"not": {"type": "null"}})]

# --- browser ------------------------------------------------------------------------------

BrowserRef = Annotated[
    str,
    _checked(rules.ref_problem),
    _schema(
        rules.schema_string(pattern=rules.REF_PATTERN, min_length=1, max_length=rules.REF_MAX),
        description=f"{rules.REF_RULE}.",
    ),
]
# A page to open: the egress URL rule (the browser's traffic goes through the same proxy);
# checked by the model, as a page's URL is not audited before the browser asks for it.
PageUrl = Annotated[
    str,
    _checked(rules.url_problem),
    _schema(
        rules.schema_string(pattern=rules.URL_PATTERN, min_length=1, max_length=rules.URL_MAX),
        description=f"The page to open: {rules.URL_RULE}.",
    ),
]
