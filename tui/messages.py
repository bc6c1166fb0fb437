"""Textual messages the TUI's workers post; `@on` handlers on screens own the state."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from textual.message import Message


class Connected(Message):
    """The HostClient is ready (attached or embedded)."""


@dataclass
class ConnectFailed(Message):
    error: str


@dataclass
class HostEvents(Message):
    """Typed host events, in order, as they arrived together (one batch per frame, and one
    batch in the app's queue at a time: `applied` tells the bridge it may send the next)."""

    events: list[Any] = field(default_factory=list)
    applied: Callable[[], None] | None = None


class HostGone(Message):
    """The host's event stream ended: the host stopped."""


@dataclass
class ActionDone(Message):
    """A host call made from a command or a key finished."""

    title: str
    ok: bool
    detail: str = ""
    show: bool = False  # show `detail` in a read-out instead of a notification


@dataclass
class Loaded(Message):
    """Data read from the host for a view: `kind` names it (agents, costs, blackboard...)."""

    kind: str
    data: Any = None
