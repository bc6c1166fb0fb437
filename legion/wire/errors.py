"""The typed JSON error every legion API returns."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    """What went wrong: a stable machine code, a sentence for people, and context."""

    code: str = Field(description="Stable machine-readable error code, e.g. `version_conflict`.")
    message: str = Field(description="What went wrong and how to fix it, for people.")
    status: int = Field(description="The HTTP status code, repeated for clients that lose it.")
    detail: dict[str, Any] = Field(default_factory=dict, description="Structured context.")


class ErrorBody(BaseModel):
    """Body of every non-2xx response."""

    error: ErrorDetail
