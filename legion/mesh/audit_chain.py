"""The audit chain's primitives, shared by the writer (`legion.mesh.audit`) and the
checker (`legion.mesh.audit_verify`): record hashes, signed checkpoints, the anchor file.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw

from legion.fsutil import atomic_write

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


class AnchorDenied(AnchorUnreadable):
    """The anchor file is there but this user may not read it (not a sign of tampering)."""


def read_anchor(path: Path) -> Checkpoint | None:
    """The anchor in `path`, or None when there is no file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except PermissionError:
        raise AnchorDenied(
            f"cannot read the anchor file {path}; run as the user the host runs as"
        ) from None
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


def when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def tables(conn: apsw.Connection) -> set[str]:
    return {str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
