"""`legion daemon`: the host in the foreground, the way systemd expects it.

* one host per LEGION_HOME (an exclusive lock on run/host.lock; a second daemon
  refuses to start and names the pid that holds it);
* SIGTERM or SIGINT stop it cleanly, well within 10 s;
* SIGHUP reloads legion.toml (what `legion config reload` does; systemd's ExecReload=), so
  a hangup (the SSH session that started it closed) never stops it; a reload that fails
  validation changes nothing and is logged;
* it notices a deleted or replaced run/control.sock and serves it again (checked every
  `control_socket_check_s`, and on SIGHUP), and a deleted run/host.lock is taken again;
* with `--systemd` and NOTIFY_SOCKET set, READY=1, RELOADING=1 and STOPPING=1 are sent;
* logs on stderr, text on a terminal and JSON lines otherwise (`--log-format`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from legion import logs
from legion.config import load_config
from legion.errors import ConfigError, LegionError
from legion.fsutil import atomic_write
from legion.hostlock import AlreadyRunning, acquire_lock
from legion.paths import Paths
from legion.systemd import sd_notify, unit_file

if TYPE_CHECKING:
    from legion.host import Host

__all__ = ["AlreadyRunning", "acquire_lock", "run", "sd_notify", "unit_file"]

log = logging.getLogger("legion.daemon")

# How often the daemon checks that run/control.sock and run/host.lock are still its own.
CONTROL_SOCKET_CHECK_S = 2.0


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class RunDirWatch:
    """Keeps run/control.sock and run/host.lock the host's own while it runs.

    A control socket that was deleted or replaced is served again (the CLI could not find
    the host otherwise). A lock file that was deleted is created and locked again, so a
    second daemon cannot start on this home; if one already did, this host stops (two
    hosts on one home would take each other's sockets).
    """

    def __init__(self, host: Host, lock: IO[str]) -> None:
        self.host = host
        self.lock = lock
        self.socket_id = _identity(host.paths.control_socket)
        self._last_error = ""
        self._checking = asyncio.Lock()  # the periodic check and SIGHUP never overlap

    def _lock_is_ours(self) -> bool:
        st = os.fstat(self.lock.fileno())
        return _identity(self.host.paths.lock_file) == (st.st_dev, st.st_ino)

    async def check(self) -> None:
        async with self._checking:
            await self._check()

    async def _check(self) -> None:
        paths = self.host.paths
        try:
            if not self._lock_is_ours():
                self._relock()
            if _identity(paths.control_socket) != self.socket_id:
                log.warning(
                    "the control socket was deleted or replaced; serving it again",
                    extra={"fields": {"path": str(paths.control_socket)}},
                )
                paths.run.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.chmod(paths.run, 0o700)
                await self.host.reopen_control_socket()
                self.socket_id = _identity(paths.control_socket)
            if not paths.pid_file.exists():
                atomic_write(paths.pid_file, str(os.getpid()))
            self._last_error = ""
        except AlreadyRunning as exc:
            log.error(
                "another host took this home while the lock file was gone; stopping",
                extra={"fields": {"error": str(exc)}},
            )
            self.host.request_stop("another host took over run/host.lock")
        except (OSError, LegionError) as exc:
            if str(exc) != self._last_error:  # once per distinct problem, not every check
                log.error(
                    "cannot restore the control socket; retrying",
                    extra={"fields": {"path": str(paths.control_socket), "error": str(exc)}},
                )
                self._last_error = str(exc)

    def _relock(self) -> None:
        paths = self.host.paths
        log.warning(
            "run/host.lock was deleted or replaced; taking it again",
            extra={"fields": {"path": str(paths.lock_file)}},
        )
        paths.run.mkdir(mode=0o700, parents=True, exist_ok=True)
        handle = open(paths.lock_file, "a+")  # noqa: SIM115 - held until exit
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise AlreadyRunning(f"pid {holder} holds {paths.lock_file}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        old, self.lock = self.lock, handle
        old.close()

    async def run_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.check()


async def _reload(host: Host, systemd: bool) -> None:
    """One SIGHUP: re-read legion.toml and log what changed, or why nothing did."""
    from legion.api.control import ConfigInvalid, reload_config

    if systemd:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        sd_notify(f"RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading legion.toml")
    try:
        result = await reload_config(host, "operator")
    except ConfigInvalid as exc:
        for problem in exc.detail.get("problems", []):
            log.error(problem, extra={"fields": {"file": exc.detail.get("file")}})
        log.error(
            "config reload refused; the host keeps its current config. Fix the file "
            "(`legion config check` shows every problem) and reload again",
            extra={"fields": {"file": exc.detail.get("file")}},
        )
    except Exception:
        log.exception("config reload failed; the host keeps running")
    else:
        log.info("config reloaded", extra={"fields": result.model_dump()})
    if systemd:
        sd_notify(f"READY=1\nSTATUS=serving {len(host.config.agents)} agents")


async def _on_hangup(host: Host, wanted: asyncio.Event, watch: RunDirWatch, sd: bool) -> None:
    while True:
        await wanted.wait()
        wanted.clear()
        await watch.check()
        await _reload(host, sd)


async def _serve(paths: Paths, lock: IO[str], options: DaemonOptions) -> int:
    loop = asyncio.get_running_loop()
    # Signals are handled before anything else: an early SIGTERM still stops cleanly, an
    # early SIGHUP is one (harmless) reload once the host is up.
    early: list[str] = []
    running: list[Host] = []
    hangup = asyncio.Event()

    def on_signal(reason: str) -> None:
        if running:
            running[0].request_stop(reason)
        else:
            early.append(reason)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, f"signal {sig.name}")
    loop.add_signal_handler(signal.SIGHUP, hangup.set)
    config = load_config(paths.config)
    logs.setup(config.host.log_level, options.log_format)
    _import_provider_keys(paths)
    from legion.host import Host

    runtime = None
    if config.runtime.backend == "docker":
        from legion.fleet.docker_backend import DockerBackend

        runtime = DockerBackend.for_starts(str(paths.home), config.runtime.start_concurrency)
    async with Host.running(config, paths, preload_llm=True, runtime=runtime) as host:
        running.append(host)
        if early:
            host.request_stop(early[0])
        atomic_write(paths.pid_file, str(os.getpid()))
        watch = RunDirWatch(host, lock)
        tasks = {asyncio.create_task(_on_hangup(host, hangup, watch, options.systemd))}
        if options.control_socket_check_s > 0:
            tasks.add(asyncio.create_task(watch.run_forever(options.control_socket_check_s)))
        try:
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
            if options.systemd:
                sd_notify(
                    f"READY=1\nMAINPID={os.getpid()}\nSTATUS=serving {len(config.agents)} agents"
                )
            await host.wait_stopped()
            log.info("host stopping", extra={"fields": {"reason": host.stop_reason}})
            if options.systemd:
                sd_notify("STOPPING=1")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    paths.pid_file.unlink(missing_ok=True)
    log.info("host stopped")
    return 0


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


@dataclass(frozen=True)
class DaemonOptions:
    systemd: bool = False
    log_format: logs.LogFormat = "auto"
    control_socket_check_s: float = CONTROL_SOCKET_CHECK_S


def run(
    paths: Paths,
    *,
    systemd: bool = False,
    log_format: logs.LogFormat = "auto",
    control_socket_check_s: float = CONTROL_SOCKET_CHECK_S,
) -> int:
    # Until the event loop handles it (reload), a hangup during start-up must not kill us.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    logs.setup("info", log_format)
    logs.capture_stray_output()
    options = DaemonOptions(
        systemd=systemd, log_format=log_format, control_socket_check_s=control_socket_check_s
    )
    try:
        lock = acquire_lock(paths)
    except AlreadyRunning as exc:
        log.error(f"legion daemon: {exc}")
        return 1
    try:
        return asyncio.run(_serve(paths, lock, options))
    except LegionError as exc:  # e.g. a locked vault, a socket path that is too long
        log.error(f"legion daemon: {exc}")
        return 2
    except ConfigError as exc:
        for problem in exc.problems:
            log.error(problem, extra={"fields": {"file": exc.path}})
        log.error(f"legion daemon: fix {exc.path} (check it with `legion config check`)")
        return 2
    finally:
        with contextlib.suppress(OSError):
            lock.close()
