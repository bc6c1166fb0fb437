"""Webhook signatures: HMAC-SHA256 in the legion, GitHub and Stripe schemes, compared in
constant time; and the token bucket of the per-hook rate limits. Pure functions of the
secret, the headers and the raw body (see `legion.automation.webhooks`)."""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from dataclasses import dataclass, field

from legion.errors import LegionError

DELIVERY_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class WebhookRefused(LegionError):
    status = 401
    code = "bad_signature"


class RateLimited(LegionError):
    status = 429
    code = "rate_limited"


def sign(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def legion_signature(secret: str, timestamp: int, delivery: str, body: bytes) -> str:
    """What a sender puts in X-Legion-Signature (after `sha256=`)."""
    return sign(secret, f"{timestamp}.{delivery}.".encode() + body)


def _timestamp(raw: str, now: float, tolerance: float) -> int:
    if not raw.isascii() or not raw.isdigit() or len(raw) > 12:
        raise WebhookRefused("the timestamp is not a whole number of Unix seconds")
    ts = int(raw)
    if abs(now - ts) > tolerance:
        raise WebhookRefused(
            f"the timestamp is {now - ts:+.0f}s off the host's clock (more than "
            f"{tolerance:.0f}s): refused as stale; sign with the current time",
            code="stale_timestamp",
        )
    return ts


def verify(
    mode: str, secret: str, headers: dict[str, str], body: bytes, now: float, tolerance: float
) -> tuple[str, str]:
    """(replay key, delivery id) of a request signed with `secret`, or WebhookRefused."""
    if mode == "github":
        given = headers.get("x-hub-signature-256", "")
        if not given.startswith("sha256="):
            raise WebhookRefused("missing X-Hub-Signature-256: sha256=HEX", code="no_signature")
        digest = given[7:].lower()
        if not _HEX64.match(digest) or not hmac.compare_digest(digest, sign(secret, body)):
            raise WebhookRefused("X-Hub-Signature-256 does not match the body")
        return f"sig:{digest}", headers.get("x-github-delivery", "")[:128] or digest[:32]
    if mode == "stripe":
        parts: dict[str, list[str]] = {}
        for piece in headers.get("stripe-signature", "").split(","):
            key, _, value = piece.strip().partition("=")
            parts.setdefault(key, []).append(value)
        if "t" not in parts or "v1" not in parts:
            raise WebhookRefused("missing Stripe-Signature: t=...,v1=...", code="no_signature")
        ts = _timestamp(parts["t"][0], now, tolerance)
        expected = sign(secret, f"{ts}.".encode() + body)
        for candidate in parts["v1"]:
            if hmac.compare_digest(candidate.lower().encode(), expected.encode()):
                return f"sig:{expected}", f"stripe-{ts}-{expected[:16]}"
        raise WebhookRefused("no v1 signature in Stripe-Signature matches the body")
    raw_ts = headers.get("x-legion-timestamp")
    delivery = headers.get("x-legion-delivery", "")
    given = headers.get("x-legion-signature", "")
    if raw_ts is None or not given.startswith("sha256="):
        raise WebhookRefused(
            "missing X-Legion-Timestamp or X-Legion-Signature: sha256=HEX", code="no_signature"
        )
    if not DELIVERY_RE.match(delivery):
        raise WebhookRefused(
            "X-Legion-Delivery must be 1-128 characters of letters, digits and ._:-",
            code="bad_delivery_id",
            status=400,
        )
    ts = _timestamp(raw_ts, now, tolerance)
    digest = given[7:].lower()
    if not _HEX64.match(digest) or not hmac.compare_digest(
        digest, legion_signature(secret, ts, delivery, body)
    ):
        raise WebhookRefused("X-Legion-Signature does not match timestamp.delivery.body")
    return f"id:{delivery}", delivery


@dataclass
class Bucket:
    """A token bucket: `rate` tokens a second, at most `burst` saved up."""

    rate: float
    burst: float
    tokens: float = -1.0
    at: float = field(default_factory=time.monotonic)

    def take(self) -> float:
        """0 when a token was taken, else the seconds until one is there."""
        now = time.monotonic()
        if self.tokens < 0:
            self.tokens = self.burst
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate
