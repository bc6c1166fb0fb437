"""Archived audit segments: compressed files sealed with the chain's head, verifiable offline.

Retention (legion/retention.py) moves the oldest audit records out of host.db in segments.
A segment of records `first..last` is written to `LEGION_HOME/archive/audit-FIRST-LAST.jsonl.gz`
(0600, fsynced, renamed into place): one JSON object per record, exactly as stored, then a
last line `{"seal": ...}`. The seal says: these `count` records, whose lines hash to `sha256`,
follow the record whose hash is `prev_hash` and end with the record whose hash is `hash`;
an HMAC under the audit key (the one that signs checkpoints) vouches for it. The same seal
is committed to `audit_seals` in host.db before any record is deleted, so:

* `legion audit --verify` starts the chain of the records still in host.db at the newest
  seal's `hash` (the seal stands for every record it archived), checks that the seals chain
  one to the next from the first record, and checks every archive it finds against its seal;
* `legion db verify-archive FILE...` checks archives alone, anywhere (with the vault's key for
  the seal, or the hash chain only without it).

docs/audit.md, "Retention", says what this detects.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import hmac
import json
import os
import stat
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import apsw

from legion.mesh.audit_chain import _HEX64, GENESIS, record_hash

SEAL_VERSION = 1
ARCHIVE_GLOB = "audit-*-*.jsonl.gz"
COLUMNS = "seq, ts, actor, action, target, decision, detail, prev_hash, hash"
FIELDS = COLUMNS.split(", ")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def archive_name(first: int, last: int) -> str:
    return f"audit-{first}-{last}.jsonl.gz"


def seal_mac(
    key: bytes,
    first: int,
    last: int,
    prev_hash: str,
    digest: str,
    count: int,
    sha256: str,
    ts: float,
) -> str:
    material = (
        f"legion-audit-seal:{SEAL_VERSION}:{first}:{last}:{prev_hash}:{digest}:{count}:"
        f"{sha256}:{ts!r}"
    ).encode()
    return hmac.new(key, material, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Seal:
    """Records first..last (count of them) follow `prev_hash` and end at `hash`."""

    first: int
    last: int
    prev_hash: str
    hash: str
    count: int
    sha256: str
    file: str
    size: int  # bytes of the archive file (0 in the seal inside the file itself)
    ts: float
    mac: str

    def valid(self, key: bytes) -> bool:
        if not isinstance(self.mac, str) or not _HEX64.fullmatch(self.mac):
            return False
        expected = seal_mac(
            key, self.first, self.last, self.prev_hash, self.hash, self.count, self.sha256, self.ts
        )
        return hmac.compare_digest(self.mac, expected)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def same(self, other: Seal) -> bool:
        """The same seal, whatever the recorded file size."""
        return self.as_dict() | {"size": 0} == other.as_dict() | {"size": 0}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Seal:
        return cls(
            int(data["first"]),
            int(data["last"]),
            str(data["prev_hash"]),
            str(data["hash"]),
            int(data["count"]),
            str(data["sha256"]),
            str(data["file"]),
            int(data["size"]),
            float(data["ts"]),
            str(data["mac"]),
        )


def read_seals(conn: apsw.Connection) -> list[Seal]:
    """The seals in host.db, oldest first (none when the table is missing)."""
    names = {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "audit_seals" not in names:
        return []
    return [
        Seal(*row)
        for row in conn.execute(
            "SELECT first, last, prev_hash, hash, count, sha256, file, bytes, ts, mac "
            "FROM audit_seals ORDER BY last"
        )
    ]


class ArchiveBroken(Exception):
    """The records cannot be archived, or an archive does not verify (the message says why)."""


def export_segment(
    db_path: Path,
    first: int,
    last: int,
    after: str,
    archive_dir: Path,
    key: bytes,
    ts: float,
) -> Seal:
    """Write records first..last of host.db to a sealed archive (blocking: the host runs it
    in a thread, with its own read-only connection). The chain is checked as it is read,
    from `after` (the hash the segment must follow: the previous seal's, or the start): a
    broken chain is never archived (ArchiveBroken), so a seal never vouches for an edit."""
    archive_dir.mkdir(mode=0o700, exist_ok=True)
    name = archive_name(first, last)
    final = archive_dir / name
    fd, tmp_name = tempfile.mkstemp(dir=archive_dir, prefix=f".{name}.", suffix=".tmp")
    tmp = Path(tmp_name)  # mkstemp: 0600, a new name, never an existing file or link
    raw = os.fdopen(fd, "wb")
    conn: apsw.Connection | None = None
    digest = hashlib.sha256()
    count = 0
    prev_hash = ""
    head = ""
    try:
        conn = apsw.Connection(str(db_path), flags=apsw.SQLITE_OPEN_READONLY)
        with raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as out:
                expected = first
                for row in conn.execute(
                    f"SELECT {COLUMNS} FROM audit WHERE seq >= ? AND seq <= ? ORDER BY seq",
                    (first, last),
                ):
                    seq, rts, actor, action, target, decision, detail, prev, rhash = row
                    if seq != expected:
                        raise ArchiveBroken(f"record {expected} is missing from host.db")
                    if prev != (head if count else after):
                        raise ArchiveBroken(f"record {seq} does not follow the one before it")
                    computed = record_hash(prev, seq, rts, actor, action, target, decision, detail)
                    if computed != rhash:
                        raise ArchiveBroken(f"record {seq} does not match its hash (edited)")
                    if not count:
                        prev_hash = str(prev)
                    head = str(rhash)
                    line = json.dumps(dict(zip(FIELDS, row, strict=True))).encode() + b"\n"
                    digest.update(line)
                    out.write(line)
                    count += 1
                    expected += 1
                if count != last - first + 1:
                    raise ArchiveBroken(f"records {expected}..{last} are missing from host.db")
                sha = digest.hexdigest()
                mac = seal_mac(key, first, last, prev_hash, head, count, sha, ts)
                seal = Seal(first, last, prev_hash, head, count, sha, name, 0, ts, mac)
                out.write(json.dumps({"seal": seal.as_dict()}).encode() + b"\n")
            raw.flush()
            os.fsync(raw.fileno())
        size = tmp.stat().st_size
        os.replace(tmp, final)
        _fsync_dir(archive_dir)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    finally:
        if conn is not None:
            conn.close()
    return Seal(first, last, prev_hash, head, count, sha, name, size, ts, mac)


@dataclass
class ArchiveResult:
    """What `verify_archive` found: `status` ok, broken, or unverified (chain intact, seal
    not checked: no key)."""

    file: str
    ok: bool
    status: str
    reason: str | None = None
    first: int | None = None
    last: int | None = None
    count: int = 0
    prev_hash: str | None = None
    hash: str | None = None
    seal: dict[str, Any] | None = None
    hashes: set[str] = field(default_factory=set, repr=False)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("hashes")
        return out


MAX_LINE_BYTES = 16 * 1024 * 1024  # far above any record; a gzip bomb is refused, not read


def _lines(path: Path) -> Iterator[bytes]:
    """The file's lines, decompressed. Only a regular file is read (a FIFO or a device is
    refused, never waited on), and no line may exceed MAX_LINE_BYTES once decompressed."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        raw = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with raw, gzip.GzipFile(fileobj=raw, mode="rb") as f:
        while line := f.readline(MAX_LINE_BYTES + 1):
            if len(line) > MAX_LINE_BYTES:
                raise ValueError(f"a line longer than {MAX_LINE_BYTES} bytes (not an archive)")
            yield line


