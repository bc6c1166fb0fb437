"""Bodies of the egress proxy: an HTTP request the host performs for an agent, and its result.

Credentials are referred to by handle: `$CRED{name}` anywhere in `url` (path or query),
a header value or the body is replaced by the host, only toward the hosts the credential
is bound to. The agent never sees the value; a response that echoes it comes back with
`[REDACTED]` in its place.
"""

from __future__ import annotations

import binascii
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, model_validator

from legion.wire import rules
from legion.wire.fields import Base64Text, EgressUrl, HeaderName, HeaderValue

Method = Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]

# Names are RFC 9110 tokens, values hold no line break, NUL or other control character.
# (Spelt out: a dict's generated schema would say `patternProperties`, which lets any other
# name through, where the model refuses it.)
Headers = Annotated[
    dict[HeaderName, HeaderValue],
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": {"pattern": rules.HEADER_NAME_PATTERN, "minLength": 1},
            "additionalProperties": rules.schema_string(pattern=rules.HEADER_VALUE_PATTERN),
        }
    ),
]


class EgressRequest(BaseModel):
    """An outbound HTTP(S) request, performed by the host on the calling agent's behalf."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        # Either body or body_base64, not both (null counts as absent).
        json_schema_extra={
            "not": {
                "required": ["body", "body_base64"],
                "properties": {"body": {"type": "string"}, "body_base64": {"type": "string"}},
            }
        },
    )

    method: Method = "GET"
    url: EgressUrl
    headers: Headers = Field(
        default_factory=dict,
        description="Request headers; values may hold `$CRED{name}`. Host, framing and "
        "hop-by-hop headers are set by the host.",
    )
    body: str | None = Field(default=None, description="Text body (sent as UTF-8).")
    body_base64: Base64Text | None = Field(default=None, description="Binary body, base64.")
    timeout_s: float | None = Field(
        default=None,
        gt=0,
        le=86400,
        description="Whole-request limit; the host's limit ([egress] timeout_s) caps it.",
    )
    follow_redirects: bool = True

    @model_validator(mode="after")
    def _one_body(self) -> EgressRequest:
        if self.body is not None and self.body_base64 is not None:
            raise ValueError("send either body or body_base64, not both")
        return self

    def body_bytes(self) -> bytes | None:
        if self.body_base64 is not None:
            return binascii.a2b_base64(self.body_base64.encode("ascii"), strict_mode=True)
        if self.body is not None:
            return self.body.encode("utf-8")
        return None


class EgressResponse(BaseModel):
    """The final response (after redirects), with every vault value scrubbed out of it."""

    status: int
    headers: dict[str, str] = Field(
        description="Response headers, names lower-cased; repeated headers joined with ', '."
    )
    body: str | None = Field(default=None, description="The body, when it is UTF-8 text.")
    body_base64: str | None = Field(default=None, description="The body, when it is binary.")
    truncated: bool = Field(
        default=False, description="True when the body was cut at the host's size limit."
    )
    final_url: str = Field(description="The URL the response came from (after redirects).")
    redirects: int = Field(default=0, description="How many redirects were followed.")
