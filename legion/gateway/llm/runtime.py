"""LiteLLM, imported lazily and off the event loop, and never fetching anything remote.

`import litellm` takes seconds and about 150 MiB, and only models that need translating
use it: the direct path (legion.gateway.llm.passthrough) never does. So the daemon starts
the import in a worker thread at start-up only when a configured model needs LiteLLM, and
otherwise the first call to such a model starts it (and awaits it); a call on the direct
path never waits for it or triggers it. What the direct path needs of LiteLLM's model
table (prices, context windows) is read from the installed package without importing it
(`table()`, legion.gateway.llm.pricing.ModelTable).

Before the import, LITELLM_LOCAL_MODEL_COST_MAP makes LiteLLM read its model price map
from the installed package instead of downloading it, and its telemetry is off. After
it, nothing of LiteLLM writes to stdout or stderr by itself: its prints are switched off
and its loggers go through the host's handlers (the daemon also turns any stray print
into a log record, see `legion.logs.capture_stray_output`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextvars import ContextVar
from types import ModuleType
from typing import Any

import httpx

from legion.gateway.llm.pricing import ModelTable, load_table

log = logging.getLogger(__name__)
_module: ModuleType | None = None


def load_blocking() -> ModuleType:
    """Import and configure LiteLLM (blocking: call from a worker thread)."""
    global _module
    if _module is not None:
        return _module
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    os.environ.setdefault("LITELLM_TELEMETRY", "False")
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    # With JSON_LOGS=true in the environment, importing LiteLLM replaces sys.excepthook with
    # a handler of its own that writes to stderr: the host's logging decides, so it is put back.
    excepthook = sys.excepthook
    import litellm
    import litellm._logging

    sys.excepthook = excepthook
    litellm.telemetry = False
    # LiteLLM's own `print` calls: the "Give Feedback / Get Help" and "Provider List" banners
    # (printed unless suppress_debug_info) and every print_verbose (printed when set_verbose).
    litellm.suppress_debug_info = True
    litellm.set_verbose = False  # type: ignore[attr-defined]  # re-exported from _logging
    litellm._logging.set_verbose = False
    litellm.drop_params = True  # a provider that lacks a parameter gets the call without it
    litellm.num_retries = 0  # failover and backoff are the gateway's job
    litellm.DEFAULT_MAX_RETRIES = 0  # type: ignore[attr-defined]  # aembedding needs it
    # LiteLLM gives its loggers handlers of their own (writing straight to stdout and
    # stderr, in its own format); route them through the root handlers instead, where the
    # host's format and redaction filter sit. Their info and debug lines are chatter.
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "LiteLLM Proxy.stdout"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.WARNING)
    _refuse_redirects()
    # LiteLLM leaves ~400k long-lived objects; without this every full GC pass walks them
    # (pauses of ~200 ms on the host's event loop).
    gc.collect()
    gc.freeze()
    _module = litellm
    return litellm


# The longest stream line (one SSE event) the LiteLLM call being made may receive: the
# gateway sets it around `litellm.acompletion` (the transport runs in that task's context);
# None: no stream is expected, nothing is bounded here.
STREAM_LINE_CAP: ContextVar[int | None] = ContextVar("legion_stream_line_cap", default=None)


class StreamLineTooLong(httpx.RemoteProtocolError):
    """An event stream line past its cap: the read fails there, nothing more is buffered."""


class _CappedLines(httpx.AsyncByteStream):
    """An event stream whose lines are at most `cap` bytes. LiteLLM (the OpenAI SDK's SSE
    decoder) keeps reading a line until it ends: one line that never ends would be held
    whole in memory (a 32 MB line cost ~1 GB of RSS) and then parsed as nothing."""

    def __init__(self, inner: httpx.AsyncByteStream, cap: int) -> None:
        self._inner = inner
        self._cap = cap

    async def __aiter__(self) -> AsyncIterator[bytes]:
        run = 0  # bytes since the last line end
        async for chunk in self._inner:
            end = max(chunk.rfind(b"\n"), chunk.rfind(b"\r"))
            run = run + len(chunk) if end < 0 else len(chunk) - end - 1
            if run > self._cap:
                raise StreamLineTooLong(
                    f"the upstream sent a stream line over {self._cap} bytes; refused"
                )
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class _NoRedirects(httpx.AsyncBaseTransport):
    """A transport that hands a redirect back as the answer it is: the Location header of a
    3xx is dropped, so the client above it (LiteLLM's, the OpenAI SDK's, both created with
    follow_redirects=True) cannot follow it. A provider, or whoever sits on a plain-http
    path to it, must not steer the host's request (the agent's prompt) to another address,
    past the egress policy; the direct path never follows redirects either. An event
    stream's lines are bounded (`STREAM_LINE_CAP`), as on the direct path."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if 300 <= response.status_code < 400 and "location" in response.headers:
            log.warning(
                "a provider answered with a redirect; not followed",
                extra={"fields": {"url": str(request.url), "status": response.status_code}},
            )
            del response.headers["location"]
        cap = STREAM_LINE_CAP.get()
        # whatever content type the upstream claims: the SDK reads a stream call's body as
        # an event stream either way
        if cap is not None and isinstance(response.stream, httpx.AsyncByteStream):
            response.stream = _CappedLines(response.stream, cap)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def _refuse_redirects() -> None:
    """Every async transport LiteLLM builds (for the OpenAI SDK's clients and its own
    handler) is wrapped in `_NoRedirects`."""
    from litellm.llms.custom_httpx.http_handler import AsyncHTTPHandler

    build = AsyncHTTPHandler.create_async_transport
    if getattr(build, "legion_no_redirects", False):
        return

    def create_async_transport(*args: Any, **kwargs: Any) -> httpx.AsyncBaseTransport:
        inner = build(*args, **kwargs)
        return _NoRedirects(inner if inner is not None else httpx.AsyncHTTPTransport())

    mounts: Any = AsyncHTTPHandler.create_httpx_proxy_mounts

    def create_httpx_proxy_mounts(transport: Any, *args: Any, **kwargs: Any) -> Any:
        # the proxies from the environment (HTTPS_PROXY) are mounted as before, wrapped too
        unwrapped = transport._inner if isinstance(transport, _NoRedirects) else transport
        found = mounts(unwrapped, *args, **kwargs)
        if not found:
            return found
        return {k: (_NoRedirects(v) if v is not None else v) for k, v in found.items()}

    create_async_transport.legion_no_redirects = True  # type: ignore[attr-defined]
    AsyncHTTPHandler.create_async_transport = staticmethod(create_async_transport)  # type: ignore[method-assign,assignment]
    AsyncHTTPHandler.create_httpx_proxy_mounts = staticmethod(create_httpx_proxy_mounts)  # type: ignore[method-assign]


