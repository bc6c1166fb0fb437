"""Routes of an agent's socket. The caller is always the socket's owner (`call.principal`).

Each route declares its policy in the table below; the server authorizes and
audits it before the handler runs.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from legion.api.http import Call, Policy, Response, Router, StreamResponse
from legion.automation.routes import add_agent_routes as add_automation_routes
from legion.errors import InboxFull, NotFound
from legion.mesh.permissions import Perm
from legion.wire.agent import (
    WORKSPACE_FILE_CAPS,
    NotifyAccepted,
    NotifyRequest,
    ReplyAccepted,
    ReplyRequest,
    SelfStatus,
    WorkspaceUpdate,
    WorkspaceUpdated,
)
from legion.wire.api import (
    AckRequest,
    AckResponse,
    BlackboardCas,
    BlackboardDeleted,
    BlackboardEntry,
    BlackboardList,
    BlackboardPut,
    ChatRequest,
    Claim,
    ClaimRequest,
    EmbeddingRequest,
    HeartbeatRequest,
    HeartbeatResponse,
    Identity,
    MessageQueued,
    MessageRequest,
    ModelList,
    PollRequest,
    PollResponse,
    Published,
    PublishRequest,
    Released,
    ReleaseRequest,
    SubscribeRequest,
    Subscriptions,
    WatchRequest,
    WatchResponse,
)
from legion.wire.browser import (
    BackRequest,
    BrowserResult,
    ClickRequest,
    ExtractRequest,
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
from legion.wire.egress import EgressRequest, EgressResponse
from legion.wire.events import AgentHeartbeat, AgentNotification, InboxRefused
from legion.wire.fields import BlackboardKey
from legion.wire.mcp import McpCallRequest, McpCallResult, McpList, McpStatusReport
from legion.wire.spawn import SpawnRequest, SpawnResult

if TYPE_CHECKING:
    from legion.host import Host

READ = Perm.BB_READ.value
WRITE = Perm.BB_WRITE.value
KEY_PARAM = {"key": BlackboardKey}

# OpenAPI links (stateful clients and test generators follow them): what one response
# gives the next request. A put's version feeds a compare-and-swap; a poll's ids feed an ack.
_KEY_OF_PUT = {"key": "$request.path.key"}
PUT_LINKS = {
    "GetWritten": {"operationId": "bb_get", "parameters": _KEY_OF_PUT},
    "SwapWritten": {
        "operationId": "bb_cas",
        "requestBody": {"key": "$request.path.key", "expected_version": "$response.body#/version"},
    },
    "ClaimWritten": {"operationId": "bb_claim", "requestBody": {"key": "$request.path.key"}},
    "DeleteWritten": {"operationId": "bb_delete", "parameters": _KEY_OF_PUT},
}
CAS_LINKS = {
    "GetSwapped": {"operationId": "bb_get", "parameters": {"key": "$response.body#/key"}},
    "SwapAgain": {
        "operationId": "bb_cas",
        "requestBody": {
            "key": "$response.body#/key",
            "expected_version": "$response.body#/version",
        },
    },
}
CLAIM_LINKS = {
    "WriteClaimed": {"operationId": "bb_put", "parameters": {"key": "$response.body#/key"}},
    "ReleaseClaimed": {"operationId": "bb_release", "requestBody": {"key": "$response.body#/key"}},
}
WATCH_LINKS = {
    "WatchOn": {
        "operationId": "bb_watch",
        "requestBody": {"pattern": "$request.body#/pattern", "cursor": "$response.body#/cursor"},
    }
}


def build_shared_routes(router: Router, host: Host) -> None:
    """Routes both kinds of socket serve: OpenAPI, blackboard, direct messages."""
    bb = host.blackboard

    document: list[tuple[str, bytes]] = []  # (configuration, document), built on first use

    @router.route("GET", "/v1/openapi.json", rate="read")
    async def openapi(call: Call) -> Response:
        """This socket's OpenAPI document, with this host's limits."""
        # Examples of agent names: the ones the caller may message (all, for the operator).
        names = [
            name
            for name in sorted(host.config.agents)
            if name != call.principal
            and host.permissions.allows(call.principal, Perm.MESSAGE, name)
        ]
        configured: dict[str, Any] = {"max_key_length": bb.config.max_key_length}
        if names:
            configured["agent_names"] = names
        # Built once per configuration: it takes milliseconds, and any agent may ask for it
        # in a loop.
        key = json.dumps(configured, sort_keys=True)
        if not document or document[0][0] != key:
            document[:] = [(key, json.dumps(router.openapi(configured)).encode())]
        return Response(200, document[0][1])

    @router.route(
        "POST",
        "/v1/messages",
        body=MessageRequest,
        response=MessageQueued,
        policy=Policy(Perm.MESSAGE.value, "to", "message"),
        links={
            "AckMessage": {
                "operationId": "inbox_ack",
                "requestBody": {"ids": ["$response.body#/item_id"]},
            }
        },
        rate="write",
    )
    async def send_message(call: Call) -> MessageQueued:
        """Put a message in an agent's inbox (the sender is the socket's owner)."""
        body: MessageRequest = call.body
        return MessageQueued(to=body.to, item_id=host.send(call.principal, body.to, body.payload))

    @router.route(
        "GET",
        "/v1/blackboard/entries/{key:path}",
        response=BlackboardEntry,
        policy=Policy(READ, "key", "bb.get"),
        params=KEY_PARAM,
        rate="read",
    )
    async def bb_get(call: Call) -> BlackboardEntry:
        """Read one key (404 when absent or expired)."""
        return bb.require(call.params["key"])

    @router.route(
        "PUT",
        "/v1/blackboard/entries/{key:path}",
        body=BlackboardPut,
        response=BlackboardEntry,
        policy=Policy(WRITE, "key", "bb.put"),
        params=KEY_PARAM,
        links=PUT_LINKS,
        rate="write",
    )
    async def bb_put(call: Call) -> BlackboardEntry:
        """Write one key; bumps its version."""
        body: BlackboardPut = call.body
        return bb.put(call.params["key"], body.value, call.principal, ttl_s=body.ttl_s)

    @router.route(
        "DELETE",
        "/v1/blackboard/entries/{key:path}",
        response=BlackboardDeleted,
        policy=Policy(WRITE, "key", "bb.delete"),
        params=KEY_PARAM,
        rate="write",
    )
    async def bb_delete(call: Call) -> BlackboardDeleted:
        """Delete one key."""
        key = call.params["key"]
        return BlackboardDeleted(key=key, deleted=bb.delete(key, call.principal))

    @router.route(
        "GET",
        "/v1/blackboard/entries",
        response=BlackboardList,
        query={"prefix": str},
        rate="read",
    )
    async def bb_list(call: Call) -> BlackboardList:
        """List live keys under `?prefix=` that the caller may read."""
        prefix = call.request.query.get("prefix", "")
        entries = bb.entries(prefix, readable=host.readable_by(call.principal))
        host.audit.append(call.principal, "bb.list", prefix, "allow", returned=len(entries))
        return BlackboardList(entries=entries)

    @router.route(
        "POST",
        "/v1/blackboard/cas",
        body=BlackboardCas,
        response=BlackboardEntry,
        policy=Policy(WRITE, "key", "bb.cas"),
        links=CAS_LINKS,
        rate="write",
    )
    async def bb_cas(call: Call) -> BlackboardEntry:
        """Compare-and-swap: write only if the key is at `expected_version` (0: absent)."""
        body: BlackboardCas = call.body
        return bb.put(
            body.key,
            body.value,
            call.principal,
            ttl_s=body.ttl_s,
            expected_version=body.expected_version,
        )

    @router.route(
        "POST",
        "/v1/blackboard/claim",
        body=ClaimRequest,
        response=Claim,
        policy=Policy(WRITE, "key", "bb.claim"),
        links=CLAIM_LINKS,
        rate="write",
    )
    async def bb_claim(call: Call) -> Claim:
        """Claim a key (423 while another holder's claim is live)."""
        body: ClaimRequest = call.body
        return bb.claim(body.key, call.principal, body.ttl_s)

    @router.route(
        "POST",
        "/v1/blackboard/release",
        body=ReleaseRequest,
        response=Released,
        policy=Policy(WRITE, "key", "bb.release"),
        rate="write",
    )
    async def bb_release(call: Call) -> Released:
        """Release the caller's claim on a key."""
        body: ReleaseRequest = call.body
        return Released(key=body.key, released=bb.release(body.key, call.principal))

    @router.route(
        "POST",
        "/v1/blackboard/watch",
        body=WatchRequest,
        response=WatchResponse,
        links=WATCH_LINKS,
        rate="poll",
        cancel_on_disconnect=True,
    )
    async def bb_watch(call: Call) -> WatchResponse:
        """Long-poll for changes to keys matching a glob, after a cursor."""
        body: WatchRequest = call.body  # the model checked the pattern (rules.glob_problem)
        host.audit.append(call.principal, "bb.watch", body.pattern, "allow", cursor=body.cursor)
        wait = min(body.wait_s, host.config.host.long_poll_max_s)
        return await bb.watch(
            body.pattern, body.cursor, wait, readable=host.readable_by(call.principal)
        )


def build_agent_router(host: Host, agent: str) -> Router:
    router = Router(f"legion agent socket ({agent})")
    build_shared_routes(router, host)
    inboxes = host.inboxes
    # One workspace write in flight per agent: a flood of them holds one worker thread,
    # not the host's whole default pool (invariant 10).
    workspace_lock = asyncio.Lock()

    @router.route("GET", "/v1/whoami", response=Identity, rate="read")
    async def whoami(call: Call) -> Identity:
        """Who the host believes the caller is (from the socket alone)."""
        cfg = host.config.agents.get(call.principal)
        return Identity(
            agent=call.principal, role=cfg.role if cfg else None, team=cfg.team if cfg else None
        )

    @router.route(
        "POST",
        "/v1/publish",
        body=PublishRequest,
        response=Published,
        policy=Policy(Perm.PUBLISH.value, "topic", "publish"),
        rate="write",
    )
    async def publish(call: Call) -> Published:
        """Publish to a topic: one inbox item per permitted subscriber, or none."""
        body: PublishRequest = call.body
        try:
            recipients = inboxes.publish(
                call.principal,
                body.topic,
                body.payload,
                deliver=lambda a: host.permissions.allows(a, Perm.SUBSCRIBE, body.topic),
            )
        except InboxFull as exc:
            full = list(exc.detail.get("full", []))
            host.audit.append(
                call.principal,
                "publish.refused",
                body.topic,
                "deny",
                reason="inbox_full",
                full=full,
            )
            host.bus.publish(
                InboxRefused(at=time.time(), sender=call.principal, full=full, topic=body.topic)
            )
            raise
        return Published(topic=body.topic, delivered_to=recipients)

    @router.route(
        "POST",
        "/v1/subscriptions",
        body=SubscribeRequest,
        response=Subscriptions,
        policy=Policy(Perm.SUBSCRIBE.value, "topic", "subscribe"),
        links={
            "Unsubscribe": {
                "operationId": "unsubscribe",
                "requestBody": {"topic": "$request.body#/topic"},
            }
        },
        rate="write",
    )
    async def subscribe(call: Call) -> Subscriptions:
        """Subscribe the caller to a topic or topic glob."""
        body: SubscribeRequest = call.body
        return Subscriptions(topics=inboxes.subscribe(call.principal, body.topic))

    @router.route(
        "DELETE", "/v1/subscriptions", body=SubscribeRequest, response=Subscriptions, rate="write"
    )
    async def unsubscribe(call: Call) -> Subscriptions:
        """Remove one of the caller's subscriptions."""
        body: SubscribeRequest = call.body
        return Subscriptions(topics=inboxes.unsubscribe(call.principal, body.topic))

    @router.route("GET", "/v1/subscriptions", response=Subscriptions, rate="read")
    async def subscriptions(call: Call) -> Subscriptions:
        """The caller's subscriptions."""
        return Subscriptions(topics=inboxes.subscriptions(call.principal))

    @router.route(
        "POST",
        "/v1/inbox/poll",
        body=PollRequest,
        response=PollResponse,
        links={
            "AckPolled": {
                "operationId": "inbox_ack",
                "requestBody": {"ids": ["$response.body#/items/0/id"]},
            },
            "ReplyPolled": {
                "operationId": "reply",
                "requestBody": {"in_reply_to": "$response.body#/items/0/id"},
            },
        },
        rate="poll",
        cancel_on_disconnect=True,
    )
    async def inbox_poll(call: Call) -> PollResponse:
        """Receive inbox items, long-polling up to `wait_s`; ack them when handled."""
        body: PollRequest = call.body
        host.last_poll[call.principal] = host.touch(call.principal)
        if body.ack:
            inboxes.ack(call.principal, body.ack)
        wait = min(body.wait_s, host.config.host.long_poll_max_s)
        items = await inboxes.poll(call.principal, body.max_items, wait)
        if items:  # a client gone before the answer could be written gets nothing
            call.if_undelivered(lambda: inboxes.requeue(call.principal, items))
        return PollResponse(items=items)

    @router.route("POST", "/v1/inbox/ack", body=AckRequest, response=AckResponse, rate="write")
    async def inbox_ack(call: Call) -> AckResponse:
        """Acknowledge handled items; unacked items are delivered again."""
        body: AckRequest = call.body
        return AckResponse(acked=inboxes.ack(call.principal, body.ids))

    @router.route("POST", "/v1/chat/completions", body=ChatRequest, rate="llm")
    async def chat_completions(call: Call) -> Response | StreamResponse:
        """OpenAI-compatible chat completions (streaming or not), budgeted and audited."""
        return await host.gateway.chat(call.principal, call.body)

    @router.route("POST", "/v1/embeddings", body=EmbeddingRequest, rate="llm")
    async def embeddings(call: Call) -> Response:
        """OpenAI-compatible embeddings, budgeted and audited."""
        return await host.gateway.embeddings(call.principal, call.body)

    @router.route(
        "POST", "/egress/http", body=EgressRequest, response=EgressResponse, rate="egress"
    )
    async def egress_http(call: Call) -> EgressResponse:
        """An HTTP request made by the host for the agent: address checks, $CRED{} handles
        substituted toward bound hosts only, response scrubbed of secrets, audited."""
        return await host.egress.request(call.principal, call.body)

    @router.route("GET", "/v1/self", response=SelfStatus, rate="read")
    async def self_status(call: Call) -> SelfStatus:
        """The caller's own configuration, permissions, budget left and reachable fleet."""
        return host.self_status(call.principal)

    @router.route("POST", "/v1/replies", body=ReplyRequest, response=ReplyAccepted, rate="write")
    async def reply(call: Call) -> ReplyAccepted:
        """Answer an inbox item; an agent that asked gets the answer in its inbox."""
        return host.reply(call.principal, call.body)

    @router.route("POST", "/v1/notify", body=NotifyRequest, response=NotifyAccepted, rate="write")
    async def notify(call: Call) -> NotifyAccepted:
        """Tell the operator something (an event the TUI and `legion events` show)."""
        body: NotifyRequest = call.body
        host.audit.append(call.principal, "notify", "operator", "allow", level=body.level)
        host.bus.publish(
            AgentNotification(
                at=host.clock(), agent=call.principal, text=body.text, level=body.level
            )
        )
        return NotifyAccepted()

    @router.route(
        "PUT", "/v1/workspace/{file}", body=WorkspaceUpdate, response=WorkspaceUpdated, rate="write"
    )
    async def workspace_update(call: Call) -> WorkspaceUpdated:
        """Replace or append to USER.md, MEMORY.md or HEARTBEAT.md (the agent's
        `update_workspace`); each change is kept as a version the operator can restore.
        SOUL.md and INSTRUCTIONS.md are the operator's (403)."""
        from legion.errors import LegionError
        from legion.fleet.identity import AgentFiles

        name, body = call.params["file"], call.body
        assert isinstance(body, WorkspaceUpdate)
        files = AgentFiles.of(host.paths, call.principal, host.clock)
        try:
            async with workspace_lock:
                version = await asyncio.to_thread(
                    files.update, name, body.content, body.mode, call.principal
                )
        except LegionError as exc:
            host.audit.append(call.principal, "workspace.update", name, "deny", code=exc.code)
            raise
        host.audit.append(
            call.principal, "workspace.update", name, "allow", version=version.version
        )
        cap = WORKSPACE_FILE_CAPS[name]
        return WorkspaceUpdated(file=name, version=version.version, bytes=version.bytes, cap=cap)

    @router.route(
        "POST", "/v1/heartbeat", body=HeartbeatRequest, response=HeartbeatResponse, rate="read"
    )
    async def heartbeat(call: Call) -> HeartbeatResponse:
        """Tell the host the agent is alive."""
        body: HeartbeatRequest = call.body
        at = host.touch(call.principal)
        host.bus.publish(AgentHeartbeat(at=at, agent=call.principal, status=body.status))
        return HeartbeatResponse(agent=call.principal, at=at)

    @router.route("GET", "/v1/models", response=ModelList, rate="read")
    async def list_models(call: Call) -> ModelList:
        """OpenAI-compatible: the models the caller may use, with their context window and
        output limit under `legion` (its own models only: nothing to authorize)."""
        return await host.gateway.models(call.principal)

    # --- MCP (docs/mcp.md) --------------------------------------------------------------

    @router.route("GET", "/v1/mcp/servers", response=McpList, rate="read")
    async def mcp_servers(call: Call) -> McpList:
        """The remote MCP servers the caller may use (`allowed_mcp`), their state and tools
        (descriptions cleaned and capped: third-party text)."""
        allowed = lambda name: host.permissions.allows(call.principal, Perm.MCP, name)  # noqa: E731
        return McpList(servers=host.mcp.for_agent(allowed))

    @router.route(
        "POST",
        "/v1/mcp/call",
        body=McpCallRequest,
        response=McpCallResult,
        policy=Policy(Perm.MCP.value, "server", "mcp.call"),
        rate="egress",
    )
    async def mcp_call(call: Call) -> McpCallResult:
        """Call a tool of a remote MCP server; the host connects to it and sends its
        credential, never the agent. The outcome is audited (`mcp.result`)."""
        body: McpCallRequest = call.body
        return await host.mcp.call(call.principal, body.server, body.tool, body.arguments)

    @router.route(
        "POST",
        "/v1/agents/spawn",
        body=SpawnRequest,
        response=SpawnResult,
        policy=Policy(Perm.SPAWN.value, "role", "agent.spawn"),
        rate="write",
    )
    async def spawn_agent(call: Call) -> SpawnResult:
        """Start an ephemeral sub-agent for one task (`can_spawn`): the parent's team,
        permissions within the parent's, a budget carved out of the parent's, a TTL; its
        result comes back to the caller's inbox as a `task_result`."""
        return await host.spawner.spawn(call.principal, call.body)

    @router.route("POST", "/v1/mcp/status", body=McpStatusReport, response=McpList, rate="write")
    async def mcp_status(call: Call) -> McpList:
        """The runtime's report of the local (stdio) MCP servers it runs, for `legion mcp
        ls`; stored as the agent's own account (nothing is decided from it)."""
        body: McpStatusReport = call.body
        for server in body.servers:
            server.kind, server.agent = "stdio", call.principal
        host.mcp_reports[call.principal] = body
        return McpList(servers=body.servers)

    add_automation_routes(router, host)  # cron_*, steer (legion/automation/routes.py)
    build_browser_routes(router, host)
    return router


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


def build_browser_routes(router: Router, host: Host) -> None:
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


def require_agent(host: Host, name: str) -> None:
    if name not in host.config.agents:
        raise NotFound(
            f"no agent named {name!r}; configured: {', '.join(host.config.agents)}",
            code="unknown_agent",
            agent=name,
        )
