"""The host lock (`run/host.lock`): one host per LEGION_HOME, and how the CLI finds it.

The daemon holds an exclusive flock on run/host.lock for its whole life and writes its pid
in it. The kernel releases the lock when the process dies, so "someone holds the lock" is
the truth about a running host, whatever the control socket or run/host.pid say.

To find the holder without disturbing it, `lock_holder()` reads the kernel's lock table
(/proc/locks) for the lock file's inode. `signal_host()` signals only a process the kernel
names as the holder and whose pid the lock file also names, through a pidfd taken before
the last check, so neither a stale pid file nor a recycled pid can make it signal an
unrelated process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from legion.paths import Paths

PROC_LOCKS = Path("/proc/locks")


class AlreadyRunning(Exception):
    pass


class CannotSignal(Exception):
    """The host could not be signalled; the message says why and what to do instead."""


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


@dataclass(frozen=True)
class Holder:
    """Who holds the host lock. `pid` is None when the kernel does not say (the lock table
    is unreadable, or the holder is in another pid namespace)."""

    pid: int | None
    lock_file_pid: int | None
    pid_file_pid: int | None


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and len(text) < 12 else None


def _flock_holders(dev: int, ino: int) -> list[int] | None:
    """Pids of the processes holding a flock on (dev, ino); None if the table is unreadable."""
    try:
        table = PROC_LOCKS.read_text()
    except OSError:
        return None
    holders = []
    # "1: FLOCK  ADVISORY  WRITE 3154 fe:00:1474591 0 EOF"; a waiter has "->" after the id.
    for line in table.splitlines():
        parts = line.split()
        if len(parts) < 6 or parts[1] != "FLOCK":
            continue
        try:
            major, minor, inode = parts[5].split(":")
            if (int(major, 16), int(minor, 16), int(inode)) != (os.major(dev), os.minor(dev), ino):
                continue
            holders.append(int(parts[4]))
        except ValueError:
            continue
    return holders


def _held_by_someone(lock_file: Path) -> bool:
    """Without the lock table: try a shared lock for an instant (a daemon starting in that
    instant would be refused, so this is only the fallback)."""
    try:
        handle = open(lock_file)  # noqa: SIM115 - closed below
    except OSError:
        return False
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        handle.close()
    return False


def lock_holder(paths: Paths) -> Holder | None:
    """The process holding run/host.lock, or None when no host holds it.

    Raises PermissionError when this user cannot look into run/ (the host runs as another).
    """
    try:
        st = os.stat(paths.lock_file)
    except FileNotFoundError:
        return None
    holders = _flock_holders(st.st_dev, st.st_ino)
    if holders is None:
        if not _held_by_someone(paths.lock_file):
            return None
        pid = None
    else:
        if not holders:
            return None
        live = sorted({p for p in holders if p > 0})
        pid = live[0] if len(live) == 1 and len(holders) == 1 else None
    return Holder(pid, _read_pid(paths.lock_file), _read_pid(paths.pid_file))


def signal_host(paths: Paths, sig: int = signal.SIGTERM) -> int:
    """Send `sig` to the host that holds run/host.lock; returns its pid.

    Signals only a process that the kernel names as the lock's holder and whose pid the
    lock file names too (the daemon writes it there). The pidfd is opened before the last
    check, so a pid recycled after that check cannot be hit. Raises CannotSignal.
    """
    holder = lock_holder(paths)
    if holder is None:
        raise CannotSignal(f"no legion host holds {paths.lock_file}; nothing to signal")
    if holder.pid is None:
        raise CannotSignal(
            f"a process holds {paths.lock_file} but the kernel's lock table does not say "
            "which; stop it where it runs (e.g. `systemctl stop legion`)"
        )
    if holder.lock_file_pid != holder.pid:
        raise CannotSignal(
            f"pid {holder.pid} holds {paths.lock_file}, but the lock file names pid "
            f"{holder.lock_file_pid}: that is not a legion host as far as this can tell; "
            f"not signalling it (look at /proc/{holder.pid}/cmdline)"
        )
    try:
        pidfd = os.pidfd_open(holder.pid)
    except ProcessLookupError:
        raise CannotSignal(f"the host (pid {holder.pid}) has just exited") from None
    try:
        again = lock_holder(paths)
        if again is None or again.pid != holder.pid:
            raise CannotSignal(f"the host (pid {holder.pid}) has just exited")
        try:
            signal.pidfd_send_signal(pidfd, sig)
        except ProcessLookupError:
            raise CannotSignal(f"the host (pid {holder.pid}) has just exited") from None
        except PermissionError:
            raise CannotSignal(
                f"not allowed to signal the host (pid {holder.pid}): it runs as another "
                "user; run this as that user (or with sudo), or use `systemctl stop legion`"
            ) from None
    finally:
        os.close(pidfd)
    return holder.pid


def wait_released(paths: Paths, timeout_s: float, poll_s: float = 0.05) -> bool:
    """Wait until no process holds the host lock; True when released within `timeout_s`."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(PermissionError):
            if lock_holder(paths) is None:
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
