"""`legion vault`: store, list and remove credentials. Values never appear in argv or output."""

from __future__ import annotations

import getpass
import sys
from typing import Annotated

import typer

from legion.cli.common import (
    WIDE_HELP,
    State,
    cell,
    emit_json,
    fail,
    fmt_time,
    print_table,
    subapp,
    table,
)
from legion.gateway.redact import VALUE_RULE
from legion.gateway.vault import Vault

app = subapp(
    "Manage credentials (provider keys, and secrets agents use by handle).\n\n"
    "Encrypted in LEGION_HOME/vault.db. Provider keys are system tier (`legion vault set "
    "openai --tier system`): the host uses them, nothing can read them back. Agents refer "
    "to agent-tier credentials by handle, $CRED{name}; the host substitutes them on egress, "
    "only toward bound hosts."
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
        for end in ("\r\n", "\n"):  # one line ending, as `echo` or a Windows editor adds
            if value.endswith(end):
                return value[: -len(end)]
        return value
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
            "--bind",
            "--bind-host",
            help="Host this credential may be sent to (repeat; globs like "
            "*.example.com). Required for agent-tier credentials. https only, unless "
            "--allow-http.",
        ),
    ] = None,
    allow_http: Annotated[
        bool,
        typer.Option(
            "--allow-http",
            help="Also send it to the bound hosts over plain http:// (readable on the way; "
            "for hosts on a network you trust). Without it, an http request is refused.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Store a credential, reading its value from a prompt or stdin (never from argv).

    The value must be at least 8 characters with at least 40 bits of estimated entropy, so
    it can be masked safely wherever it might be echoed (see docs/vault.md)."""
    from legion.errors import LegionError

    if tier != "system" and tier != "agent":
        fail("--tier must be system or agent", 2)
    if tier == "agent" and not bind_host:
        fail("an agent-tier credential needs at least one --bind HOST (where it may be sent)", 2)
    if allow_http and not bind_host:
        fail("--allow-http applies to the --bind hosts; give at least one", 2)
    value = _read_secret(name)
    vault = _open()
    try:
        info = vault.set(
            name,
            value,
            tier="system" if tier == "system" else "agent",
            bound_hosts=bind_host,
            allow_http=allow_http,
        )
    except LegionError as exc:
        fail(str(exc), 2)
    finally:
        vault.close()
    if as_json:
        emit_json(info.as_dict())
    else:
        bound = ", ".join(info.bound_hosts)
        scheme = "https or http" if info.allow_http else "https only"
        typer.echo(
            f"stored {info.name} ({info.tier}"
            + (f", bound to {bound}, {scheme})" if info.bound_hosts else ")")
        )


@app.command("ls")
def ls(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    wide: Annotated[bool, typer.Option("--wide", help=WIDE_HELP)] = False,
) -> None:
    """List credentials: name, tier, bound hosts, last use. Never values."""
    vault = _open()
    try:
        infos = vault.infos()
        weak = set(vault.weak())
    finally:
        vault.close()
    if as_json:
        emit_json([i.as_dict() | {"weak": i.name in weak} for i in infos])
        return
    if not infos:
        typer.echo("the vault is empty; add a credential with `legion vault set NAME`", err=True)
        return
    out = table("name", "tier", "bound hosts", "http", "updated", "last used")
    for i in infos:
        out.add_row(
            cell(i.name + (" (weak)" if i.name in weak else "")),
            i.tier,
            cell(", ".join(i.bound_hosts) or "-"),
            "allowed" if i.allow_http else "-",
            fmt_time(i.updated_at),
            fmt_time(i.last_used_at),
        )
    print_table(out, wide)
    if weak:
        typer.echo(
            f"weak: {', '.join(sorted(weak))} fail the value rule ({VALUE_RULE}); "
            "replace each with `legion vault set NAME`",
            err=True,
        )


@app.command("rm")
def rm(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The credential to remove.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
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
