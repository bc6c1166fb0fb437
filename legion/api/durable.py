"""Replies wait for the disk: a route's answer is sent only once every durable commit made
before it was produced is fsynced (group commit, `legion.groupcommit`).

The host wraps every route of every router it builds (`legion.host`), so no handler can
forget to: a blackboard write, an inbox item, a subscription, a claim or an audit record
is on disk before the agent (or the operator) is told about it, and so is anything else a
reply shows (a value another agent wrote, an item handed to a parked poll). Errors wait
too: a refusal's audit record is on disk before the refusal is sent. A handler that was
cancelled (its client left) sends nothing, so it waits for nothing.

At durability "normal" nothing is fsynced per commit, so nothing waits.
"""

from __future__ import annotations

import asyncio
import functools

from pydantic import BaseModel

from legion.api.http import Call, Handler, Response, Router, StreamResponse
from legion.store import Store


def durable_routes(router: Router, store: Store) -> Router:
    """Wrap every handler of `router` so it returns (or raises) after `store.flush()`."""
    for route in router.routes:
        route.handler = _durable(route.handler, store)
    return router


def _durable(inner: Handler, store: Store) -> Handler:
    @functools.wraps(inner)
    async def handler(call: Call) -> BaseModel | Response | StreamResponse:
        try:
            result = await inner(call)
        except asyncio.CancelledError:
            raise
        except BaseException:
            await store.flush()
            raise
        await store.flush()
        return result

    return handler
