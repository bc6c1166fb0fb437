"""`legion mcp`: the MCP servers agents use, their state and their tools."""

from __future__ import annotations

from typing import Annotated

import typer

from legion.cli.common import (
    State,
    cell,
    console,
    emit_json,
    fmt_time,
    host_errors,
    print_table,
    subapp,
    table,
)

app = subapp("MCP servers: local (in agents' containers) and remote.")


@app.command("ls")
def ls(
    agent: Annotated[str | None, typer.Option("--agent", help="Only this agent's servers.")] = None,
    tools: Annotated[bool, typer.Option("--tools", help="List each server's tools too.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """List MCP servers (remote, and each agent's local ones) with state and tools."""
    if agent is not None:
        from legion.cli.agents_cmd import require_valid_name

        require_valid_name(agent)

    with host_errors(), State.client() as client:
        listing = client.mcp(agent)
    if as_json:
        emit_json(listing.model_dump(mode="json"))
        return
    if not listing.servers:
        typer.echo("no MCP servers" + (f" for {agent}" if agent else ""))
        return
    rows = table("server", "kind", "agents", "state", "tools", "since", "reason")
    for server in listing.servers:
        where = server.agent if server.kind == "stdio" else ", ".join(server.agents) or "-"
        style = {"ready": "green", "restarting": "yellow", "unavailable": "red"}.get(
            server.state, ""
        )
        rows.add_row(
            cell(server.name),
            cell(server.kind),
            cell(where),
            cell(server.state),
            str(len(server.tools)),
            fmt_time(server.since),
            cell(server.reason),
            style=style,
        )
    print_table(rows)  # every value whole when piped
    out = console()
    if tools:
        for server in listing.servers:
            for tool in server.tools:
                out.print(cell(f"  {tool.name}: {tool.description[:140]}"))
            for dropped in server.dropped:
                out.print(cell(f"  ({server.name}: not offered: {dropped})"))
