"""The agent runtime: what runs inside an agent's container (`python -m agent_container`).

It talks only to its host, over one Unix socket (/run/legion/mesh.sock). It depends on
the standard library, httpx, pydantic and `legion.wire`; never on LiteLLM, Docker, Textual
or the rest of the host.
"""

__all__ = ["AgentRuntime"]

from agent_container.loop import AgentRuntime