class LiteLLM:
    """Owns the one import of LiteLLM for a host (and the model table read without it)."""

    def __init__(self) -> None:
        self._task: asyncio.Task[ModuleType] | None = None
        self._table: asyncio.Task[ModelTable] | None = None

    def start(self) -> asyncio.Task[ModuleType]:
        if self._task is None:
            self._task = asyncio.create_task(
                asyncio.to_thread(load_blocking), name="litellm-import"
            )
        return self._task

    async def get(self) -> Any:
        # Shielded: a caller that goes away (a client hung up) must not cancel the one
        # import every later call waits for.
        return await asyncio.shield(self.start())

    @property
    def started(self) -> bool:
        """Whether this host asked for the import (at start-up or for a call)."""
        return self._task is not None

    def loaded(self) -> Any | None:
        """The module if it is imported already, else None (never starts the import)."""
        return _module

    async def table(self) -> Any:
        """LiteLLM's model table for prices and limits: the module when it is imported,
        else its price map read once, off the loop, without importing it."""
        if _module is not None:
            return _module
        if self._table is None:
            self._table = asyncio.create_task(asyncio.to_thread(load_table), name="model-table")
        return await asyncio.shield(self._table)

    async def close(self) -> None:
        pending = [t for t in (self._task, self._table) if t is not None and not t.done()]
        # The import thread cannot be interrupted; let it finish so the process exits clean.
        await asyncio.gather(*pending, return_exceptions=True)
