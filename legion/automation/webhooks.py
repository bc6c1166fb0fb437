"""Webhooks: named endpoints on a loopback HTTP listener that queue work for an agent.

`POST /hooks/NAME` with a signed body gets `202 {"job": ...}` at once; the body goes to
the hook's agent as one inbox item marked untrusted, and the agent's answer is kept
under the job id (`GET /hooks/NAME/jobs/JOB`, `legion webhooks result JOB`).

A request is checked in this order, the cheap checks first: the hook exists; its
refusal budget is not spent (a flood of junk costs a bounded amount of HMAC work and
never eats the budget of valid deliveries); the signature (HMAC-SHA256, compared in
constant time) and, where the scheme signs one, the timestamp (at most `tolerance_s`
off); the hook's rate limit; the replay id, unique per hook, inserted in the same
transaction as the job and the inbox item (a delivery is queued exactly once).

Modes (docs/automation.md has senders for each):

* `legion`: `X-Legion-Timestamp: UNIX`, `X-Legion-Delivery: ID`,
  `X-Legion-Signature: sha256=HEX` of `TIMESTAMP.ID.BODY`; the replay id is ID.
* `github`: `X-Hub-Signature-256: sha256=HEX` of the body. GitHub signs no timestamp,
  so staleness cannot be checked: the replay id is the signature itself (a body is
  accepted once per `replay_window_s`).
* `stripe`: `Stripe-Signature: t=UNIX,v1=HEX[,v1=...]` of `UNIX.BODY`; the replay id is
  the matching signature.

Secrets live in the vault as system-tier secrets named `webhook.NAME` (never resolvable
by an agent, masked in every output like any vault value). For `legion` and `github` the
host generates the secret (`generate_secret`) and the answer that made it shows it once
(the one field the control socket leaves unmasked: `legion.api.masking`); for `stripe` the
operator gives the endpoint's signing secret Stripe shows (`whsec_...`, checked by its
format, `legion.wire.rules.stripe_secret_problem`).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import apsw

from legion.api.http import Call, HttpServer, Response, Router
from legion.automation.signatures import Bucket, RateLimited, WebhookRefused, verify
from legion.errors import Conflict, InboxFull, LegionError, NotFound
from legion.wire.automation import (
    GeneratedHook,
    StripeHook,
    WebhookAccepted,
    WebhookInfo,
    WebhookJob,
    WebhookSecret,
)
from legion.wire.events import WebhookReceived
from legion.wire.fields import HookName, WebhookJobId

if TYPE_CHECKING:
    from legion.host import Host

log = logging.getLogger("legion.webhooks")

SENDER_PREFIX = "webhook:"
SECRET_PREFIX = "webhook."
DELIVERY_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
REFUSAL_FACTOR = 10  # the refusal budget is this many times the hook's rate
AUDIT_REFUSALS_EVERY_S = 60.0
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def secret_name(hook: str) -> str:
    return f"{SECRET_PREFIX}{hook}"


def generate_secret() -> str:
    """A new hook secret (`legion.wire.rules.GENERATED_SECRET_PATTERN`): 256 random bits."""
    return "lgwh_" + secrets.token_urlsafe(32)


@dataclass
class _Hook:
    name: str
    agent: str
    mode: str
    rate_per_min: float
    burst: int
    valid: Bucket
    refusals: Bucket
    refused_since_audit: int = 0
    audited_at: float = 0.0


class Webhooks:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.server: HttpServer | None = None
        self.address: tuple[str, int] | None = None
        self.hooks: dict[str, _Hook] = {}

    @property
    def config(self) -> Any:
        return self.host.config.automation.webhooks

    # --- lifecycle --------------------------------------------------------------------

    def load(self) -> None:
        self.hooks = {}
        for name, agent, mode, rate, burst in self.host.store.execute(
            "SELECT name, agent, mode, rate_per_min, burst FROM webhooks"
        ):
            self._cache(name, agent, mode, rate, burst)

    def _cache(
        self, name: str, agent: str, mode: str, rate: float | None, burst: int | None
    ) -> None:
        per_min = rate or self.config.rate_per_min
        size = burst or self.config.burst
        self.hooks[name] = _Hook(
            name,
            agent,
            mode,
            per_min,
            size,
            Bucket(per_min / 60.0, size),
            Bucket(per_min / 60.0 * REFUSAL_FACTOR, size * REFUSAL_FACTOR),
        )

    async def start(self) -> None:
        self.load()
        if not self.config.enabled:
            return
        # A 202 is sent once the delivery is on disk (group commit).
        self.server = HttpServer(
            max_body_bytes=self.config.max_body_bytes, durable=self.host.store.flush
        )
        self.address = await self.server.listen_tcp(
            self.config.bind, self.config.port, "webhook", self.router()
        )
        log.info("webhook listener open", extra={"fields": {"url": self.base_url()}})

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()
            self.server = None

    def base_url(self) -> str | None:
        if self.address is None:
            return None
        host, port = self.address
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"

    # --- operator ---------------------------------------------------------------------

    def info(self, name: str) -> WebhookInfo:
        row = self.host.store.execute(
            "SELECT name, agent, mode, created_at, rotated_at, deliveries, refused,"
            " last_delivery_at FROM webhooks WHERE name = ?",
            (name,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no webhook named {name!r}; `legion webhooks ls`", code="unknown_hook")
        hook = self.hooks[name]
        base = self.base_url()
        return WebhookInfo(
            name=row[0],
            agent=row[1],
            mode=row[2],
            url=f"{base}/hooks/{name}" if base else None,
            rate_per_min=hook.rate_per_min,
            burst=hook.burst,
            created_at=row[3],
            rotated_at=row[4],
            deliveries=row[5],
            refused=row[6] + hook.refused_since_audit,
            last_delivery_at=row[7],
        )

    def list_hooks(self) -> list[WebhookInfo]:
        return [self.info(name) for name in sorted(self.hooks)]

    def _store_secret(self, name: str, given: str | None) -> str | None:
        """Store `given` (Stripe's) or a new generated secret as the hook's; returns the
        generated one (None when `given`)."""
        generated = None if given is not None else generate_secret()
        secret = given if given is not None else generated
        assert secret is not None
        self.host.vault.set(secret_name(name), secret, tier="system")
        return generated

    def add(self, body: GeneratedHook | StripeHook) -> WebhookSecret:
        """Add a hook: its secret generated (`legion`, `github`; returned this once) or
        Stripe's signing secret (`stripe`; its format is the rule, and makes it maskable)."""
        from legion.api.agent import require_agent

        require_agent(self.host, body.agent)
        if body.name in self.hooks:
            raise Conflict(
                f"a webhook named {body.name!r} exists; `legion webhooks rotate` changes its "
                "secret, `rm` removes it",
                code="hook_exists",
            )
        generated = self._store_secret(
            body.name, body.secret if isinstance(body, StripeHook) else None
        )
        with self.host.store.tx() as conn:
            conn.execute(
                "INSERT INTO webhooks(name, agent, mode, rate_per_min, burst, created_at)"
                " VALUES (?,?,?,?,?,?)",
                (
                    body.name,
                    body.agent,
                    body.mode,
                    body.rate_per_min,
                    body.burst,
                    self.host.clock(),
                ),
            )
        self._cache(body.name, body.agent, body.mode, body.rate_per_min, body.burst)
        return WebhookSecret(**self.info(body.name).model_dump(), secret=generated)

    def rotate(self, name: str, stripe_secret: str | None) -> WebhookSecret:
        """A new secret for `name`: generated (returned this once), or for a `stripe` hook
        the one Stripe shows after "Roll secret". The old one stops working at once."""
        mode = self.info(name).mode
        if mode == "stripe" and stripe_secret is None:
            raise Conflict(
                f"webhook {name} is a stripe hook: its secret is the endpoint's signing "
                f"secret Stripe shows; `legion webhooks rotate {name}` reads the new one on "
                "a prompt or stdin",
                code="stripe_secret_required",
            )
        if mode != "stripe" and stripe_secret is not None:
            raise Conflict(
                f"webhook {name} ({mode}) has a secret the host generates; rotate it without "
                "one (`legion webhooks rotate NAME`)",
                code="secret_generated",
            )
        generated = self._store_secret(name, stripe_secret)
        with self.host.store.tx() as conn:
            conn.execute(
                "UPDATE webhooks SET rotated_at = ? WHERE name = ?", (self.host.clock(), name)
            )
        return WebhookSecret(**self.info(name).model_dump(), secret=generated)

    def remove(self, name: str) -> bool:
        with self.host.store.tx() as conn:
            conn.execute("DELETE FROM webhooks WHERE name = ?", (name,))
            removed = conn.changes() > 0
            conn.execute("DELETE FROM webhook_replays WHERE hook = ?", (name,))
        self.hooks.pop(name, None)
        self.host.vault.remove(secret_name(name))
        return removed

    def job(self, job_id: str, hook: str | None = None) -> WebhookJob:
        row = self.host.store.execute(
            "SELECT id, hook, agent, item_id, received_at, status, result, finished_at"
            " FROM webhook_jobs WHERE id = ?",
            (job_id,),
        ).fetchone()
        if row is None or (hook is not None and row[1] != hook):
            raise NotFound(f"no webhook job {job_id!r} (kept for a while only)", code="unknown_job")
        status = str(row[5])
        if status == "queued" and row[3] is not None:
            item = self.host.store.execute(
                "SELECT deliveries FROM inbox WHERE id = ?", (row[3],)
            ).fetchone()
            status = "done" if item is None else ("running" if item[0] else "queued")
        result = json.loads(self.host.redactor.redact(row[6])) if row[6] else None
        return WebhookJob(
            job=row[0],
            hook=row[1],
            agent=row[2],
            status=status,
            received_at=row[4],
            finished_at=row[7],
            result=result,
        )

    def finished(self, agent: str, item_id: int, result: dict[str, Any]) -> None:
        text = json.dumps(result, ensure_ascii=False, default=str)
        status = "failed" if result.get("error") else "done"  # the agent's turn failed
        with self.host.store.tx(durable=False) as conn:
            conn.execute(
                "UPDATE webhook_jobs SET status = ?, result = ?, finished_at = ?"
                " WHERE agent = ? AND item_id = ? AND status = 'queued'",
                (status, text, self.host.clock(), agent, item_id),
            )

    def prune(self) -> None:
        now = self.host.clock()
        keep_sig = now - self.config.replay_window_s
        with self.host.store.tx(durable=False) as conn:
            conn.execute(
                "DELETE FROM webhook_replays WHERE seen_at < ? AND (key LIKE 'sig:%' AND"
                " seen_at < ? OR key LIKE 'id:%')",
                (now - 2 * self.config.tolerance_s, keep_sig),
            )
            conn.execute(
                "DELETE FROM webhook_jobs WHERE received_at < ?",
                (now - self.config.result_retention_s,),
            )

    # --- the listener -----------------------------------------------------------------

    def router(self) -> Router:
        router = Router("legion webhooks")

        @router.route(
            "POST",
            "/hooks/{name}",
            response=WebhookAccepted,
            params={"name": HookName},
            links={
                "DeliveryResult": {
                    "operationId": "result",
                    "parameters": {"name": "$request.path.name", "job": "$response.body#/job"},
                }
            },
        )
        async def deliver(call: Call) -> WebhookAccepted | Response:
            """Queue a signed delivery for the hook's agent (202 with the job id)."""
            accepted = self.receive(call.params["name"], call.request.headers, call.request.body)
            return Response(202, accepted.model_dump_json().encode())

        @router.route(
            "GET",
            "/hooks/{name}/jobs/{job}",
            response=WebhookJob,
            params={"name": HookName, "job": WebhookJobId},
        )
        async def result(call: Call) -> WebhookJob:
            """A delivery's job: queued, running, done (with the agent's answer)."""
            return self.job(call.params["job"], call.params["name"])

        return router

    def _refused(self, hook: _Hook, exc: LegionError) -> None:
        hook.refused_since_audit += 1
        now = self.host.clock()
        self.host.bus.publish(
            WebhookReceived(
                at=now,
                hook=hook.name,
                agent=hook.agent,
                job=None,
                status="refused",
                reason=exc.code,
            )
        )
        if now - hook.audited_at >= AUDIT_REFUSALS_EVERY_S:  # one record a minute at most
            count, hook.refused_since_audit, hook.audited_at = hook.refused_since_audit, 0, now
            with self.host.store.tx(durable=False) as conn:
                conn.execute(
                    "UPDATE webhooks SET refused = refused + ? WHERE name = ?", (count, hook.name)
                )
            self.host.audit.append(
                "webhook", "webhook.refused", hook.name, "deny", reason=exc.code, count=count
            )

    def receive(self, name: str, headers: dict[str, str], body: bytes) -> WebhookAccepted:
        hook = self.hooks.get(name)
        if hook is None:
            raise NotFound(f"no webhook named {name!r}", code="unknown_hook")
        wait = hook.refusals.take()
        if wait:
            raise RateLimited(
                f"too many refused deliveries to {name}; retry in {wait:.0f}s",
                retry_after=math.ceil(wait),
            )
        now = self.host.clock()
        try:
            secret = self.host.vault.system_secret(secret_name(name))
            key, delivery = verify(hook.mode, secret, headers, body, now, self.config.tolerance_s)
        except NotFound:
            raise LegionError(
                f"webhook {name} has no secret in the vault; `legion webhooks rotate {name}`",
                code="hook_misconfigured",
                status=503,
            ) from None
        except WebhookRefused as exc:
            self._refused(hook, exc)
            raise
        hook.refusals.tokens += 1  # a valid delivery gives back the refusal token it took
        wait = hook.valid.take()
        if wait:
            raise RateLimited(
                f"webhook {name} takes {hook.rate_per_min:g} deliveries a minute; retry in "
                f"{wait:.0f}s",
                retry_after=math.ceil(wait),
            )
        if hook.agent not in self.host.config.agents:
            raise LegionError(
                f"webhook {name}'s agent {hook.agent} is no longer configured",
                code="hook_agent_gone",
                status=503,
            )
        return self._queue(hook, key, delivery, headers, body, now)

    def _queue(
        self, hook: _Hook, key: str, delivery: str, headers: dict[str, str], body: bytes, now: float
    ) -> WebhookAccepted:
        job_id = "wh_" + secrets.token_urlsafe(18)
        clean = self.host.redactor.redact_bytes(body)  # a vault value never enters host state
        try:
            text = clean.decode("utf-8")
            encoding = "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(clean).decode(), "base64"
        meta = {
            "hook": hook.name,
            "job": job_id,
            "delivery": delivery,
            "event": headers.get("x-github-event") or headers.get("x-legion-event") or "",
            "content_type": headers.get("content-type", "")[:100],
            "encoding": encoding,
            "received_at": now,
        }
        try:
            with self.host.store.tx() as conn:
                conn.execute(
                    "INSERT INTO webhook_replays(hook, key, seen_at) VALUES (?,?,?)",
                    (hook.name, key, now),
                )
                item_id = self.host.inboxes.send(
                    f"{SENDER_PREFIX}{hook.name}", hook.agent, {"webhook": meta, "untrusted": text}
                )
                conn.execute(
                    "INSERT INTO webhook_jobs(id, hook, agent, item_id, delivery, received_at,"
                    " status) VALUES (?,?,?,?,?,?, 'queued')",
                    (job_id, hook.name, hook.agent, item_id, delivery, now),
                )
                conn.execute(
                    "UPDATE webhooks SET deliveries = deliveries + 1, last_delivery_at = ?"
                    " WHERE name = ?",
                    (now, hook.name),
                )
        except apsw.ConstraintError:
            refusal = WebhookRefused(
                f"delivery {delivery!r} was received already: refused as a replay",
                code="replayed",
                status=409,
            )
            self._refused(hook, refusal)
            raise refusal from None
        except InboxFull as exc:
            raise LegionError(
                f"{hook.agent}'s inbox is full; retry later",
                code="inbox_full",
                status=503,
                retry_after=30,
            ) from exc
        self.host.audit.append(
            "webhook",
            "webhook.accepted",
            hook.name,
            "allow",
            agent=hook.agent,
            job=job_id,
            item=item_id,
        )
        self.host.bus.publish(
            WebhookReceived(at=now, hook=hook.name, agent=hook.agent, job=job_id, status="accepted")
        )
        return WebhookAccepted(job=job_id, result_url=f"/hooks/{hook.name}/jobs/{job_id}")