def verify_archive(path: Path, key: bytes | None, *, keep_hashes: bool = False) -> ArchiveResult:
    """Check one archive on its own: its chain, its line hash, its seal (with `key`)."""
    result = ArchiveResult(str(path), False, "broken")
    digest = hashlib.sha256()
    prev: str | None = None
    expected: int | None = None
    seal: Seal | None = None
    try:
        for raw in _lines(path):
            if seal is not None:
                result.reason = "lines after the seal"
                return result
            data = json.loads(raw)
            if not isinstance(data, dict):
                result.reason = "a line is not a JSON object"
                return result
            if "seal" in data:
                seal = Seal.from_dict(data["seal"])
                continue
            seq, ts = int(data["seq"]), float(data["ts"])
            fields = [str(data[k]) for k in ("actor", "action", "target", "decision", "detail")]
            if expected is None:
                expected, result.first, result.prev_hash = seq, seq, str(data["prev_hash"])
                prev = str(data["prev_hash"])
            if seq != expected:
                result.reason = f"expected record {expected}, found {seq}"
                return result
            if data["prev_hash"] != prev:
                result.reason = f"record {seq} does not follow the one before it"
                return result
            digest_of = record_hash(str(prev), seq, ts, *fields)
            if digest_of != data["hash"]:
                result.reason = f"record {seq} does not match its hash (edited)"
                return result
            digest.update(raw)
            prev = digest_of
            if keep_hashes:
                result.hashes.add(digest_of)
            result.last = seq
            result.count += 1
            expected = seq + 1
    except (OSError, EOFError, ValueError, KeyError, TypeError, zlib.error) as exc:
        result.reason = f"cannot read it: {exc}"
        return result
    result.hash = prev
    if seal is None:
        result.reason = "no seal (the file is cut short, or not an archive)"
        return result
    result.seal = seal.as_dict()
    mismatch = [
        what
        for what, bad in (
            ("first", seal.first != result.first),
            ("last", seal.last != result.last),
            ("count", seal.count != result.count),
            ("prev_hash", seal.prev_hash != result.prev_hash),
            ("hash", seal.hash != result.hash),
            ("sha256", seal.sha256 != digest.hexdigest()),
        )
        if bad
    ]
    if mismatch:
        result.reason = f"the records do not match their seal ({', '.join(mismatch)})"
        return result
    if seal.first == 1 and seal.prev_hash != GENESIS:
        result.reason = "the first record does not start the chain"
        return result
    if key is None:
        result.status = "unverified"
        result.reason = "the signing key is not available: the chain is intact, the seal unchecked"
        return result
    if not seal.valid(key):
        result.reason = "the seal does not verify (forged, or from another vault)"
        return result
    result.ok, result.status = True, "ok"
    return result
