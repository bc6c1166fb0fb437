"""`legion daemon`: the host in the foreground, the way systemd expects it.

* one host per LEGION_HOME (an exclusive lock on run/host.lock; a second daemon
  refuses to start and names the pid that holds it);
* SIGTERM or SIGINT stop it cleanly, well within 10 s;
* with `--systemd` and NOTIFY_SOCKET set, READY=1 and STOPPING=1 are sent;
* structured JSON logs on stderr.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import shlex
import signal
import socket
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING

from legion import logs
from legion.config import load_config
from legion.errors import ConfigError, LegionError
from legion.paths import Paths

if TYPE_CHECKING:
    from legion.host import Host

log = logging.getLogger("legion.daemon")


class AlreadyRunning(Exception):
    pass


def acquire_lock(paths: Paths) -> IO[str]:
    """Hold run/host.lock for the life of the process (released by the kernel on exit)."""
    paths.run.mkdir(parents=True, exist_ok=True)
    os.chmod(paths.run, 0o700)
    handle = open(paths.lock_file, "a+")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise AlreadyRunning(
            f"another legion host is already running for {paths.home} (pid {holder}); "
            "stop it with `legion stop`, or use a different --home"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def sd_notify(message: str) -> bool:
    """Send a message to systemd's NOTIFY_SOCKET, if there is one."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError as exc:
            log.warning("could not notify systemd", extra={"fields": {"error": str(exc)}})
            return False
    return True


def unit_file(paths: Paths, executable: list[str] | None = None) -> str:
    exe = shlex.join(executable or _legion_executable())
    return f"""# legion host: install as /etc/systemd/system/legion.service, then
#   systemctl daemon-reload && systemctl enable --now legion
[Unit]
Description=legion agent host
After=network-online.target docker.service
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={exe} --home {shlex.quote(str(paths.home))} daemon --systemd
ExecStop={exe} --home {shlex.quote(str(paths.home))} stop
Environment=LEGION_HOME={shlex.quote(str(paths.home))}
Restart=on-failure
RestartSec=2
TimeoutStopSec=15
KillSignal=SIGTERM
UMask=0077
NoNewPrivileges=true

[Install]
WantedBy=multi-user.target
"""


def _legion_executable() -> list[str]:
    """The command words that run this legion: its script, or `python -m legion`."""
    candidate = Path(sys.argv[0])
    if candidate.name == "legion" and candidate.exists():
        return [str(candidate.resolve())]
    sibling = Path(sys.executable).parent / "legion"
    return [str(sibling)] if sibling.exists() else [sys.executable, "-m", "legion"]


def _import_provider_keys(paths: Paths) -> list[str]:
    """Move provider keys from the environment into the vault (system tier)."""
    from legion.gateway.vault import Vault

    paths.home.mkdir(parents=True, exist_ok=True)
    vault = Vault(paths.vault_db, paths.vault_key)
    try:
        stored = vault.import_environment()
    finally:
        vault.close()
    if stored:
        log.info(
            "provider keys imported from the environment into the vault",
            extra={"fields": {"names": stored}},
        )
    return stored


async def _serve(paths: Paths, systemd: bool) -> int:

    config = load_config(paths.config)
    logs.setup(config.host.log_level)
    loop = asyncio.get_running_loop()
    # Signals are handled before any socket opens, so an early SIGTERM still stops cleanly.
    early: list[str] = []
    running: list[Host] = []

    def on_signal(reason: str) -> None:
        if running:
            running[0].request_stop(reason)
        else:
            early.append(reason)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, f"signal {sig.name}")
    _import_provider_keys(paths)
    from legion.host import Host

    runtime = None
    if config.runtime.backend == "docker":
        from legion.fleet.docker_backend import DockerBackend

        runtime = DockerBackend(str(paths.home))
    async with Host.running(config, paths, preload_llm=True, runtime=runtime) as host:
        running.append(host)
        if early:
            host.request_stop(early[0])
        paths.pid_file.write_text(str(os.getpid()))
        log.info(
            "host ready",
            extra={
                "fields": {
                    "home": str(paths.home),
                    "agents": sorted(config.agents),
                    "pid": os.getpid(),
                    "control_socket": str(paths.control_socket),
                }
            },
        )
        if systemd:
            sd_notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=serving {len(config.agents)} agents")
        await host.wait_stopped()
        log.info("host stopping", extra={"fields": {"reason": host.stop_reason}})
        if systemd:
            sd_notify("STOPPING=1")
    paths.pid_file.unlink(missing_ok=True)
    log.info("host stopped")
    return 0


def run(paths: Paths, *, systemd: bool = False) -> int:
    logs.setup("info")
    try:
        lock = acquire_lock(paths)
    except AlreadyRunning as exc:
        print(f"legion daemon: {exc}", file=sys.stderr)
        return 1
    try:
        return asyncio.run(_serve(paths, systemd))
    except LegionError as exc:  # e.g. a locked vault, a socket path that is too long
        print(f"legion daemon: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        print(
            f"legion daemon: fix {exc.path} (check it with `legion config check`)", file=sys.stderr
        )
        return 2
    finally:
        lock.close()
