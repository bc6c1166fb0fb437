"""The tool registry: JSON-schema tools (OpenAI `tools` format) the model can call.

A tool is a name, a description, a JSON schema of its arguments and an async handler that
returns text. `Registry.run` is the only way the loop calls one, and it never raises for
anything the model can cause: unknown tools, arguments that are not JSON or do not match
the schema, host refusals (`MeshError`), timeouts and OS errors all come back as a result
text starting with `error:`, so the model can correct itself. Only `HostUnavailable`
(the host is restarting) and cancellation propagate: the turn must stop, unacked.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from agent_container.client import HostUnavailable, MeshError
from agent_container.memory import MemoryProblem
from agent_container.workspace import WorkspaceError

log = logging.getLogger("agent.tools")

RESULT_CAP = 64 * 1024

Handler = Callable[[dict[str, Any]], Awaitable[str]]

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def obj(required: Iterable[str] = (), **props: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema of an object with these properties."""
    return {"type": "object", "properties": props, "required": list(required)}


def text(description: str) -> dict[str, Any]:
    return {"type": "string", "description": description}


def number(description: str) -> dict[str, Any]:
    return {"type": "number", "description": description}


def anything(description: str) -> dict[str, Any]:
    return {"description": description}


@dataclass
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    handler: Handler

    def schema(self) -> dict[str, Any]:
        """The OpenAI `tools` entry."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


def check_arguments(tool: Tool, args: dict[str, Any]) -> str | None:
    """Why `args` do not fit the tool's schema (top level only), or None when they do."""
    missing = [k for k in tool.parameters.get("required", []) if args.get(k) is None]
    if missing:
        return f"{tool.name} needs {', '.join(missing)}"
    for key, schema in tool.parameters.get("properties", {}).items():
        value = args.get(key)
        kind = schema.get("type")
        if value is None or kind not in _JSON_TYPES:
            continue
        bad_bool = isinstance(value, bool) and kind in ("number", "integer")
        if bad_bool or not isinstance(value, _JSON_TYPES[kind]):
            return f"{tool.name}: {key} must be a JSON {kind}, not {type(value).__name__}"
        if "enum" in schema and value not in schema["enum"]:
            return f"{tool.name}: {key} must be one of {', '.join(map(str, schema['enum']))}"
    return None


def cap(result: str, limit: int = RESULT_CAP) -> str:
    if len(result) <= limit:
        return result
    return result[:limit] + f"\n[result truncated at {limit} characters]"


def dump(value: Any) -> str:
    """A compact JSON rendering for tool results."""
    return json.dumps(value, ensure_ascii=False, default=str)


@dataclass
class Registry:
    tools: dict[str, Tool] = field(default_factory=dict)

    def add(self, tool: Tool) -> None:
        self.tools[tool.name] = tool

    def copy(self) -> Registry:
        return Registry(dict(self.tools))

    def names(self) -> list[str]:
        return list(self.tools)

    def schemas(self) -> list[dict[str, Any]]:
        return [t.schema() for t in self.tools.values()]

    async def run(self, name: str, arguments: str | dict[str, Any] | None) -> str:
        """Run one tool call; every failure the model can cause comes back as `error: ...`."""
        tool = self.tools.get(name)
        if tool is None:
            return f"error: no tool named {name!r}; available: {', '.join(self.tools)}"
        try:
            args = json.loads(arguments or "{}") if not isinstance(arguments, dict) else arguments
        except ValueError as exc:
            return f"error: the arguments of {name} are not valid JSON ({exc}); send an object"
        if not isinstance(args, dict):
            return f"error: the arguments of {name} must be a JSON object"
        problem = check_arguments(tool, args)
        if problem is not None:
            return f"error: {problem}"
        try:
            return cap(await tool.handler(args))
        except HostUnavailable:
            raise  # the host is restarting: stop the turn, the item comes back
        except MeshError as exc:
            return f"error: the host refused: {exc}"
        except (WorkspaceError, MemoryProblem) as exc:
            return f"error: {exc}"
        except TimeoutError as exc:
            return f"error: {name} timed out{f': {exc}' if str(exc) else ''}"
        except OSError as exc:
            return f"error: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
        except (ValueError, TypeError, KeyError) as exc:
            return f"error: bad arguments for {name}: {exc}"
        except Exception as exc:
            log.exception("tool %s failed", name)
            return f"error: {name} failed unexpectedly: {exc.__class__.__name__}: {exc}"


def _ignore_key(key: str) -> None:
    return None


def _ignore_message(item_id: int, to: str) -> None:
    return None


@dataclass
class Hooks:
    """What the runtime wants to know about tool side effects (per turn bookkeeping)."""

    blackboard_written: Callable[[str], None] = _ignore_key
    message_sent: Callable[[int, str], None] = _ignore_message
