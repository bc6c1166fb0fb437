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

REFRESH_S = 1.0  # how stale the set of values masking a stream may be


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
    @functools.wraps(inner)
    async def handler(call: Call) -> BaseModel | Response | StreamResponse:
        if inbound and route.body is not None and call.request.body:
            _mask_body(call, route.body, redactor)
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
        return Response(200, redactor.redact_bytes(result.model_dump_json().encode()))

    return handler


def _mask_body(call: Call, model: type[BaseModel], redactor: Redactor) -> None:
    """Mask vault values inside the JSON strings of a request body (never across JSON
    structure), and validate the masked body the way the server validated the original."""
    try:
        data = json.loads(call.request.body)
    except ValueError:
        return  # the server already validated it; nothing a string could hide in
    masked = redactor.redact_obj(data)
    if masked == data:
        return
    text = json.dumps(masked).encode()
    call.request.body = text
    try:
        call.body = model.model_validate_json(text)
    except ValidationError:
        # e.g. a webhook secret that is a stored credential's value: masked, it is too
        # short. A typed refusal, never a 500 (and nothing of the value in the message).
        raise LegionError(
            "a field of this request holds the value of a stored credential, which the "
            "host masks in everything the operator sends; send a value of its own",
            code="credential_in_body",
            status=409,  # it conflicts with what the vault holds: the state, not the shape
        ) from None


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
