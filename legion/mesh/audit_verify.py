"""`legion audit --verify`: walk the chain, its signed checkpoints and the anchor.

docs/audit.md says exactly what is and is not detected.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw

from legion.mesh.audit_archive import Seal, read_seals, verify_archive
from legion.mesh.audit_chain import (
    CHECKPOINT_EVERY,
    GENESIS,
    TAMPERED,
    AnchorDenied,
    AnchorUnreadable,
    Checkpoint,
    read_anchor,
    record_hash,
    tables,
    when,
)

_DENIED = (apsw.ReadOnlyError, apsw.CantOpenError, apsw.PermissionsError, apsw.AuthError)


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
    first_seq: int | None = None  # the oldest record still in host.db
    sealed_seq: int = 0  # records up to this one were archived (and sealed)
    archives_checked: int = 0  # archive files found and verified against their seals
    archives_missing: list[str] = field(default_factory=list)  # sealed, file not found

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def verify(
    conn: apsw.Connection,
    *,
    signing: Signing | None = None,
    anchor_path: Path | None = None,
    expect_head: str | None = None,
    archive_dir: Path | None = None,
) -> VerifyResult:
    """Walk the chain; name the first record that was edited, deleted or reordered.

    Records archived by retention are stood for by their seals (`audit_seals`): the seals
    must chain from the first record to where host.db's records begin, each signed; with
    `archive_dir`, every archive found there is checked against its seal (a missing one is
    listed, not an error: archives are the operator's to remove).

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
        except AnchorDenied as exc:
            signing = dataclasses.replace(signing, key=None, problem=str(exc))
            anchor_path = None  # nothing can be said about it
        except AnchorUnreadable as exc:
            anchor_problem = str(exc)
    began = False
    try:
        if not conn.in_transaction:
            conn.execute("BEGIN")  # one snapshot for the chain and its checkpoints
            began = True
        return _verify(conn, signing, anchor_path, anchor, anchor_problem, expect_head, archive_dir)
    except _DENIED as exc:  # this user may not read host.db (or its -shm): not tampering
        reason = f"cannot read host.db ({exc}); run as the user the host runs as"
        return VerifyResult(False, 0, GENESIS, None, reason, "unverified")
    except apsw.Error as exc:
        return VerifyResult(False, 0, GENESIS, None, f"host.db cannot be read: {exc}", "broken")
    except (ValueError, TypeError, OverflowError) as exc:  # a value of the wrong type
        return VerifyResult(
            False, 0, GENESIS, None, f"host.db holds a damaged value: {exc}", "broken"
        )
    finally:
        if began:
            with contextlib.suppress(apsw.Error):
                conn.execute("COMMIT")


def _verify(
    conn: apsw.Connection,
    signing: Signing | None,
    anchor_path: Path | None,
    anchor: Checkpoint | None,
    anchor_problem: str,
    expect_head: str | None,
    archive_dir: Path | None,
) -> VerifyResult:
    present = tables(conn)
    if "audit" not in present:
        return VerifyResult(
            False, 0, GENESIS, None, "the audit table is missing from host.db (dropped?)", "broken"
        )
    key = signing.key if signing is not None else None
    checkpoints: dict[int, Checkpoint] = {}
    if signing is not None and "audit_checkpoints" not in present and signing.present:
        return VerifyResult(
            False,
            0,
            GENESIS,
            None,
            "the audit_checkpoints table is missing from host.db (dropped?)",
            "broken",
        )
    if signing is not None and "audit_checkpoints" in present:
        checkpoints = {
            int(r[0]): Checkpoint(int(r[0]), str(r[1]), float(r[2]), str(r[3]))
            for r in conn.execute("SELECT seq, hash, ts, mac FROM audit_checkpoints")
        }
    expect = expect_head.lower() if expect_head else None
    expect_seq: int | None = None
    tampered: tuple[int, str] | None = None
    seals = read_seals(conn)
    sealed = seals[-1].last if seals else 0
    seal_at = {s.last: s for s in seals}
    signed_seq = sealed  # a seal is a signed statement about the record it ends with
    prev = seals[-1].hash if seals else GENESIS
    expected_seq = sealed + 1
    checked = 0
    first_seq: int | None = None

    def broken(seq: int | None, reason: str) -> VerifyResult:
        return VerifyResult(
            False,
            checked,
            prev,
            seq,
            reason,
            "broken",
            expected_seq - 1,
            signed_seq or None,
            first_seq=first_seq,
            sealed_seq=sealed,
        )

    problem = _seal_problem(seals, key if signing is not None else None)
    if problem is not None:
        return broken(*problem)
    if expect is not None:
        expect_seq = next((s.last for s in seals if s.hash.startswith(expect)), None)

    for row in conn.execute(
        # rowid order is physical insertion order; seq order is the claimed order.
        "SELECT seq, ts, actor, action, target, decision, detail, prev_hash, hash "
        "FROM audit ORDER BY rowid"
    ):
        seq, ts, actor, action, target, decision, detail, prev_hash, digest = row
        if first_seq is None:
            first_seq = int(seq)
            if 1 <= seq <= sealed:  # a pruning pass cut short: archived records still here
                expected_seq, prev, signed_seq = int(seq), str(prev_hash), int(seq) - 1
        if seq != expected_seq:
            why = "a record before it was deleted" if seq > expected_seq else "records reordered"
            return broken(int(seq), f"expected seq {expected_seq}, found {seq}: {why}")
        if prev_hash != prev:
            return broken(int(seq), "prev_hash does not match the record before it")
        if record_hash(prev, seq, ts, actor, action, target, decision, detail) != digest:
            return broken(int(seq), "contents do not match the record's hash (edited)")
        sealed_here = seal_at.get(seq)
        if sealed_here is not None:
            if sealed_here.hash != digest:
                return broken(int(seq), "this record does not match the seal of its segment")
            signed_seq = int(seq)
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
            try:
                found = json.loads(detail)
            except ValueError:
                found = detail
            what = found.get("reason") if isinstance(found, dict) else found
            tampered = (int(seq), f"{when(float(ts))}: {what}")
        prev = digest
        expected_seq += 1
        checked += 1
    head = expected_seq - 1
    archives_checked, archives_missing = 0, list[str]()
    if archive_dir is not None and seals:
        try:
            archives_checked, archives_missing, archived_expect = _check_archives(
                seals, archive_dir, key, expect
            )
        except _Broken as exc:
            return broken(exc.seq, exc.reason)
        if expect is not None and expect_seq is None:
            expect_seq = archived_expect
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
        if anchor is None and anchor_path is not None and (signing.present or checkpoints):
            return broken(
                None,
                f"the anchor file {anchor_path} is missing: records may have been cut off the end",
            )
        if anchor is not None:
            if 0 < anchor.seq < (first_seq or head + 1):
                named = seal_at.get(anchor.seq)
                if named is None or named.hash != anchor.hash:
                    return broken(
                        anchor.seq,
                        f"the anchor (signed {when(anchor.ts)}) names record {anchor.seq}, "
                        "archived before that anchor was written: an older anchor was put back",
                    )
            if anchor.seq > head:
                return broken(
                    anchor.seq,
                    f"the anchor (signed {when(anchor.ts)}) names record {anchor.seq} but the "
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
        first_seq=first_seq,
        sealed_seq=sealed,
        archives_checked=archives_checked,
        archives_missing=archives_missing,
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


_ARCHIVE_NAME = re.compile(r"audit-[0-9]+-[0-9]+\.jsonl\.gz")


def _seal_problem(seals: list[Seal], key: bytes | None) -> tuple[int, str] | None:
    """Do the seals chain from the first record, one segment after another, each signed?"""
    last, head = 0, GENESIS
    for seal in seals:
        where = f"the seal of archived records {seal.first}..{seal.last}"
        if seal.first != last + 1:
            return seal.first, (
                f"{where} does not follow the one before it (records {last + 1}.."
                f"{seal.first - 1} are accounted for by no seal): seals were deleted"
            )
        if seal.prev_hash != head or seal.count != seal.last - seal.first + 1:
            return seal.first, f"{where} does not chain on from the one before it"
        if key is not None and not seal.valid(key):
            return seal.first, f"{where} does not verify: forged, or from another vault"
        last, head = seal.last, seal.hash
    return None


class _Broken(Exception):
    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(reason)
        self.seq, self.reason = seq, reason


def _check_archives(
    seals: list[Seal], archive_dir: Path, key: bytes | None, expect: str | None
) -> tuple[int, list[str], int | None]:
    """Check each sealed archive present in `archive_dir` against its seal: (checked,
    missing files, the segment where `expect` was found); _Broken names what is wrong."""
    checked, missing = 0, []
    expect_seq: int | None = None
    for seal in seals:
        if not _ARCHIVE_NAME.fullmatch(seal.file):
            raise _Broken(
                seal.first, f"the seal of records {seal.first}..{seal.last} names no archive"
            )
        path = archive_dir / seal.file
        if not path.is_file():
            missing.append(seal.file)
            continue
        found = verify_archive(path, key, keep_hashes=expect is not None)
        if found.status == "broken":
            raise _Broken(seal.first, f"archive {seal.file}: {found.reason}")
        if found.seal is None or not Seal.from_dict(found.seal).same(seal):
            raise _Broken(seal.first, f"archive {seal.file} does not carry the seal host.db holds")
        if (
            expect is not None
            and expect_seq is None
            and any(h.startswith(expect) for h in found.hashes)
        ):
            expect_seq = seal.last  # somewhere in this segment
        checked += 1
    return checked, missing, expect_seq
