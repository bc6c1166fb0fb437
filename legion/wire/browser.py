"""The browser: what an agent asks on its socket (`/v1/browser/<action>`), what the host and a
browser container say to each other on the container's control socket, and what the
operator sees on the control socket (`/v1/browsers/...`).

Page content (titles, snapshots, extracted text) is untrusted data: the host caps it and
the agent runtime marks it as such before a model reads it. Credentials appear only as
`$CRED{name}` handles in `TypeRequest.text`; the host substitutes them (only toward the
credential's bound hosts), and no snapshot, text or screenshot it hands back holds them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Every action an agent may use (`browser_actions` in its permissions names a subset).
ACTIONS = (
    "navigate",
    "snapshot",
    "click",
    "type",
    "select",
    "scroll",
    "back",
    "screenshot",
    "extract",
    "tabs",
    "request_human",
)
ActionName = Literal[
    "navigate",
    "snapshot",
    "click",
    "type",
    "select",
    "scroll",
    "back",
    "screenshot",
    "extract",
    "tabs",
    "request_human",
]
REF_PATTERN = r"^[a-z]{1,2}[0-9a-z]{0,14}$"  # e5, f1e3 (a frame's), as snapshots print them
Ref = Field(pattern=REF_PATTERN, max_length=16, description="A ref from the last snapshot.")


class _Action(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NavigateRequest(_Action):
    action: Literal["navigate"] = "navigate"
    url: str = Field(min_length=1, max_length=8192, description="An http:// or https:// URL.")


class SnapshotRequest(_Action):
    action: Literal["snapshot"] = "snapshot"


class ClickRequest(_Action):
    action: Literal["click"] = "click"
    ref: str = Ref


class TypeRequest(_Action):
    action: Literal["type"] = "type"
    ref: str = Ref
    text: str = Field(
        max_length=10_000,
        description="What to type (replaces the field's content); `$CRED{name}` handles are "
        "filled in by the host, only on a page of a host the credential is bound to.",
    )
    submit: bool = Field(default=False, description="Press Enter afterwards.")


class SelectRequest(_Action):
    action: Literal["select"] = "select"
    ref: str = Ref
    value: str = Field(max_length=1000, description="The option's value or label.")


class ScrollRequest(_Action):
    action: Literal["scroll"] = "scroll"
    direction: Literal["down", "up"] = "down"
    pages: float = Field(default=1.0, gt=0, le=20, description="Viewport heights to scroll.")
    ref: str | None = Field(
        default=None, pattern=REF_PATTERN, description="Scroll this element into view instead."
    )


class BackRequest(_Action):
    action: Literal["back"] = "back"


class ScreenshotRequest(_Action):
    action: Literal["screenshot"] = "screenshot"
    full_page: bool = False


class ExtractRequest(_Action):
    action: Literal["extract"] = "extract"
    ref: str | None = Field(
        default=None, pattern=REF_PATTERN, description="An element (default: the whole page)."
    )


class TabsRequest(_Action):
    action: Literal["tabs"] = "tabs"
    op: Literal["list", "switch", "new", "close"] = "list"
    index: int | None = Field(default=None, ge=0, le=100)
    url: str | None = Field(default=None, max_length=8192, description="For op=new.")


class HumanRequest(_Action):
    """Ask the operator to take over the browser (log in, solve a CAPTCHA)."""

    action: Literal["request_human"] = "request_human"
    reason: str = Field(min_length=1, max_length=2000)


class HumanWaitRequest(_Action):
    """Wait (long-poll) until the operator says the hand-off is done."""

    action: Literal["request_human"] = "request_human"
    wait_s: float = Field(default=25.0, ge=0, le=30)


class TabInfo(BaseModel):
    index: int
    url: str
    title: str
    active: bool


class BrowserResult(BaseModel):
    """The outcome of one action: where the browser is now, and what the action produced."""

    action: str
    url: str = ""
    title: str = ""
    note: str = Field(default="", description="What happened, for the model (dialogs, no-ops).")
    blocked: list[str] = Field(
        default_factory=list,
        description="Requests of the page the host's egress policy refused during the action.",
    )
    snapshot: str | None = None
    text: str | None = None
    truncated: bool = False
    png_base64: str | None = None
    width: int | None = None
    height: int | None = None
    tabs: list[TabInfo] | None = None


class HumanState(BaseModel):
    state: Literal["waiting", "done", "expired"]
    reason: str = ""
    note: str = ""


# --- the host and a browser container (control socket, one JSON object per line) ----------


class Hello(BaseModel):
    """The first line a browser container sends when it has connected."""

    type: Literal["hello"] = "hello"
    engine: str
    version: str
    pid: int


class Command(BaseModel):
    id: int
    action: str
    args: dict[str, Any] = Field(default_factory=dict)


class Fault(BaseModel):
    code: str
    message: str


class Outcome(BaseModel):
    id: int
    ok: bool
    result: dict[str, Any] | None = None
    error: Fault | None = None
    elapsed_ms: float = Field(default=0.0, description="Time spent in the browser itself.")


# --- the operator (control socket) --------------------------------------------------------


class BrowserInfo(BaseModel):
    agent: str
    enabled: bool = Field(description="can_use_browser is granted.")
    state: Literal["stopped", "starting", "running", "failed"]
    reason: str = ""
    url: str = ""
    title: str = ""
    last_action: str | None = None
    last_action_at: float | None = None
    waiting_for_human: bool = False
    human_reason: str = ""
    handoff_expires_at: float | None = None
    container_id: str | None = None


class BrowserList(BaseModel):
    browsers: list[BrowserInfo]
    running: int
    max_running: int


class Handoff(BaseModel):
    """A VNC link to watch or drive an agent's browser, valid until `expires_at`."""

    agent: str
    link: str = Field(description="noVNC on 127.0.0.1 with a one-session token.")
    ssh_hint: str = Field(description="How to open the link from a laptop.")
    port: int
    expires_at: float


class DoneRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str = Field(default="", max_length=2000, description="Told to the agent.")
