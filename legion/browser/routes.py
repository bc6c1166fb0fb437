"""The browser routes: an agent's `/v1/browser/<action>` and the operator's `/v1/browsers/...`.

Appended to the agent socket's and the control socket's tables (like the automation
routes). Each action's body is a strict model of `legion.wire.browser` that states its
rules (URLs by the egress URL rule, refs by the snapshot's ref pattern, enums, sizes); the
operator's routes type `{name}` as an agent name and check it with the same rule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel

from legion.api.http import Call, Policy, Router
from legion.errors import BadRequest
from legion.mesh.permissions import Perm
from legion.wire.browser import (
    BackRequest,
    BrowserInfo,
    BrowserList,
    BrowserResult,
    ClickRequest,
    DoneRequest,
    ExtractRequest,
    Handoff,
    HumanRequest,
    HumanState,
    HumanWaitRequest,
    NavigateRequest,
    ScreenshotRequest,
    ScrollRequest,
    SelectRequest,
    SnapshotRequest,
    TabsRequest,
    TypeRequest,
)
from legion.wire.fields import AgentName
from legion.wire.rules import name_problem

if TYPE_CHECKING:
    from legion.host import Host

BROWSER_ACTIONS: list[tuple[str, type[BaseModel]]] = [
    ("navigate", NavigateRequest),
    ("snapshot", SnapshotRequest),
    ("click", ClickRequest),
    ("type", TypeRequest),
    ("select", SelectRequest),
    ("scroll", ScrollRequest),
    ("back", BackRequest),
    ("screenshot", ScreenshotRequest),
    ("extract", ExtractRequest),
    ("tabs", TabsRequest),
]
NAME_PARAM = {"name": AgentName}


def add_agent_routes(router: Router, host: Host) -> None:
    """`/v1/browser/<action>`: the caller's own browser (started on first use). Policy:
    `can_use_browser`, narrowed by `browser_actions`; the target is the action."""
    browser = Policy(Perm.BROWSER.value, "action", "browser")

    for name, model in BROWSER_ACTIONS:

        async def act(call: Call) -> BrowserResult:
            return await host.browsers.act(call.principal, call.body)

        act.__name__ = f"browser_{name}"
        act.__doc__ = f"Browser: {name} (see legion.wire.browser.{model.__name__})."
        # Browser actions make web traffic: the egress bucket.
        router.route(
            "POST",
            f"/v1/browser/{name}",
            body=model,
            response=BrowserResult,
            policy=browser,
            rate="egress",
        )(act)

    @router.route(
        "POST",
        "/v1/browser/request_human",
        body=HumanRequest,
        response=HumanState,
        policy=browser,
        rate="write",
    )
    async def browser_request_human(call: Call) -> HumanState:
        """Ask the operator to take over the browser; then wait with /v1/browser/wait_human."""
        body: HumanRequest = call.body
        return await host.browsers.request_human(call.principal, body.reason)

    @router.route(
        "POST",
        "/v1/browser/wait_human",
        body=HumanWaitRequest,
        response=HumanState,
        policy=browser,
        rate="poll",
        cancel_on_disconnect=True,
    )
    async def browser_wait_human(call: Call) -> HumanState:
        """Long-poll until the operator ends the hand-off (`legion browser done`)."""
        body: HumanWaitRequest = call.body
        return await host.browsers.wait_human(call.principal, body.wait_s)


def _agent(host: Host, call: Call) -> str:
    name = call.params["name"]
    problem = name_problem(name)
    if problem is not None:
        raise BadRequest(problem, code="invalid_name")
    host.browsers.slot(name)  # 404 for an agent that is not configured
    return name


def add_control_routes(router: Router, host: Host) -> None:
    """The operator's view of the agents' browsers, and the human hand-off."""

    @router.route("GET", "/v1/browsers", response=BrowserList)
    async def browsers(call: Call) -> BrowserList:
        """Every agent's browser: state, URL, title, last action, waiting for a human."""
        return host.browsers.list()

    @router.route("POST", "/v1/browsers/{name}/handoff", response=Handoff, params=NAME_PARAM)
    async def browser_handoff(call: Call) -> Handoff:
        """A VNC link (noVNC on 127.0.0.1, expiring token) to an agent's browser; starts the
        browser when it is not running."""
        name = _agent(host, call)
        return await host.browsers.handoffs.open(name, call.principal)

    @router.route(
        "POST",
        "/v1/browsers/{name}/done",
        body=DoneRequest,
        response=BrowserInfo,
        params=NAME_PARAM,
    )
    async def browser_done(call: Call) -> BrowserInfo:
        """End the hand-off: the VNC links stop working and the waiting agent resumes."""
        body: DoneRequest = call.body
        return await host.browsers.done(_agent(host, call), body.note, call.principal)

    @router.route("POST", "/v1/browsers/{name}/stop", response=BrowserInfo, params=NAME_PARAM)
    async def browser_stop(call: Call) -> BrowserInfo:
        """Stop an agent's browser container (the next action starts it again)."""
        name = _agent(host, call)
        host.audit.append(call.principal, "browser.stop", name, "allow", reason="operator")
        await host.browsers.stop(name, "stopped by the operator")
        return host.browsers.info(name)
