"""The egress proxy: the host performs HTTP(S) requests on an agent's behalf.

Agent containers have no network; this is their only way out. For every request:

* Only http and https. `$CRED{name}` in the URL's path or query, a header value or the
  body is replaced by the host, only when `Vault.resolve_for_agent` allows it (the agent
  holds the credential in `allowed_credentials`, the credential is agent-tier and bound to
  the target host, and the request is https unless the binding allows http). Otherwise
  nothing is sent. A handle in the host part is refused.
* The host name is resolved once per hop, off the event loop; if any address is forbidden
  (see `legion.gateway.netcheck`) the request is refused, unless the operator opened that exact
  HOST:PORT in `[egress] allow`. The connection goes to the checked address (the network
  backend below ignores the name it is handed), while TLS SNI, certificate checks and the
  Host header still use the name. So DNS cannot be rebound between check and connect.
* Redirects are followed by hand up to `max_redirects`, each hop checked like the first.
  Across origins, Authorization, Cookie, Proxy-Authorization and every header that carried
  a credential are dropped; a credential in a redirect target or in a re-sent body must be
  bound to the new host.
* Host, framing and hop-by-hop headers are the host's (an agent's are dropped); the host
  asks for `Accept-Encoding: identity` and decodes gzip/deflate itself, so scrubbing sees
  plain bytes.
* The body is streamed and cut at `max_response_bytes` (`truncated`); the whole request
  is bounded by the smaller of the agent's and the operator's timeout.
* The credentials the agent may substitute (granted to it, agent-tier: this request's, and
  any it could have sent earlier for a host to store and return now), and only those, are
  scrubbed from the response headers, body and URL and from error messages, in every form
  `legion.gateway.redact.EchoScrubber` recognises (raw, percent-encoded, JSON-escaped, HTML-
  escaped, hex, base64 and URL-safe base64, also inside `user:secret`). Nothing else is
  matched: the response never depends on whether the agent's text equals a secret it was
  not granted. Each
  request leaves one audit record (`egress.http`, allow or deny) whose URL is the agent's
  own (handles, not values); a refused credential's record says why (the agent's error
  does not distinguish a missing credential from a forbidden one).
"""

from __future__ import annotations

import asyncio
import base64
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import httpcore
import httpx

from legion.config import EgressConfig
from legion.errors import LegionError
from legion.gateway.egress_transport import (
    THREAD_SCRUB_BYTES,
    BodyReader,
    EgressDenied,
    EgressFailed,
    EgressTimeout,
    InvalidHeader,
    InvalidUrl,
    PinnedBackend,
    Reply,
    Trace,
    _utf8,
    system_resolver,
)
from legion.gateway.netcheck import AllowList, IPAddress, parse_ip_literal, refusal
from legion.gateway.redact import EchoScrubber
from legion.gateway.vault import Vault
from legion.mesh.audit import AuditLog
from legion.mesh.globs import glob_match
from legion.mesh.permissions import Perm, Permissions
from legion.wire import rules
from legion.wire.egress import EgressRequest, EgressResponse

Resolver = Callable[[str], Awaitable[list[str]]]

CRED_RE = re.compile(r"\$CRED\{([A-Za-z0-9_.\-]{1,64})\}")
CRED_RE_BYTES = re.compile(rb"\$CRED\{([A-Za-z0-9_.\-]{1,64})\}")
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CROSS_ORIGIN_DROP = frozenset({"authorization", "cookie", "proxy-authorization"})
# Headers the host sets itself; an agent's are dropped.
HOST_OWNED = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "proxy-connection",
        "accept-encoding",
    }
)
HOSTNAME_RE = re.compile(r"[a-z0-9_\-.]+")
DEFAULT_PORTS = {"http": 80, "https": 443}
VALUE_SAFE = "-._~!$&'()*+,;=:@"  # a substituted value keeps these in a URL
TARGET_SAFE = "!$&'()*+,-./:;=?@_~%[]"  # request targets keep these (and existing %XX)
AUDIT_URL_CHARS = 2048
SCRUBBER_CACHE = 256  # scrubbers kept, one per set of granted values (cleared when full)


