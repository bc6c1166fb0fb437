"""`legion vault`: store, list and remove credentials. Values never appear in argv or output."""

from __future__ import annotations

import getpass
import sys
from typing import Annotated

import typer

from legion.cli.common import State, emit_json, fail, fmt_time
from legion.gateway.vault import Vault

app = typer.Typer(
    help="Manage credentials (encrypted in LEGION_HOME/vault.db). Agents refer to them by "
    "handle, $CRED{name}; the host substitutes them on egress, only toward bound hosts.",
    no_args_is_help=True,
)


def _open() -> Vault:
    from legion.errors import LegionError

    paths = State.paths()
    paths.home.mkdir(parents=True, exist_ok=True)
    paths.home.chmod(0o700)
    try:
        return Vault(paths.vault_db, paths.vault_key)
    except LegionError as exc:
        fail(str(exc), 2)


def _read_secret(name: str) -> str:
    if not sys.stdin.isatty():
        value = sys.stdin.read()
        return value[:-1] if value.endswith("\n") else value
    first = getpass.getpass(f"value for {name}: ")
    second = getpass.getpass("again: ")
    if first != second:
        fail("the two entries differ; nothing was stored", 1)
    return first


@app.command("set")
def set_cmd(
    name: Annotated[str, typer.Argument(help="Credential name, e.g. github or openai.")],
    tier: Annotated[
        str,
        typer.Option(
            help="system: host-only (provider keys), never resolvable by an agent. agent: usable "
            "by allowed agents via $CRED{name} toward bound hosts."
        ),
    ] = "agent",
    bind_host: Annotated[
        list[str] | None,
        typer.Option(
            "--bind-host",
            help="Host this credential may be sent to (repeat; globs like "
            "*.example.com). Required for agent-tier credentials.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Store a credential, reading its value from a prompt or stdin (never from argv)."""
    from legion.errors import LegionError

    if tier != "system" and tier != "agent":
        fail("--tier must be system or agent", 2)
    if tier == "agent" and not bind_host:
        fail("an agent-tier credential needs at least one --bind-host (where it may be sent)", 2)
    value = _read_secret(name)
    vault = _open()
    try:
        info = vault.set(
            name, value, tier="system" if tier == "system" else "agent", bound_hosts=bind_host
        )
    except LegionError as exc:
        fail(str(exc), 2)
    finally:
        vault.close()
    if as_json:
        emit_json(info.as_dict())
    else:
        typer.echo(
            f"stored {info.name} ({info.tier}"
            + (f", bound to {', '.join(info.bound_hosts)})" if info.bound_hosts else ")")
        )


@app.command("ls")
def ls(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List credentials: name, tier, bound hosts, last use. Never values."""
    vault = _open()
    try:
        infos = vault.infos()
    finally:
        vault.close()
    if as_json:
        emit_json([i.as_dict() for i in infos])
        return
    if not infos:
        typer.echo("the vault is empty; add a credential with `legion vault set NAME`", err=True)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "tier", "bound hosts", "updated", "last used", box=None)
    for i in infos:
        table.add_row(
            i.name,
            i.tier,
            ", ".join(i.bound_hosts) or "-",
            fmt_time(i.updated_at),
            fmt_time(i.last_used_at),
        )
    Console().print(table)


@app.command("rm")
def rm(name: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Remove a credential."""
    vault = _open()
    try:
        removed = vault.remove(name)
    finally:
        vault.close()
    if as_json:
        emit_json({"name": name, "removed": removed})
    elif removed:
        typer.echo(f"removed {name}")
    else:
        fail(f"no credential named {name!r}", 1)


@app.command("passphrase")
def passphrase() -> None:
    """Protect the vault with a passphrase (scrypt) instead of the key file."""
    vault = _open()
    try:
        first = getpass.getpass("new passphrase: ") if sys.stdin.isatty() else sys.stdin.readline()
        first = first.rstrip("\n")
        if sys.stdin.isatty() and getpass.getpass("again: ") != first:
            fail("the two entries differ; nothing changed", 1)
        from legion.errors import LegionError

        try:
            vault.use_passphrase(first)
        except LegionError as exc:
            fail(str(exc), 2)
    finally:
        vault.close()
    typer.echo(
        "the vault now needs the passphrase: set LEGION_VAULT_PASSPHRASE for the daemon "
        "(or the systemd credential legion-vault-passphrase); the key file was removed"
    )
