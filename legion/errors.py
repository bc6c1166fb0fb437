"""Typed errors. Every API error becomes a JSON `ErrorBody` with its status code."""

from __future__ import annotations

from typing import Any

from legion.wire.errors import ErrorBody, ErrorDetail


class LegionError(Exception):
    """An error with a stable code, an HTTP status and a message that says how to fix it."""

    status = 400
    code = "bad_request"

    def __init__(
        self, message: str, *, code: str | None = None, status: int | None = None, **detail: Any
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.detail = detail

    def body(self) -> ErrorBody:
        return ErrorBody(
            error=ErrorDetail(
                code=self.code, message=self.message, status=self.status, detail=self.detail
            )
        )


class BadRequest(LegionError):
    status = 400
    code = "bad_request"


class Forbidden(LegionError):
    status = 403
    code = "forbidden"


class NotFound(LegionError):
    status = 404
    code = "not_found"


class Conflict(LegionError):
    status = 409
    code = "conflict"


class Locked(LegionError):
    status = 423
    code = "claimed"


class TooLarge(LegionError):
    status = 413
    code = "too_large"


class InboxFull(LegionError):
    status = 507
    code = "inbox_full"


class ConfigError(Exception):
    """A config file is invalid; `problems` lists every problem, each with where and how to fix."""

    def __init__(self, path: str, problems: list[str]) -> None:
        super().__init__(f"{path}: {len(problems)} problem(s)")
        self.path = path
        self.problems = problems

    def render(self) -> str:
        return "\n".join(self.problems)
