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
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw

from legion.fsutil import atomic_write
from legion.store import AUDIT_CHECKPOINTS_DDL, AUDIT_DDL, committed

log = logging.getLogger("legion.audit")

GENESIS = "0" * 64
CHECKPOINT_EVERY = 100  # records between signed checkpoints, at most
CHECKPOINT_EVERY_S = 5.0  # the newest records are signed and anchored this often
TAMPERED = "audit.tampered"  # what the host records when it finds the log cut or rewritten
ANCHOR_VERSION = 1
_HEX64 = re.compile(r"[0-9a-f]{64}")


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


def checkpoint_mac(key: bytes, seq: int, digest: str, ts: float) -> str:
    material = f"legion-audit-checkpoint:{ANCHOR_VERSION}:{seq}:{digest}:{ts!r}".encode()
    return hmac.new(key, material, hashlib.sha256).hexdigest()


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
class Checkpoint:
    """Record `seq` had hash `hash` at `ts`, signed (`mac`). Seq 0 is the empty chain."""

    seq: int
    hash: str
    ts: float
    mac: str

    def valid(self, key: bytes) -> bool:
        if not _HEX64.fullmatch(self.mac):  # compare_digest raises on non-ASCII text
            return False
        return hmac.compare_digest(self.mac, checkpoint_mac(key, self.seq, self.hash, self.ts))

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "hash": self.hash, "ts": self.ts, "mac": self.mac}


class AnchorUnreadable(Exception):
    """The anchor file exists but does not hold an anchor."""


def read_anchor(path: Path) -> Checkpoint | None:
    """The anchor in `path`, or None when there is no file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise AnchorUnreadable(f"cannot read the anchor file {path}: {exc}") from None
    try:
        data = json.loads(text)
        if data.get("version") != ANCHOR_VERSION:
            raise ValueError(f"version {data.get('version')!r}")
        anchor = Checkpoint(int(data["seq"]), str(data["hash"]), float(data["ts"]), data["mac"])
        if not isinstance(anchor.mac, str) or not _HEX64.fullmatch(anchor.mac):
            raise ValueError("mac is not 64 hex digits")
        if not _HEX64.fullmatch(anchor.hash) or anchor.seq < 0:
            raise ValueError("hash or seq")
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise AnchorUnreadable(f"the anchor file {path} is damaged ({exc})") from None
    return anchor


def write_anchor(path: Path, anchor: Checkpoint) -> None:
    """Atomically replace the anchor file (fsynced): blocking, so the host calls it off
    the loop except at start and stop."""
    atomic_write(path, json.dumps({"version": ANCHOR_VERSION, **anchor.as_dict()}) + "\n")


@contextmanager
def _synced(conn: apsw.Connection) -> Iterator[apsw.Connection]:
    """A transaction whose commit is fsynced even on a connection at synchronous=NORMAL
    (durability "normal"), so an anchor never names a record a power cut could undo; the
    fsync makes every earlier commit durable too."""
    row = conn.execute("PRAGMA synchronous").fetchone()
    level = int(row[0]) if row else 2
    if level < 2:
        conn.execute("PRAGMA synchronous=FULL")
    try:
        with conn:
            yield conn
    finally:
        if level < 2:
            conn.execute(f"PRAGMA synchronous={level}")


class AuditLog:
    """Appends records to the `audit` table of host.db. Owned by the host process.

    With a `key` (the host passes the vault's audit key), checkpoints are signed and the
    anchor at `anchor_path` is checked at once (see the module docstring);
    `expect_anchor=False` says this is a new log (the vault made the key just now, or
    host.db is new), so a missing anchor is no finding. Without a key (tests of other
    components), records are only hash-chained.
    """

    def __init__(
        self,
        conn: apsw.Connection,
        *,
        clock: Callable[[], float] = time.time,
        on_append: Callable[[AuditRecord], None] | None = None,
        redact: Callable[[str], str] | None = None,
        full_sync: bool = True,
        key: bytes | None = None,
        anchor_path: Path | None = None,
        expect_anchor: bool = True,
    ) -> None:
        self.conn = conn
        self.full_sync = full_sync
        self.redact = redact
        self.clock = clock
        self.on_append = on_append
        self.key = key
        self.anchor_path = anchor_path
        missing = []
        if key is not None:  # a dropped table must not stop the host: recreate, record
            missing = sorted({"audit", "audit_checkpoints"} - _tables(conn))
            if missing:
                with conn:
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
        sign = self.key is not None and seq - self._signed_seq >= CHECKPOINT_EVERY
        with committed(self.conn, fsync=durable or not self.full_sync) as conn:
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

    def checkpoint(self) -> Checkpoint:
        """Sign the head now, in an fsynced commit (the anchor may name it)."""
        assert self.key is not None
        ts = self.clock()
        cp = Checkpoint(
            self._seq, self._head, ts, checkpoint_mac(self.key, self._seq, self._head, ts)
        )
        if cp.seq > 0:
            with _synced(self.conn) as conn:
                conn.execute(
                    "INSERT OR REPLACE INTO audit_checkpoints(seq, hash, ts, mac) VALUES (?,?,?,?)",
                    (cp.seq, cp.hash, cp.ts, cp.mac),
                )
        self._signed_seq = cp.seq
        return cp

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
        await asyncio.to_thread(write_anchor, self.anchor_path, cp)
        self._anchored = cp

    async def anchor_forever(self, every_s: float = CHECKPOINT_EVERY_S) -> None:
        """The host's task: sign and anchor every `every_s` seconds while records arrive."""
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
            write_anchor(self.anchor_path, cp)
            self._anchored = cp
        except (OSError, apsw.Error):
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
                    f"the anchor names record {old.seq} (signed {_when(old.ts)}) but the log "
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
            with self.conn:  # checkpoints of records that are gone would name the new ones
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
        write_anchor(path, cp)
        self._anchored = cp


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


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
) -> list[AuditRecord]:
    """Records in order, optionally filtered; `limit` keeps the newest ones."""
    where: list[str] = []
    args: list[Any] = []
    if actor is not None:
        where.append("actor = ?")
        args.append(actor)
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


