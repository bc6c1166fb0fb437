"""Bodies of the kill switch on the control socket: pause and resume LLM dispatch."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from legion.wire.fields import AgentName

REASON_MAX = 500


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class PauseAgent(_Strict):
    """One agent."""

    agent: AgentName
    reason: str = Field(default="", max_length=REASON_MAX, description="Told to refused calls.")


class PauseFleet(_Strict):
    """The whole fleet (agents added later too)."""

    all: Literal[True]
    reason: str = Field(default="", max_length=REASON_MAX, description="Told to refused calls.")


class PauseRequest(RootModel[PauseAgent | PauseFleet]):
    """`{"agent": NAME}` or `{"all": true}`, with an optional `reason` (pause only)."""


class PausedAgent(BaseModel):
    agent: str = Field(description="The agent, or `*` for the whole fleet.")
    since: float
    by: str
    reason: str


class PauseState(BaseModel):
    fleet: bool = Field(description="The whole fleet is paused (agents added later too).")
    paused: list[str] = Field(description="Every configured agent whose calls are refused now.")
    pauses: list[PausedAgent] = Field(description="The stored pauses, as the operator set them.")
    cut: int = Field(default=0, description="Calls in flight this request cut.")
    in_flight: int = Field(default=0, description="LLM calls in flight now, fleet-wide.")
