"""The append-only, hash-chained audit log, with signed checkpoints and an anchor.

Each record carries the hash of the one before it; the hash covers the record's
sequence number, so an edited, deleted or reordered record breaks the chain at the
first bad record, which `verify` names.

A chain of plain SHA-256 can be rewritten whole by anyone who can edit host.db, and its
newest records can be cut off. So the host signs it: a checkpoint (`audit_checkpoints`)
says "record `seq` has hash `hash`", with an HMAC-SHA256 under a key held by the vault
(`Vault.audit_key`), not in host.db. One is written in the same transaction as every
`CHECKPOINT_EVERY`-th record, and one every `CHECKPOINT_EVERY_S` seconds for the newest
records; each timed one is also copied, fsynced, to the anchor file
(`LEGION_HOME/audit.anchor`), so cutting records off the end is seen too. The host
checks the anchor when it starts, and records what it finds wrong (`audit.tampered`).
docs/audit.md says exactly what is and is not detected.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw

from legion.groupcommit import StorageFailed
from legion.mesh.audit_chain import (
    CHECKPOINT_EVERY,
    CHECKPOINT_EVERY_S,
    GENESIS,
    TAMPERED,
    AnchorUnreadable,
    Checkpoint,
    checkpoint_mac,
    read_anchor,
    record_hash,
    tables,
    when,
    write_anchor,
)
from legion.mesh.audit_verify import Signing, VerifyResult, verify
from legion.store import AUDIT_CHECKPOINTS_DDL, AUDIT_DDL, Store, committed

__all__ = [
    "CHECKPOINT_EVERY",
    "CHECKPOINT_EVERY_S",
    "GENESIS",
    "TAMPERED",
    "AuditLog",
    "AuditRecord",
    "Checkpoint",
    "Signing",
    "VerifyResult",
    "query",
    "record_hash",
    "verify",
]

log = logging.getLogger("legion.audit")


@dataclass(frozen=True)
class AuditRecord:
    seq: int
    ts: float
    actor: str
    action: str
    target: str
    decision: str
    detail: dict[str, Any]
    prev_hash: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts,
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "decision": self.decision,
            "detail": self.detail,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


class AuditLog:
    """Appends records to the `audit` table of host.db. Owned by the host process.

    With a `key` (the host passes the vault's audit key), checkpoints are signed and the
    anchor at `anchor_path` is checked at once (see the module docstring);
    `expect_anchor=False` says this is a new log (the vault made the key just now, or
    host.db is new), so a missing anchor is no finding. Without a key (tests of other
    components), records are only hash-chained.

    Given the host's `Store`, records are committed through it (group commit: a reply
    that reports an action waits for the fsync covering its record); given a bare
    connection, each durable record is committed at synchronous=FULL.
    """

    def __init__(
        self,
        store: Store | apsw.Connection,
        *,
        clock: Callable[[], float] = time.time,
        on_append: Callable[[AuditRecord], None] | None = None,
        redact: Callable[[str], str] | None = None,
        full_sync: bool = True,
        key: bytes | None = None,
        anchor_path: Path | None = None,
        expect_anchor: bool = True,
    ) -> None:
        self.store = store if isinstance(store, Store) else None
        conn = store.conn if isinstance(store, Store) else store
        self.conn = conn
        self.full_sync = full_sync
        self.redact = redact
        self.clock = clock
        self.on_append = on_append
        self.key = key
        self.anchor_path = anchor_path
        missing = []
        if key is not None:  # a dropped table must not stop the host: recreate, record
            missing = sorted({"audit", "audit_checkpoints"} - tables(conn))
            if missing:
                with self._tx(True):
                    conn.execute(AUDIT_DDL + AUDIT_CHECKPOINTS_DDL)
        row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        self._seq, self._head = (int(row[0]), str(row[1])) if row else (0, GENESIS)
        self._signed_seq = 0
        self._anchored: Checkpoint | None = None
        if key is not None:
            row = conn.execute("SELECT MAX(seq) FROM audit_checkpoints").fetchone()
            self._signed_seq = int(row[0]) if row and row[0] is not None else 0
            if anchor_path is not None:
                self._check_anchor(key, anchor_path, expect_anchor, missing)

    @property
    def head(self) -> tuple[int, str]:
        return self._seq, self._head

    @property
    def anchored_seq(self) -> int | None:
        """The record the anchor file names now (None before the first anchor)."""
        return self._anchored.seq if self._anchored is not None else None

    def append(
        self,
        actor: str,
        action: str,
        target: str,
        decision: str,
        *,
        durable: bool = True,
        **detail: Any,
    ) -> AuditRecord:
        """Append and commit one record (committed before the caller goes on).

        `durable=False`: this commit starts no fsync of its own; the caller then owes a
        durable commit right after (any later fsync makes every earlier commit durable).
        """
        seq = self._seq + 1
        ts = self.clock()
        detail_text = json.dumps(detail, sort_keys=True, separators=(",", ":"), default=str)
        if self.redact is not None:  # no vault value is ever written to the audit log
            target = self.redact(target)
            redacted = self.redact(detail_text)
            if redacted != detail_text:
                detail_text = redacted
                detail = json.loads(detail_text)
        digest = record_hash(self._head, seq, ts, actor, action, target, decision, detail_text)
        sign = self.key is not None and seq - self._signed_seq >= CHECKPOINT_EVERY
        with self._tx(durable) as conn:
            conn.execute(
                "INSERT INTO audit(seq, ts, actor, action, target, decision, detail, prev_hash,"
                " hash) VALUES (?,?,?,?,?,?,?,?,?)",
                (seq, ts, actor, action, target, decision, detail_text, self._head, digest),
            )
            if sign:  # the same transaction: a checkpoint is never missing after a crash
                assert self.key is not None
                conn.execute(
                    "INSERT OR REPLACE INTO audit_checkpoints(seq, hash, ts, mac) VALUES (?,?,?,?)",
                    (seq, digest, ts, checkpoint_mac(self.key, seq, digest, ts)),
                )
        record = AuditRecord(seq, ts, actor, action, target, decision, detail, self._head, digest)
        self._seq, self._head = seq, digest
        if sign:
            self._signed_seq = seq
        if self.on_append is not None:
            self.on_append(record)
        return record

    # --- signing and anchoring ----------------------------------------------------------

    @contextmanager
    def _tx(self, durable: bool) -> Iterator[apsw.Connection]:
        if self.store is not None:
            with self.store.tx(durable=durable) as conn:
                yield conn
        else:
            with committed(self.conn, fsync=durable or not self.full_sync) as conn:
                yield conn

    def checkpoint(self) -> Checkpoint:
        """Sign the head now (committed at FULL on a bare connection; through the store, the
        caller syncs it, `_synced_now` or `anchor_now`, before an anchor may name it)."""
        assert self.key is not None
        ts = self.clock()
        cp = Checkpoint(
            self._seq, self._head, ts, checkpoint_mac(self.key, self._seq, self._head, ts)
        )
        if cp.seq > 0:
            with self._tx(True) as conn:
                conn.execute(
                    "INSERT OR REPLACE INTO audit_checkpoints(seq, hash, ts, mac) VALUES (?,?,?,?)",
                    (cp.seq, cp.hash, cp.ts, cp.mac),
                )
        self._signed_seq = cp.seq
        return cp

    def _synced_now(self) -> None:
        """Every commit so far on disk, blocking (start and stop): whatever the durability,
        an anchor never names a record a power cut could undo."""
        if self.store is not None:
            self.store.sync_all_now()

    def _due(self) -> bool:
        return (
            self.key is not None
            and self.anchor_path is not None
            and (self._anchored is None or self._anchored.seq != self._seq)
        )

    async def anchor_now(self) -> None:
        """Sign the newest records and copy the checkpoint to the anchor file (off the loop)."""
        if not self._due():
            return
        assert self.anchor_path is not None
        cp = self.checkpoint()
        if self.store is not None:
            await self.store.sync_all()
        await asyncio.to_thread(write_anchor, self.anchor_path, cp)
        self._anchored = cp

    async def anchor_forever(self, every_s: float | None = None) -> None:
        """The host's task: sign and anchor every `every_s` seconds (CHECKPOINT_EVERY_S)
        while records arrive."""
        every_s = CHECKPOINT_EVERY_S if every_s is None else every_s
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.anchor_now()
            except Exception:
                log.exception("could not sign or anchor the audit log; retrying")

    def close(self) -> None:
        """Sign and anchor the last records (the host calls this as it stops)."""
        if not self._due():
            return
        assert self.anchor_path is not None
        try:
            cp = self.checkpoint()
            self._synced_now()
            write_anchor(self.anchor_path, cp)
            self._anchored = cp
        except (OSError, apsw.Error, StorageFailed):
            log.exception("could not anchor the audit log at shutdown")

    def _check_anchor(
        self, key: bytes, path: Path, expect_anchor: bool, missing: list[str]
    ) -> None:
        """At start: does the anchor still match host.db? If not, record what was found
        (the evidence stays in the chain, so `verify` keeps reporting it), keep the old
        anchor file beside the new one, and anchor the log as it is now."""
        problem = ""
        old: Checkpoint | None = None
        try:
            old = read_anchor(path)
        except AnchorUnreadable as exc:
            problem = str(exc)
        if missing:
            problem = f"host.db had no {' and no '.join(missing)} table (dropped?)"
        elif problem:
            pass
        elif old is None:
            if expect_anchor or self._signed_seq > 0:
                problem = (
                    f"the anchor file {path} is missing, but a host that signs this log ran "
                    "before; records may have been cut off the end"
                )
            elif self._seq > 0:
                log.info(
                    "signing an audit log that has no checkpoints yet",
                    extra={"fields": {"records": self._seq}},
                )
        elif not old.valid(key):
            problem = f"the anchor file {path} does not verify (forged, or from another vault)"
        elif old.seq > 0:
            row = self.conn.execute("SELECT hash FROM audit WHERE seq = ?", (old.seq,)).fetchone()
            if row is None:
                problem = (
                    f"the anchor names record {old.seq} (signed {when(old.ts)}) but the log "
                    f"ends at seq {self._seq}: records were cut off the end, or host.db was "
                    "restored from an older copy"
                )
            elif row[0] != old.hash:
                problem = f"record {old.seq} does not match the anchor: the log was rewritten"
        if problem:
            stale = self.conn.execute(
                "SELECT COUNT(*), MIN(seq), MAX(seq) FROM audit_checkpoints WHERE seq > ?",
                (self._seq,),
            ).fetchone()
            with self._tx(True):  # checkpoints of records that are gone would name the new ones
                self.conn.execute("DELETE FROM audit_checkpoints WHERE seq > ?", (self._seq,))
            row = self.conn.execute("SELECT MAX(seq) FROM audit_checkpoints").fetchone()
            self._signed_seq = int(row[0]) if row and row[0] is not None else 0
            kept = ""
            if old is not None or path.exists():
                kept = f"{path}.bad-{int(self.clock())}"
                os.replace(path, kept)
            log.error(
                "the audit log was tampered with",
                extra={"fields": {"problem": problem, "old_anchor_kept_as": kept}},
            )
            self.append(
                "host",
                TAMPERED,
                "audit",
                "deny",
                reason=problem,
                anchor=old.as_dict() if old else None,
                old_anchor_kept_as=kept or None,
                stale_checkpoints=int(stale[0]) if stale else 0,
            )
        cp = self.checkpoint()
        self._synced_now()
        write_anchor(path, cp)
        self._anchored = cp


def _row_to_record(row: tuple[Any, ...]) -> AuditRecord:
    seq, ts, actor, action, target, decision, detail, prev_hash, digest = row
    try:
        parsed = json.loads(detail)
    except ValueError:
        parsed = {"unparseable": detail}
    return AuditRecord(
        int(seq), float(ts), actor, action, target, decision, parsed, prev_hash, digest
    )


def query(
    conn: apsw.Connection,
    *,
    actor: str | None = None,
    since: float | None = None,
    limit: int | None = None,
    decision: str | None = None,
) -> list[AuditRecord]:
    """Records in order, optionally filtered; `limit` keeps the newest ones."""
    where: list[str] = []
    args: list[Any] = []
    if actor is not None:
        where.append("actor = ?")
        args.append(actor)
    if decision is not None:
        where.append("decision = ?")
        args.append(decision)
    if since is not None:
        where.append("ts >= ?")
        args.append(since)
    sql = "SELECT seq, ts, actor, action, target, decision, detail, prev_hash, hash FROM audit"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY seq DESC"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    rows = [_row_to_record(r) for r in conn.execute(sql, tuple(args))]
    rows.reverse()
    return rows