# --- verify ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signing:
    """What `verify` knows of the signing key: whether the vault holds one (`present`),
    the key when it could be opened, and otherwise why not (`problem`)."""

    key: bytes | None
    present: bool = True
    problem: str = ""


@dataclass(frozen=True)
class VerifyResult:
    """`status`: ok, broken (something was edited, cut or dropped), or unverified (the
    chain is intact but its signatures could not be checked, `reason` says why)."""

    ok: bool
    checked: int
    head_hash: str
    bad_seq: int | None = None
    reason: str | None = None
    status: str = "ok"
    head_seq: int = 0
    signed_seq: int | None = None  # the newest record a valid checkpoint vouches for
    unsigned: int = 0  # records after it
    anchor_seq: int | None = None
    expect_head_seq: int | None = None  # where the --expect-head hash was found
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _tables(conn: apsw.Connection) -> set[str]:
    return {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def verify(
    conn: apsw.Connection,
    *,
    signing: Signing | None = None,
    anchor_path: Path | None = None,
    expect_head: str | None = None,
) -> VerifyResult:
    """Walk the chain; name the first record that was edited, deleted or reordered.

    With `signing` (what `legion audit --verify` passes), also: every checkpoint must
    match its record and its signature, checkpoints at most `CHECKPOINT_EVERY` records
    apart and behind the head, the anchor at `anchor_path` present, signed and in the
    chain, and no `audit.tampered` record. `expect_head`: a head hash (or its first 16+
    hex digits) the operator wrote down earlier, which must still be in the chain.
    Never raises on a damaged database: a missing table is a broken log.
    """
    anchor: Checkpoint | None = None
    anchor_problem = ""
    if signing is not None and anchor_path is not None:
        try:  # read before the database: the host writes the anchor after the checkpoint
            anchor = read_anchor(anchor_path)
        except AnchorUnreadable as exc:
            anchor_problem = str(exc)
    began = False
    if not conn.in_transaction:
        conn.execute("BEGIN")  # one snapshot for the chain and its checkpoints
        began = True
    try:
        return _verify(conn, signing, anchor_path, anchor, anchor_problem, expect_head)
    except apsw.Error as exc:
        return VerifyResult(False, 0, GENESIS, None, f"host.db cannot be read: {exc}", "broken")
    except (ValueError, TypeError, OverflowError) as exc:  # a value of the wrong type
        return VerifyResult(
            False, 0, GENESIS, None, f"host.db holds a damaged value: {exc}", "broken"
        )
    finally:
        if began:
            conn.execute("COMMIT")


def _verify(
    conn: apsw.Connection,
    signing: Signing | None,
    anchor_path: Path | None,
    anchor: Checkpoint | None,
    anchor_problem: str,
    expect_head: str | None,
) -> VerifyResult:
    tables = _tables(conn)
    if "audit" not in tables:
        return VerifyResult(
            False, 0, GENESIS, None, "the audit table is missing from host.db (dropped?)", "broken"
        )
    key = signing.key if signing is not None else None
    checkpoints: dict[int, Checkpoint] = {}
    if signing is not None and "audit_checkpoints" not in tables and signing.present:
        return VerifyResult(
            False,
            0,
            GENESIS,
            None,
            "the audit_checkpoints table is missing from host.db (dropped?)",
            "broken",
        )
    if signing is not None and "audit_checkpoints" in tables:
        checkpoints = {
            int(r[0]): Checkpoint(int(r[0]), str(r[1]), float(r[2]), str(r[3]))
            for r in conn.execute("SELECT seq, hash, ts, mac FROM audit_checkpoints")
        }
    expect = expect_head.lower() if expect_head else None
    expect_seq: int | None = None
    tampered: tuple[int, str] | None = None
    signed_seq = 0
    prev = GENESIS
    expected_seq = 1
    checked = 0

    def broken(seq: int | None, reason: str) -> VerifyResult:
        return VerifyResult(
            False, checked, prev, seq, reason, "broken", expected_seq - 1, signed_seq or None
        )

    for row in conn.execute(
        # rowid order is physical insertion order; seq order is the claimed order.
        "SELECT seq, ts, actor, action, target, decision, detail, prev_hash, hash "
        "FROM audit ORDER BY rowid"
    ):
        seq, ts, actor, action, target, decision, detail, prev_hash, digest = row
        if seq != expected_seq:
            why = "a record before it was deleted" if seq > expected_seq else "records reordered"
            return broken(int(seq), f"expected seq {expected_seq}, found {seq}: {why}")
        if prev_hash != prev:
            return broken(int(seq), "prev_hash does not match the record before it")
        if record_hash(prev, seq, ts, actor, action, target, decision, detail) != digest:
            return broken(int(seq), "contents do not match the record's hash (edited)")
        cp = checkpoints.get(seq)
        if cp is not None:
            if cp.hash != digest:
                return broken(int(seq), "the checkpoint of this record names another hash")
            if key is not None and not cp.valid(key):
                return broken(
                    int(seq),
                    "the checkpoint of this record does not verify: the chain was rewritten "
                    "without the signing key",
                )
            if signed_seq and seq - signed_seq > CHECKPOINT_EVERY:
                return broken(
                    int(seq),
                    f"{seq - signed_seq} records since the checkpoint at seq {signed_seq} "
                    f"(at most {CHECKPOINT_EVERY}): checkpoints were deleted",
                )
            signed_seq = int(seq)
        if anchor is not None and seq == anchor.seq and digest != anchor.hash:
            return broken(int(seq), "this record does not match the anchor: the log was rewritten")
        if expect is not None and expect_seq is None and digest.startswith(expect):
            expect_seq = int(seq)
        if action == TAMPERED and actor == "host" and tampered is None:
            found = _row_to_record(row).detail
            what = found.get("reason") if isinstance(found, dict) else found
            tampered = (int(seq), f"{_when(float(ts))}: {what}")
        prev = digest
        expected_seq += 1
        checked += 1
    head = checked
    if signing is not None:
        beyond = sorted(s for s in checkpoints if s > head)
        if beyond:
            return broken(
                beyond[0],
                f"a checkpoint vouches for record {beyond[0]} but the log ends at seq {head}: "
                "records were cut off the end",
            )
        if anchor_problem:
            return broken(None, anchor_problem)
        if anchor is None and (signing.present or checkpoints):
            return broken(
                None,
                f"the anchor file {anchor_path} is missing: records may have been cut off the end",
            )
        if anchor is not None:
            if anchor.seq > head:
                return broken(
                    anchor.seq,
                    f"the anchor (signed {_when(anchor.ts)}) names record {anchor.seq} but the "
                    f"log ends at seq {head}: records were cut off the end",
                )
            if anchor.seq == 0 and anchor.hash != GENESIS:
                return broken(None, "the anchor names seq 0 with a hash that is not the start")
            if key is not None and not anchor.valid(key):
                return broken(None, f"the anchor file {anchor_path} does not verify (forged?)")
        if not signing.present and (checkpoints or anchor is not None):
            return broken(
                None,
                "the log is signed but the vault holds no audit key: vault.db was replaced "
                "or its key removed",
            )
        if head - signed_seq > CHECKPOINT_EVERY and (signing.present or signed_seq):
            return broken(
                None,
                f"{head - signed_seq} records after the last checkpoint (at most "
                f"{CHECKPOINT_EVERY}): checkpoints were deleted",
            )
        if tampered is not None:
            return broken(tampered[0], f"the host found the log tampered with at {tampered[1]}")
    if expect is not None and expect_seq is None:
        return broken(
            None,
            f"the head {expect_head} you expected is not in the chain: records were cut "
            "off the end or the chain was rewritten",
        )
    result = VerifyResult(
        True,
        checked,
        prev,
        head_seq=head,
        signed_seq=signed_seq if signing is not None else None,
        unsigned=head - signed_seq if signing is not None else 0,
        anchor_seq=anchor.seq if anchor is not None else None,
        expect_head_seq=expect_seq,
    )
    if signing is not None and (key is None or not signing.present):
        why = signing.problem or "the signing key is not available"
        return dataclasses.replace(
            result,
            ok=False,
            status="unverified",
            reason=f"{why}; the hash chain itself is intact, but its signatures were not checked",
        )
    return result