# --- URLs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # ASCII, lower-case, no brackets
    port: int
    target: str  # path and query, as sent (or, for the agent's URL, before substitution)

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port

    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    def url(self) -> str:
        return f"{self.scheme}://{self.authority()}{self.target}"


def parse_url(url: str) -> Target:
    """Split and check an http(s) URL; the path and query are returned unquoted-as-given."""
    try:
        split = urlsplit(url.strip())
        port = split.port
    except ValueError as exc:
        raise InvalidUrl(f"not a usable URL: {exc}") from None
    scheme = split.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise InvalidUrl(
            f"scheme {scheme or '(none)'!r} is not supported; use an http:// or https:// URL"
        )
    if "$CRED{" in split.netloc:
        raise InvalidUrl(
            "a credential handle cannot appear in the host part of a URL; put it in a header, "
            "the path or the query"
        )
    if "@" in split.netloc:
        raise InvalidUrl("user info in URLs is not supported; send an Authorization header")
    host = split.hostname or ""
    if not host:
        raise InvalidUrl("the URL has no host")
    if parse_ip_literal(host) is None:
        if not host.isascii():
            try:
                host = host.encode("idna").decode("ascii")
            except UnicodeError:
                raise InvalidUrl(f"host {host!r} is not a valid domain name") from None
        if not HOSTNAME_RE.fullmatch(host) or ":" in host:
            raise InvalidUrl(f"host {host!r} is not a valid host name or IP address")
    if port == 0:
        raise InvalidUrl("port 0 is not a usable port")
    problem = rules.url_problem(url)  # the rest of the rule the request schema states
    if problem is not None:
        raise InvalidUrl(problem)
    target = split.path or "/"
    if split.query:
        target += "?" + split.query
    return Target(scheme, host, port or DEFAULT_PORTS[scheme], target)


def quote_target(target: str) -> str:
    """Percent-encode spaces, controls and non-ASCII; keep the URL's structure and escapes."""
    return quote(target, safe=TARGET_SAFE)


# --- credentials ----------------------------------------------------------------------


@dataclass
class Credentials:
    """Substitutes `$CRED{name}` for one request, remembering what it sent where."""

    vault: Vault
    patterns: list[str]  # the agent's allowed_credentials (names or globs, as permissions)
    used: dict[str, str] = field(default_factory=dict)
    url_forms: set[str] = field(default_factory=set)

    def value(self, name: str, url: Target) -> str:
        allowed = [name] if any(glob_match(p, name) for p in self.patterns) else []
        value = self.vault.resolve_for_agent(
            name, allowed=allowed, host=url.host.rstrip("."), scheme=url.scheme
        )
        self.used[name] = value
        return value

    def text(self, text: str, url: Target) -> str:
        return CRED_RE.sub(lambda m: self.value(m.group(1), url), text)

    def url_part(self, text: str, url: Target) -> str:
        def encoded(match: re.Match[str]) -> str:
            form = quote(self.value(match.group(1), url), safe=VALUE_SAFE)
            self.url_forms.add(form)
            return form

        return CRED_RE.sub(encoded, text)

    def body(self, data: bytes, url: Target) -> bytes:
        return CRED_RE_BYTES.sub(
            lambda m: self.value(m.group(1).decode(), url).encode("utf-8"), data
        )

    def forms(self) -> dict[str, str]:
        """Every form a substituted value was sent in -> its credential name."""
        out: dict[str, str] = {}
        for name, value in self.used.items():
            for form in (value, quote(value, safe=VALUE_SAFE), quote(value, safe="")):
                if form:
                    out[form] = name
        return out

    def check_url(self, url: Target) -> None:
        """A redirect target that carries a value we sent must be a host it is bound to
        (and use a scheme the binding allows)."""
        text = url.url()
        for form, name in self.forms().items():
            if form in text:
                self.value(name, url)


# --- the proxy ------------------------------------------------------------------------


