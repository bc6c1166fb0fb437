"""Masking by route: who reads a response, and what produced it, decide what is masked.

The host applies these where it builds its routers (`legion.host`), per the redaction
rule in docs/vault.md:

* the operator's control socket masks every vault value in every response (errors and
  streams too) and in the request bodies the operator sends, so nothing the operator
  pastes becomes agent-visible state with a secret in it;
* an agent's LLM routes mask the provider keys, the only secrets the LLM path handles;
* an agent's routes built from operator-authored config (`/v1/self`, `/v1/whoami`) mask
  every vault value: their content does not depend on anything the agent sent;
* every other agent route (blackboard, messages, inbox, replies) returns what was written,
  as written: matching an agent's input against vault values would tell it which of its
  guesses are secrets.

The egress route is not wrapped: the proxy scrubs the agent's own credentials itself
(`legion.gateway.egress`).

One field is exempt, explicitly and narrowly (`UNMASKED`): the `secret` of the answer to
`POST /v1/webhooks` and `POST /v1/webhooks/{name}/rotate`, which is the secret the host
has just generated for that hook (shown this once: the operator must copy it into the
sender). It is left as is only in those two answers, only in a `WebhookSecret`, and only
when it has the form of a generated secret (`lgwh_...`); everything else in them (the
name, the URL, an error) is masked as always. In the request bodies of those two routes
the `secret` field (Stripe's signing secret, bound for the vault) is not masked on the
way in either: the operator may give a value the vault already holds.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import AsyncIterator, Collection

from pydantic import BaseModel, ValidationError

from legion.api.http import Call, Handler, Response, Route, Router, StreamResponse
from legion.errors import LegionError
from legion.gateway.redact import Redactor
from legion.wire.automation import WebhookSecret
from legion.wire.rules import is_generated_secret

REFRESH_S = 1.0  # how stale the set of values masking a stream may be

# (method, template) -> (the field left unmasked, the response model it must be in). The
# same field of the request body is not masked on the way in.
UNMASKED: dict[tuple[str, str], tuple[str, type[BaseModel]]] = {
    ("POST", "/v1/webhooks"): ("secret", WebhookSecret),
    ("POST", "/v1/webhooks/{name}/rotate"): ("secret", WebhookSecret),
}


class VaultValueInBody(LegionError):
    status = 422
    code = "vault_value_in_body"


def mask_routes(
    router: Router,
    redactor: Redactor,
    *,
    inbound: bool = False,
    only: Collection[tuple[str, str]] | None = None,
) -> Router:
    """Wrap the handlers of `router` (or of the `(method, template)` pairs in `only`) so
    their responses pass `redactor`; with `inbound`, request bodies do too."""
    found = set()
    for route in router.routes:
        if only is None or (route.method, route.template) in only:
            route.handler = _masked(route, route.handler, redactor, inbound)
            found.add((route.method, route.template))
    missing = set(only or ()) - found
    if missing:  # a renamed route must not silently lose its masking
        raise ValueError(f"mask_routes: no such routes {sorted(missing)} in {router.title}")
    return router


def _masked(route: Route, inner: Handler, redactor: Redactor, inbound: bool) -> Handler:
    exempt = UNMASKED.get((route.method, route.template))

    @functools.wraps(inner)
    async def handler(call: Call) -> BaseModel | Response | StreamResponse:
        if inbound and route.body is not None and call.request.body:
            _mask_body(call, route.body, redactor, keep=exempt[0] if exempt else None)
        try:
            result = await inner(call)
        except LegionError as exc:
            exc.message = redactor.redact(exc.message)
            exc.args = (exc.message,)
            exc.detail = redactor.redact_obj(exc.detail)
            raise
        if isinstance(result, StreamResponse):
            result.chunks = _masked_chunks(result.chunks, redactor)
            return result
        if isinstance(result, Response):
            result.body = redactor.redact_bytes(result.body)
            return result
        if exempt is not None and isinstance(result, exempt[1]):
            return Response(200, _masked_but(result, exempt[0], redactor))
        return Response(200, redactor.redact_bytes(result.model_dump_json().encode()))

    return handler


def _masked_but(result: BaseModel, field: str, redactor: Redactor) -> bytes:
    """`result` masked as any answer, but for `field` when it holds a generated secret."""
    kept = getattr(result, field)
    if not isinstance(kept, str) or not is_generated_secret(kept):
        return redactor.redact_bytes(result.model_dump_json().encode())
    data = json.loads(
        redactor.redact_bytes(result.model_copy(update={field: None}).model_dump_json().encode())
    )
    data[field] = kept
    return json.dumps(data).encode()


def _mask_body(
    call: Call, model: type[BaseModel], redactor: Redactor, *, keep: str | None = None
) -> None:
    """Mask vault values inside the JSON strings of a request body (never across JSON
    structure; the top-level field `keep` is left as is), and validate the masked body the
    way the server validated the original. A body whose masked form breaks a field's rule
    (a vault value given as an agent name) is refused, and nothing is done."""
    try:
        data = json.loads(call.request.body)
    except ValueError:
        return  # the server already validated it; nothing a string could hide in
    kept = data.pop(keep, None) if keep is not None and isinstance(data, dict) else None
    masked = redactor.redact_obj(data)
    if masked == data:
        return
    if kept is not None:
        masked[keep] = kept
    text = json.dumps(masked).encode()
    try:
        body = model.model_validate_json(text)
    except ValidationError as exc:
        fields = sorted({".".join(map(str, e["loc"])) or "body" for e in exc.errors()})
        raise VaultValueInBody(
            f"the body holds a value stored in the vault where it cannot be masked "
            f"({', '.join(fields)}); nothing was done. A vault value never enters the host's "
            "state through the control socket: send the field without it",
            fields=fields,
        ) from None
    call.request.body = text
    call.body = body


async def _masked_chunks(chunks: AsyncIterator[bytes], redactor: Redactor) -> AsyncIterator[bytes]:
    """Each chunk masked with the values current at most `REFRESH_S` before it is sent (a
    long `legion events` sees credentials added after it started; a token stream does not
    re-read the vault per token). Closing this closes the producer."""
    refreshed = -REFRESH_S
    try:
        async for chunk in chunks:
            now = time.monotonic()
            fresh = now - refreshed >= REFRESH_S
            if fresh:
                refreshed = now
            yield redactor.redact_bytes(chunk, refresh=fresh)
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
