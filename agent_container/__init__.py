"""The agent runtime: what runs inside an agent's container (`python -m agent_container`).

It talks only to its host, over one Unix socket (/run/legion/mesh.sock): inbox, LLM,
blackboard, pub/sub, messages and web egress all go through it. It depends on the
standard library, httpx, pydantic and `legion.wire`; never on LiteLLM, Docker, Textual or
the rest of the host (an import-linter contract checks it).

Modules: `loop` (AgentRuntime, the work loop), `turns` (chat turns and tasks),
`prompt` (payload conventions, system prompt), `completion` (streamed chunks),
`client` (MeshClient), `registry` / `tools` / `tools_workspace` / `tools_mesh` (tools),
`workspace` (confined file access).
"""

from agent_container.loop import AgentRuntime

__all__ = ["AgentRuntime"]
