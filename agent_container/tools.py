"""The tool registry and the built-in tools.

Each tool has a JSON schema (OpenAI `tools` format) and an async handler returning text.
A tool that fails returns `error: ...` to the model; it never crashes the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agent_container.client import MeshClient, MeshError
from agent_container.workspace import Workspace, WorkspaceError

OUTPUT_CAP = 64 * 1024
COMMAND_TIMEOUT_S = 30.0
COMMAND_TIMEOUT_MAX_S = 300.0

Handler = Callable[[dict[str, Any]], Awaitable[str]]


@dataclass
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    handler: Handler

    def schema(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


def _obj(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required}


STR = {"type": "string"}
ANY: dict[str, Any] = {}


@dataclass
class Registry:
    tools: dict[str, Tool] = field(default_factory=dict)

    def add(self, tool: Tool) -> None:
        self.tools[tool.name] = tool

    def schemas(self) -> list[dict[str, Any]]:
        return [t.schema() for t in self.tools.values()]

    async def run(self, name: str, arguments: str | dict[str, Any]) -> str:
        tool = self.tools.get(name)
        if tool is None:
            return f"error: no tool named {name!r}; available: {', '.join(self.tools)}"
        try:
            args = json.loads(arguments) if isinstance(arguments, str) else arguments
            if not isinstance(args, dict):
                raise ValueError("arguments must be a JSON object")
        except ValueError as exc:
            return f"error: arguments of {name} are not a JSON object: {exc}"
        missing = [k for k in tool.parameters.get("required", []) if k not in args]
        if missing:
            return f"error: {name} needs {', '.join(missing)}"
        try:
            return await tool.handler(args)
        except MeshError as exc:
            return f"error: the host refused: {exc}"
        except (WorkspaceError, OSError, ValueError, TypeError, KeyError) as exc:
            return f"error: {exc}"
        except TimeoutError:
            return f"error: {name} timed out"


def _dump(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, indent=1)
    return text if len(text) <= OUTPUT_CAP else text[:OUTPUT_CAP] + "\n[truncated]"


async def run_command(command: str, cwd: str, timeout_s: float) -> str:
    """Run a shell command in the container; kill its process group on timeout."""
    proc = await asyncio.create_subprocess_shell(
        command,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return f"error: timed out after {timeout_s:.0f}s (process group killed)"
    text = output.decode("utf-8", errors="replace")
    cut = ""
    if len(text) > OUTPUT_CAP:
        text, cut = text[:OUTPUT_CAP], f"\n[output truncated at {OUTPUT_CAP} bytes]"
    return f"exit code {proc.returncode}\n{text}{cut}"


def builtin_tools(
    mesh: MeshClient, workspace: Workspace, watch_cursors: dict[str, int] | None = None
) -> Registry:
    reg = Registry()
    cursors = watch_cursors if watch_cursors is not None else {}

    async def read_file(a: dict[str, Any]) -> str:
        return workspace.read(str(a["path"]))

    async def write_file(a: dict[str, Any]) -> str:
        return workspace.write(str(a["path"]), str(a["content"]), bool(a.get("append", False)))

    async def list_files(a: dict[str, Any]) -> str:
        return "\n".join(workspace.list(str(a.get("path") or "."))) or "(empty)"

    async def command(a: dict[str, Any]) -> str:
        timeout = min(float(a.get("timeout_s") or COMMAND_TIMEOUT_S), COMMAND_TIMEOUT_MAX_S)
        return await run_command(str(a["command"]), str(workspace.real_root), timeout)

    async def http_request(a: dict[str, Any]) -> str:
        request: dict[str, Any] = {k: a[k] for k in ("method", "url", "headers", "body") if k in a}
        request.setdefault("method", "GET")
        return _dump(await mesh.egress(request))

    async def bb_read(a: dict[str, Any]) -> str:
        return _dump(await mesh.bb_get(str(a["key"])))

    async def bb_write(a: dict[str, Any]) -> str:
        ttl = a.get("ttl_s")
        entry = await mesh.bb_put(str(a["key"]), a["value"], float(ttl) if ttl else None)
        return f"wrote {entry['key']} (version {entry['version']})"

    async def bb_list(a: dict[str, Any]) -> str:
        data = await mesh.bb_list(str(a.get("prefix") or ""))
        return _dump(
            [
                {"key": e["key"], "version": e["version"], "writer": e["writer"]}
                for e in data["entries"]
            ]
        )

    async def bb_claim(a: dict[str, Any]) -> str:
        return _dump(await mesh.bb_claim(str(a["key"]), float(a.get("ttl_s") or 300)))

    async def bb_release(a: dict[str, Any]) -> str:
        return _dump(await mesh.bb_release(str(a["key"])))

    async def bb_watch(a: dict[str, Any]) -> str:
        pattern = str(a["pattern"])
        wait = min(float(a.get("wait_s") or 10), 30.0)
        result = await mesh.bb_watch(pattern, cursors.get(pattern), wait)
        if pattern not in cursors:  # first call: now we have a cursor; wait for changes
            cursors[pattern] = result["cursor"]
            result = await mesh.bb_watch(pattern, cursors[pattern], wait)
        cursors[pattern] = result["cursor"]
        return _dump(result)

    async def publish(a: dict[str, Any]) -> str:
        return _dump(await mesh.publish(str(a["topic"]), a.get("payload")))

    async def subscribe(a: dict[str, Any]) -> str:
        return _dump(await mesh.subscribe(str(a["topic"])))

    async def send_message(a: dict[str, Any]) -> str:
        return _dump(await mesh.send_message(str(a["to"]), a.get("payload")))

    async def notify_user(a: dict[str, Any]) -> str:
        await mesh.notify(str(a["text"]), str(a.get("level") or "info"))
        return "the operator was notified"

    async def system_status(a: dict[str, Any]) -> str:
        me = await mesh.self_status()
        return _dump(me.model_dump())

    path = {"type": "string", "description": "Path relative to the workspace."}
    reg.add(
        Tool(
            "read_file",
            "Read a text file from your workspace.",
            _obj(["path"], path=path),
            read_file,
        )
    )
    reg.add(
        Tool(
            "write_file",
            "Write (or append to) a text file in your workspace.",
            _obj(["path", "content"], path=path, content=STR, append={"type": "boolean"}),
            write_file,
        )
    )
    reg.add(Tool("list_files", "List a folder of your workspace.", _obj([], path=path), list_files))
    reg.add(
        Tool(
            "run_command",
            "Run a shell command in your container (no network); "
            "output is capped, default timeout 30 s.",
            _obj(["command"], command=STR, timeout_s={"type": "number"}),
            command,
        )
    )
    reg.add(
        Tool(
            "http_request",
            "HTTP request through the host's egress proxy. Refer to "
            "credentials as $CRED{name}; the host fills them in.",
            _obj(
                ["url"],
                method=STR,
                url=STR,
                headers={"type": "object", "additionalProperties": STR},
                body=STR,
            ),
            http_request,
        )
    )
    reg.add(Tool("blackboard_read", "Read a blackboard key.", _obj(["key"], key=STR), bb_read))
    reg.add(
        Tool(
            "blackboard_write",
            "Write a JSON value to a blackboard key.",
            _obj(["key", "value"], key=STR, value=ANY, ttl_s={"type": "number"}),
            bb_write,
        )
    )
    reg.add(
        Tool(
            "blackboard_list", "List blackboard keys under a prefix.", _obj([], prefix=STR), bb_list
        )
    )
    reg.add(
        Tool(
            "blackboard_claim",
            "Claim a key so no other agent takes it.",
            _obj(["key"], key=STR, ttl_s={"type": "number"}),
            bb_claim,
        )
    )
    reg.add(
        Tool(
            "blackboard_release", "Release your claim on a key.", _obj(["key"], key=STR), bb_release
        )
    )
    reg.add(
        Tool(
            "blackboard_watch",
            "Wait for changes to keys matching a glob.",
            _obj(["pattern"], pattern=STR, wait_s={"type": "number"}),
            bb_watch,
        )
    )
    reg.add(
        Tool(
            "publish",
            "Publish a payload to a topic.",
            _obj(["topic", "payload"], topic=STR, payload=ANY),
            publish,
        )
    )
    reg.add(
        Tool(
            "subscribe",
            "Subscribe to a topic (glob allowed).",
            _obj(["topic"], topic=STR),
            subscribe,
        )
    )
    reg.add(
        Tool(
            "send_message",
            "Send a direct message to another agent.",
            _obj(["to", "payload"], to=STR, payload=ANY),
            send_message,
        )
    )
    reg.add(
        Tool(
            "notify_user",
            "Tell the operator something important.",
            _obj(
                ["text"], text=STR, level={"type": "string", "enum": ["info", "warning", "error"]}
            ),
            notify_user,
        )
    )
    reg.add(
        Tool(
            "get_system_status",
            "Your permissions, budget left and reachable agents.",
            _obj([]),
            system_status,
        )
    )
    return reg