class EgressProxy:
    """Performs HTTP(S) requests for agents, under the checks described above."""

    def __init__(
        self,
        *,
        config: EgressConfig,
        vault: Vault,
        audit: AuditLog,
        permissions: Permissions,
        resolver: Resolver | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.config = config
        self.vault = vault
        self.audit = audit
        self.permissions = permissions
        self.resolver: Resolver = resolver or system_resolver
        self.allow = AllowList.parse(config.allow)
        self._ssl = ssl_context
        self._scrubbers: dict[tuple[tuple[str, ...], frozenset[str]], EchoScrubber] = {}

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()
        return self._ssl

    def allowed_credentials(self, agent: str) -> list[str]:
        agent_cfg = self.permissions.config.agents.get(agent)
        return list(agent_cfg.permissions.allowed_credentials) if agent_cfg else []

    async def request(self, agent: str, req: EgressRequest) -> EgressResponse:
        """Perform `req` for `agent`; raises a typed LegionError when refused or failed."""
        trace = Trace(url=req.url)
        creds = Credentials(self.vault, self.allowed_credentials(agent))
        limit = min(req.timeout_s or self.config.timeout_s, self.config.timeout_s)
        try:
            try:
                async with asyncio.timeout(limit):
                    response = await self._run(agent, req, creds, trace, limit)
            except TimeoutError:
                raise EgressTimeout(
                    f"the request took longer than {limit:g} s and was abandoned",
                    timeout_s=limit,
                ) from None
        except LegionError as exc:
            scrub = self._scrubber(creds)
            exc.message = scrub.text(exc.message)
            exc.args = (exc.message,)
            exc.detail = scrub.obj(exc.detail)
            failed = exc.code in (EgressTimeout.code, EgressFailed.code)
            self._record(agent, req, trace, creds, scrub, "allow" if failed else "deny", exc)
            raise
        except asyncio.CancelledError:  # the caller went away; whatever was sent is on record
            scrub = self._scrubber(creds)
            self._record(agent, req, trace, creds, scrub, "allow", None, "cancelled")
            raise
        except Exception as exc:
            scrub = self._scrubber(creds)
            self._record(agent, req, trace, creds, scrub, "deny", None, type(exc).__name__)
            raise
        scrub = self._scrubber(creds)
        self._record(agent, req, trace, creds, scrub, "allow", None)
        return response

    def _scrubber(self, creds: Credentials) -> EchoScrubber:
        """Scrubs the credentials this agent may substitute (those of this request, and those
        it could have sent in an earlier one for a host to store and hand back now), and
        nothing else: never a value the agent was not granted."""
        values = sorted({*self.vault.granted_values(creds.patterns), *creds.used.values()})
        key = (tuple(values), frozenset(creds.url_forms))
        scrubber = self._scrubbers.get(key)
        if scrubber is None:
            if len(self._scrubbers) >= SCRUBBER_CACHE:
                self._scrubbers.clear()
            scrubber = self._scrubbers[key] = EchoScrubber(values, creds.url_forms)
        return scrubber

    def _record(
        self,
        agent: str,
        req: EgressRequest,
        trace: Trace,
        creds: Credentials,
        scrub: EchoScrubber,
        decision: str,
        error: LegionError | None,
        internal: str | None = None,
    ) -> None:
        if error is not None:
            # A refused credential's true reason (missing, system-tier, not granted) is for
            # the operator; the agent's error message is the same for all three.
            why = getattr(error, "operator_reason", None) or error.message
            reason = f"{error.code}: {scrub.text(why)}"
        elif internal == "cancelled":
            reason = "cancelled by the caller"
        elif internal is not None:
            reason = f"internal error ({internal})"
        else:
            reason = "sent"
        detail: dict[str, Any] = {
            "method": req.method,
            "url": scrub.text(trace.url)[:AUDIT_URL_CHARS],
            "status": trace.status,
            "bytes": trace.received,
            "sent_bytes": trace.sent,
            "reason": reason,
            "redirects": trace.redirects,
            "credentials": sorted(creds.used),
            "address": trace.address,
        }
        if trace.final_url is not None:
            detail["final_url"] = scrub.text(trace.final_url)[:AUDIT_URL_CHARS]
        self.audit.append(agent, "egress.http", trace.host, decision, **detail)

    async def _run(
        self, agent: str, req: EgressRequest, creds: Credentials, trace: Trace, limit: float
    ) -> EgressResponse:
        first = parse_url(req.url)
        trace.host = first.host
        headers_tpl = _agent_headers(req.headers)
        body_tpl = req.body_bytes()
        method = req.method
        backend = PinnedBackend()
        async with httpcore.AsyncConnectionPool(
            ssl_context=self._ssl_context(), network_backend=backend, max_connections=4
        ) as pool:
            url = Target(
                first.scheme,
                first.host,
                first.port,
                quote_target(creds.url_part(first.target, first)),
            )
            while True:
                headers = _substituted(headers_tpl, creds, url)
                body = creds.body(body_tpl, url) if body_tpl is not None else None
                if body is None and method in ("POST", "PUT", "PATCH"):
                    body = b""
                self._check_grant(agent, url.host)  # every hop: redirects cannot widen it
                backend.pin(url.host, url.port, await self._check_address(url))
                follow = req.follow_redirects
                reply = await self._send(pool, method, url, headers, body, follow, limit=limit)
                trace.address = backend.connected
                trace.status = reply.status
                trace.sent += len(body or b"")
                location = reply.header(b"location")
                if not (follow and reply.status in REDIRECT_STATUSES and location):
                    break
                if trace.redirects >= self.config.max_redirects:
                    raise EgressFailed(
                        f"stopped after {self.config.max_redirects} redirects (the host's "
                        "limit, egress.max_redirects)",
                        redirects=trace.redirects,
                    )
                try:
                    new = parse_url(urljoin(url.url(), location))
                except InvalidUrl as exc:
                    raise EgressFailed(
                        f"the server redirected to an unusable URL: {exc.message}"
                    ) from None
                new = Target(new.scheme, new.host, new.port, quote_target(new.target))
                trace.final_url = new.url()
                creds.check_url(new)
                if new.origin != url.origin:
                    headers_tpl = [
                        (name, value)
                        for name, value in headers_tpl
                        if name.lower() not in CROSS_ORIGIN_DROP and not CRED_RE.search(value)
                    ]
                if (reply.status == 303 and method != "HEAD") or (
                    reply.status in (301, 302) and method == "POST"
                ):
                    method, body_tpl = "GET", None
                url = new
                trace.redirects += 1
        trace.received = len(reply.body)
        return await self._response(req, reply, creds, trace)

    def _check_grant(self, agent: str, host: str) -> None:
        """Default deny: the agent's `egress_hosts` must match the host (operator: all)."""
        if agent == "operator":
            return
        decision = self.permissions.decide(agent, Perm.EGRESS, host.lower())
        if not decision.allowed:
            raise EgressDenied(
                f"{agent} may not reach {host!r}: {decision.reason}. The operator can grant "
                f"it with egress_hosts in [agents.{agent}.permissions]",
                code="permission_denied",
                host=host,
                permission="egress_hosts",
            )

    async def _check_address(self, url: Target) -> list[IPAddress]:
        """Resolve once and check every address; the ones returned are the ones to use."""
        literal = parse_ip_literal(url.host)
        if literal is not None:
            addresses: list[IPAddress] = [literal]
        else:
            try:
                raw = await self.resolver(url.host)
            except OSError as exc:
                raise EgressFailed(
                    f"cannot resolve {url.host}: {exc.strerror or exc}", host=url.host
                ) from None
            addresses = []
            for text in raw:
                ip = parse_ip_literal(text)
                if ip is None:
                    raise EgressFailed(f"the resolver returned {text!r} for {url.host}")
                addresses.append(ip)
            if not addresses:
                raise EgressFailed(f"{url.host} has no address", host=url.host)
        why = refusal(url.host, url.port, addresses, self.allow)
        if why is not None:
            pair = f"{url.host}:{url.port}" if ":" not in url.host else f"[{url.host}]:{url.port}"
            raise EgressDenied(
                f"egress to {pair} is refused: {why}. Agents may only reach public addresses; "
                f'the operator can open this exact pair with [egress] allow = ["{pair}"]',
                host=url.host,
                port=url.port,
            )
        return addresses

    async def _send(
        self,
        pool: httpcore.AsyncConnectionPool,
        method: str,
        url: Target,
        headers: list[tuple[str, str]],
        body: bytes | None,
        follow: bool,
        *,
        limit: float,
    ) -> Reply:
        wire_headers = [
            (b"Host", url.authority().encode("ascii")),
            (b"Accept-Encoding", b"identity"),
            *((name.encode("ascii"), value.encode("utf-8")) for name, value in headers),
        ]
        core_url = httpcore.URL(scheme=url.scheme, host=url.host, port=url.port, target=url.target)
        timeouts = {"connect": limit, "read": limit, "write": limit, "pool": limit}
        try:
            async with pool.stream(
                method,
                core_url,
                headers=wire_headers,
                content=body,
                extensions={"timeout": timeouts},
            ) as response:
                reply = Reply(response.status, list(response.headers))
                if follow and reply.status in REDIRECT_STATUSES and reply.header(b"location"):
                    return reply
                if method == "HEAD":
                    return reply
                reader = BodyReader(
                    self.config.max_response_bytes, reply.header(b"content-encoding") or ""
                )
                async for chunk in response.aiter_stream():
                    if not reader.feed(chunk):
                        break
                reader.finish()
                reply.body, reply.truncated = bytes(reader.data), reader.truncated
                reply.decoded = reader.decoded
                return reply
        except httpcore.TimeoutException:
            raise EgressTimeout(f"{url.authority()} did not answer in time") from None
        except (
            httpcore.NetworkError,
            httpcore.ProtocolError,
            httpcore.UnsupportedProtocol,
            OSError,
        ) as exc:
            raise EgressFailed(
                f"request to {url.authority()} failed: {type(exc).__name__}: {exc}"
            ) from None

    async def _response(
        self, req: EgressRequest, reply: Reply, creds: Credentials, trace: Trace
    ) -> EgressResponse:
        scrub = self._scrubber(creds)

        def build() -> EgressResponse:
            headers: dict[str, str] = {}
            for raw_name, raw_value in reply.headers:
                name = scrub.text(raw_name.decode("latin-1").lower())
                if reply.decoded and name in ("content-encoding", "content-length"):
                    continue
                value = scrub.text(raw_value.decode("latin-1"))
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
            data = scrub.cut_tail(reply.body) if reply.truncated else reply.body
            text = _utf8(data, reply.truncated)
            body = b64 = None
            if text is not None:
                body = scrub.text(text)
            else:
                b64 = base64.b64encode(scrub.data(data)).decode("ascii")
            return EgressResponse(
                status=reply.status,
                headers=headers,
                body=body,
                body_base64=b64,
                truncated=reply.truncated,
                final_url=scrub.text(trace.final_url or req.url),
                redirects=trace.redirects,
            )

        if len(reply.body) > THREAD_SCRUB_BYTES:
            return await asyncio.to_thread(build)
        return build()


def _bad_value(value: str) -> bool:
    return any(c in value for c in "\r\n\0")


def _agent_headers(raw: dict[str, str]) -> list[tuple[str, str]]:
    """The agent's headers, checked; the ones the host owns are dropped."""
    headers: list[tuple[str, str]] = []
    for name, value in raw.items():
        problem = rules.header_name_problem(name)
        if problem is not None:
            raise InvalidHeader(problem)
        if name.lower() in HOST_OWNED:
            continue
        problem = rules.header_value_problem(value)
        if problem is not None:
            raise InvalidHeader(f"header {name}: {problem}")
        headers.append((name, value.strip(" \t")))
    return headers


def _substituted(
    headers: list[tuple[str, str]], creds: Credentials, url: Target
) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for name, value in headers:
        sent = creds.text(value, url)
        if _bad_value(sent):
            raise InvalidHeader(
                f"header {name}: after credential substitution the value holds a line break "
                "or NUL; fix the credential in the vault"
            )
        out.append((name, sent))
    return out
