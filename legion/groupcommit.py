"""Group commit for host.db: one fsync makes every commit before it durable.

SQLite in WAL mode at `synchronous=FULL` fsyncs the WAL file inside every COMMIT, on the
thread that commits: the host's event loop. Here the connection commits at
`synchronous=NORMAL` (the WAL frames are written, so the commit survives `kill -9`, but
not yet fsynced), and this class fsyncs the WAL file in its own thread. One fsync covers
every commit whose frames were written before it started, so concurrent writers share it;
a reply is sent only after the fsync covering what it reports (`flush`).

Why that is the same promise as `synchronous=FULL` (docs/decisions.md, "Group commit"):

* FULL's only extra work in WAL mode is an fsync of the WAL after the commit's frames are
  written; this does exactly that, later, from another descriptor of the same file (an
  fsync flushes the file, whichever descriptor wrote it).
* SQLite never puts POSIX locks on the `-wal` file (only on the database and `-shm`), so
  opening and closing our own descriptor of it cannot drop one of SQLite's locks.
* A new `-wal` file's directory entry is fsynced too (SQLite does that itself on the first
  sync of a new WAL at FULL; at NORMAL that first sync is ours).
* Checkpoints keep SQLite's ordering: it fsyncs the WAL before copying it into the
  database, fsyncs the database after, and fsyncs the WAL header when the WAL restarts, so
  a restart never overwrites frames the database does not hold yet. They run in their own
  thread on their own connection (`Checkpointer`: a PASSIVE checkpoint once the WAL holds
  `CHECKPOINT_PAGES`), instead of inside whichever commit crosses the threshold on the
  event loop (two fsyncs and up to 4 MB copied: 10-20 ms stalls, measured). Only with a
  SQLite that has the fix for the WAL-reset race between connections (3.51.3); an older
  one keeps SQLite's own automatic checkpoints.

A failed fsync poisons the store: after one, nobody can know what reached the disk, so
every later durable reply fails (503 `storage_failed`) until the host is restarted and
SQLite recovers the WAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import apsw

from legion.errors import LegionError

log = logging.getLogger("legion.store")

SLOW_FLUSH_S = 1.0  # a flush slower than this is logged (a stalling disk)


class StorageFailed(LegionError):
    status = 503
    code = "storage_failed"


def _datasync(fd: int) -> None:
    # fdatasync also flushes the size of a grown file; it is what SQLite uses on Linux.
    (getattr(os, "fdatasync", None) or os.fsync)(fd)


class GroupCommit:
    """Sequence numbers of commits, and fsync rounds that make them durable.

    `seq` counts commits; `wanted` is the newest commit that must reach the disk (a durable
    one); `flushed` is the newest commit known to be on disk. Every call happens on one
    thread (the event loop's), except the fsync itself.
    """

    def __init__(self, wal: Path, *, sync: Callable[[int], None] = _datasync) -> None:
        self.wal = wal
        self.sync = sync  # the OS call; tests wrap it to observe the order of events
        self.seq = 0
        self.wanted = 0
        self.flushed = 0
        self.rounds = 0  # fsyncs done
        self._fd: int | None = None
        self._ino: tuple[int, int] | None = None
        self._io_lock = threading.Lock()  # the flush thread and a blocking flush_sync
        self._executor: ThreadPoolExecutor | None = None
        self._inflight: asyncio.Future[None] | None = None
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._failed: str | None = None

    # --- commits ------------------------------------------------------------------

    def committed(self, durable: bool) -> int:
        """Count a commit that just returned; a durable one starts an fsync round now (or,
        with no event loop running, fsyncs before returning). Returns its sequence number."""
        self.seq += 1
        if durable:
            self.wanted = self.seq
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush_sync()
            else:
                if self._inflight is None and self._failed is None:
                    self._begin(loop)
        return self.seq

    # --- waiting for the disk ------------------------------------------------------

    async def flush(self, upto: int | None = None) -> None:
        """Return once every commit up to `upto` (default: every durable commit so far) is
        on disk; raise StorageFailed if that can no longer be known."""
        target = self.wanted if upto is None else min(upto, self.seq)
        if self._failed is not None:
            raise self._error()
        if target <= self.flushed:
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append((target, waiter))
        if self._inflight is None:
            self._begin(loop)
        await waiter

    def flush_sync(self) -> None:
        """Make every commit so far durable, blocking the calling thread (start, stop, and
        callers without an event loop)."""
        if self._failed is not None:
            raise self._error()
        covered = self.seq
        if covered <= self.flushed:
            return
        try:
            self._sync_wal()
        except BaseException as exc:
            self._fail(exc)
            raise self._error() from None
        self._covered(covered)

    # --- the rounds -----------------------------------------------------------------

    def _begin(self, loop: asyncio.AbstractEventLoop) -> None:
        covered = self.seq  # every commit so far has written its frames: this fsync covers it
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="legion-fsync")
        started = time.monotonic()
        inflight = loop.run_in_executor(self._executor, self._sync_wal)
        self._inflight = inflight
        inflight.add_done_callback(lambda f: self._done(f, covered, started, loop))

    def _done(
        self,
        inflight: asyncio.Future[None],
        covered: int,
        started: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._inflight = None
        if inflight.cancelled():  # the loop is shutting down; close() syncs what is left
            return
        exc = inflight.exception()
        if exc is not None:
            self._fail(exc)
            return
        took = time.monotonic() - started
        if took > SLOW_FLUSH_S:
            log.warning(
                "an fsync of host.db-wal took %.1f s: the disk is stalling; replies to writes "
                "wait for it",
                took,
            )
        self._covered(covered)
        if self.wanted > self.flushed and self._failed is None:
            self._begin(loop)  # commits made during that fsync: the next round

    def _covered(self, covered: int) -> None:
        self.rounds += 1
        if covered > self.flushed:
            self.flushed = covered
        waiting = []
        for target, waiter in self._waiters:
            if waiter.done():
                continue
            if target <= self.flushed:
                waiter.set_result(None)
            else:
                waiting.append((target, waiter))
        self._waiters = waiting

    def _fail(self, exc: BaseException) -> None:
        if self._failed is None:
            self._failed = f"{type(exc).__name__}: {exc}"
            log.critical(
                "host.db could not be synced to disk (%s); replies to writes fail until the "
                "host is restarted",
                self._failed,
            )
        for _, waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(self._error())
        self._waiters = []

    def _error(self) -> StorageFailed:
        return StorageFailed(
            f"host.db could not be synced to disk ({self._failed}), so this write may not be "
            "durable; check the disk (space, errors in the kernel log), then restart the host",
        )

    def _sync_wal(self) -> None:
        """fsync the WAL file (and, the first time we see this file, its directory)."""
        with self._io_lock:
            try:
                st = os.stat(self.wal)
            except FileNotFoundError:
                raise OSError(f"{self.wal} is missing while host.db is open (deleted?)") from None
            new = self._fd is None or self._ino != (st.st_dev, st.st_ino)
            if new:
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None
                fd = os.open(self.wal, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
                opened = os.fstat(fd)
                self._fd, self._ino = fd, (opened.st_dev, opened.st_ino)
            assert self._fd is not None
            self.sync(self._fd)
            if new:  # the entry of a new -wal file must survive a power cut too
                dir_fd = os.open(self.wal.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)

    def close(self) -> None:
        """Finish the round in flight, sync what is left, and let go of the descriptor."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._failed is None and self.wanted > self.flushed:
            with contextlib.suppress(StorageFailed):  # logged by _fail
                self.flush_sync()
        with self._io_lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


CHECKPOINT_PAGES = 1000  # SQLite's own auto-checkpoint threshold
INLINE_FACTOR = 4  # a WAL this many times over it is checkpointed on the writer itself
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024  # a WAL that grew past this is cut back after a restart
WAL_RESET_FIXED = (3, 51, 3)  # SQLite's WAL-reset race between connections, fixed here


class Checkpointer:
    """PASSIVE checkpoints of host.db, in a thread of their own with a connection of their
    own, started when the WAL holds `CHECKPOINT_PAGES` (the writer's wal hook counts them).
    Without a running event loop (the CLI, tests without one) it checkpoints inline, after
    the commit, as SQLite would."""

    def __init__(self, conn: apsw.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path
        self.pages = 0
        self.done = 0  # checkpoints run
        self.inline = 0  # of which on the writer's connection
        self._started_at = 0  # WAL pages when the last background checkpoint began
        self._other: apsw.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._inflight: asyncio.Future[None] | None = None
        conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        conn.set_wal_hook(self._hook)  # replaces SQLite's own auto-checkpoint

    @staticmethod
    def supported() -> bool:
        version = tuple(int(x) for x in apsw.sqlite_lib_version().split(".")[:3])
        return version >= WAL_RESET_FIXED

    def _hook(self, conn: apsw.Connection, name: str, pages: int) -> int:
        self.pages = pages
        return 0  # SQLITE_OK

    def after_commit(self) -> None:
        pages = self.pages
        if pages < self._started_at:  # the WAL restarted since the last checkpoint began
            self._started_at = 0
        if pages < CHECKPOINT_PAGES:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or pages >= CHECKPOINT_PAGES * INLINE_FACTOR:
            # No loop; or writes so steady that a checkpoint beside them never catches up
            # (a PASSIVE one copies what was there when it began; the WAL restarts only
            # once a checkpoint has copied everything): one on the writer, as SQLite would.
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self.done += 1
            self.inline += 1
            self._started_at = 0
            return
        if self._inflight is not None or pages - self._started_at < CHECKPOINT_PAGES // 4:
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="legion-checkpoint")
        self._started_at = pages
        inflight = loop.run_in_executor(self._executor, self._checkpoint)
        self._inflight = inflight
        inflight.add_done_callback(self._finished)

    def _checkpoint(self) -> None:
        if self._other is None:
            self._other = apsw.Connection(str(self.path))
            self._other.execute("PRAGMA synchronous=NORMAL")  # syncs at checkpoints
            self._other.execute("PRAGMA busy_timeout=5000")
        self._other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _finished(self, inflight: asyncio.Future[None]) -> None:
        self._inflight = None
        if inflight.cancelled():
            return
        exc = inflight.exception()
        if exc is not None:
            log.warning("a checkpoint of host.db failed (%s); the next one retries", exc)
            return
        self.done += 1

    def close(self) -> None:
        """Before the writer's connection closes (its close checkpoints what is left)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._other is not None:
            self._other.close()
            self._other = None
