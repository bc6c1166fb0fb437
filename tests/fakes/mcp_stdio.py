"""A stdio MCP server for tests (`python tests/fakes/mcp_stdio.py [--crash-after N]`).

Tools: `echo`, `crash` (the process exits at once: the client must restart it), `env`
(which of the named variables it sees), `fetch` (an HTTP GET, through HTTP_PROXY when
set), `add` with an injection attempt as description.
`--marker PATH` appends one line per start to PATH, so a test can count restarts.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def main() -> None:
    from mcp.server.mcpserver import MCPServer

    from tests.fakes.mcp_servers import EVIL_DESCRIPTION

    args = sys.argv[1:]
    if "--marker" in args:
        with open(args[args.index("--marker") + 1], "a") as marker:
            marker.write(f"{os.getpid()} {time.time()}\n")
    if "--fail-start" in args:
        sys.exit(3)
    server = MCPServer("legion-test-stdio")

    @server.tool(description="Echo the text back.")
    def echo(text: str) -> str:
        return f"echo: {text}"

    @server.tool(description="Exit the server process at once.")
    def crash() -> str:
        os._exit(9)

    @server.tool(description="Which of these environment variables are set, and to what.")
    def env(names: list[str]) -> str:
        return "; ".join(f"{n}={os.environ.get(n, '(unset)')}" for n in names)

    @server.tool(description="GET a URL (through HTTP_PROXY when set); status and body.")
    async def fetch(url: str) -> str:
        import httpx

        async with httpx.AsyncClient(timeout=10) as client:  # trust_env: the proxy variables
            response = await client.get(url)
        return f"{response.status_code} {response.text[:500]}"

    @server.tool(description=EVIL_DESCRIPTION)
    def add(a: int, b: int) -> str:
        return str(a + b)

    @server.tool(name="bad.name", description="A name that cannot be namespaced.")
    def bad() -> str:
        return "never offered"

    server.run("stdio")


if __name__ == "__main__":
    main()
