"""The append-only, hash-chained audit log.

Each record carries the hash of the one before it; the hash covers the record's
sequence number, so an edited, deleted or reordered record breaks the chain at
the first bad record, which `verify` names. Truncating the newest records cannot
be seen from inside the database alone: `verify` prints the head hash so an
operator can anchor it elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import apsw

from legion.store import committed

GENESIS = "0" * 64


def record_hash(
    prev_hash: str,
    seq: int,
    ts: float,
    actor: str,
    action: str,
    target: str,
    decision: str,
    detail: str,
) -> str:
    material = json.dumps(
        [prev_hash, seq, repr(ts), actor, action, target, decision, detail],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(material.encode()).hexdigest()


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


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    head_hash: str
    bad_seq: int | None = None
    reason: str | None = None


class AuditLog:
    """Appends records to the `audit` table of host.db. Owned by the host process."""

    def __init__(
        self,
        conn: apsw.Connection,
        *,
        clock: Callable[[], float] = time.time,
        on_append: Callable[[AuditRecord], None] | None = None,
        redact: Callable[[str], str] | None = None,
        full_sync: bool = True,
    ) -> None:
        self.conn = conn
        self.full_sync = full_sync
        self.redact = redact
        self.clock = clock
        self.on_append = on_append
        row = conn.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        self._seq, self._head = (int(row[0]), str(row[1])) if row else (0, GENESIS)

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

        `durable=False` skips the fsync of this commit; the caller then owes a durable
        commit right after (any later fsynced commit makes every earlier one durable).
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
        with committed(self.conn, fsync=durable or not self.full_sync) as conn:
            conn.execute(
                "INSERT INTO audit(seq, ts, actor, action, target, decision, detail, prev_hash,"
                " hash) VALUES (?,?,?,?,?,?,?,?,?)",
                (seq, ts, actor, action, target, decision, detail_text, self._head, digest),
            )
        record = AuditRecord(seq, ts, actor, action, target, decision, detail, self._head, digest)
        self._seq, self._head = seq, digest
        if self.on_append is not None:
            self.on_append(record)
        return record


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


def _iter_raw(conn: apsw.Connection) -> Iterator[tuple[Any, ...]]:
    # rowid order is physical insertion order; seq order is the claimed order.
    yield from conn.execute(
        "SELECT seq, ts, actor, action, target, decision, detail, prev_hash, hash, rowid "
        "FROM audit ORDER BY rowid"
    )


def verify(conn: apsw.Connection) -> VerifyResult:
    """Walk the chain; name the first record that was edited, deleted or reordered."""
    prev = GENESIS
    expected_seq = 1
    checked = 0
    for seq, ts, actor, action, target, decision, detail, prev_hash, digest, _rowid in _iter_raw(
        conn
    ):
        if seq != expected_seq:
            why = "a record before it was deleted" if seq > expected_seq else "records reordered"
            return VerifyResult(
                False, checked, prev, int(seq), f"expected seq {expected_seq}, found {seq}: {why}"
            )
        if prev_hash != prev:
            return VerifyResult(
                False, checked, prev, int(seq), "prev_hash does not match the record before it"
            )
        if record_hash(prev, seq, ts, actor, action, target, decision, detail) != digest:
            return VerifyResult(
                False, checked, prev, int(seq), "contents do not match the record's hash (edited)"
            )
        prev = digest
        expected_seq += 1
        checked += 1
    return VerifyResult(True, checked, prev)
