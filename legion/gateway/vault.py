"""The vault: credentials encrypted at rest in `vault.db`, never handed to an agent.

* Values are sealed with AES-256-GCM; the associated data binds each ciphertext to its
  name and tier, so a ciphertext moved to another row does not open.
* The key is 32 random bytes in `LEGION_HOME/vault.key` (mode 0600), or, when the
  operator chose a passphrase (`legion vault init --passphrase`), derived from it with
  scrypt; the daemon then reads it from `LEGION_VAULT_PASSPHRASE` or a systemd
  credential (`$CREDENTIALS_DIRECTORY/legion-vault-passphrase`).
* Tiers: `system` secrets (provider keys) are used only by the host itself and are never
  resolvable by any agent; `agent` secrets may be used by an agent, by handle
  (`$CRED{name}`), only if the agent is allowed the credential and only toward the hosts
  the credential is bound to.
* The CLI writes `vault.db` while the host runs; the host notices (SQLite's data_version)
  and reloads before the next lookup.
* Every stored value passes `legion.gateway.redact.value_problem` (at least 8 characters and
  40 bits of estimated entropy), so every stored value can be masked safely.
* A binding allows https only, unless it was stored with `allow_http` (`--allow-http`).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import apsw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from legion.errors import Forbidden, LegionError, NotFound
from legion.gateway.redact import VALUE_RULE as VALUE_RULE_TEXT
from legion.gateway.redact import value_problem
from legion.mesh.globs import glob_match
from legion.store import connect

Tier = Literal["system", "agent"]
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-.")
VERIFIER = b"legion-vault-v1"
AUDIT_KEY_META = "audit_key"  # meta row: nonce + AES-GCM sealed 32-byte audit signing key
AUDIT_KEY_AAD = b"legion-audit-key-v1"
PASSPHRASE_ENV = "LEGION_VAULT_PASSPHRASE"
SYSTEMD_CREDENTIAL = "legion-vault-passphrase"

# Provider keys taken from the environment at host start (stored as system-tier secrets
# under the name on the right, then removed from the host's environment).
PROVIDER_ENV: dict[str, str] = {
    "OPENAI_API_KEY": "openai",
    "ANTHROPIC_API_KEY": "anthropic",
    "GEMINI_API_KEY": "gemini",
    "MISTRAL_API_KEY": "mistral",
    "GROQ_API_KEY": "groq",
    "OPENROUTER_API_KEY": "openrouter",
    "DEEPSEEK_API_KEY": "deepseek",
    "TOGETHERAI_API_KEY": "togetherai",
    "XAI_API_KEY": "xai",
    "COHERE_API_KEY": "cohere",
}
TOUCH_EVERY_S = 60.0
GENERIC_ENV_PREFIX = "LEGION_SECRET_"  # LEGION_SECRET_MY_KEY=... -> system secret "my_key"


class VaultLocked(LegionError):
    status = 503
    code = "vault_locked"


class WeakSecret(LegionError):
    status = 400
    code = "weak_secret"


class CredentialDenied(Forbidden):
    """A `$CRED{name}` the agent may not use. The agent's message is the same whether the
    credential is missing, system-tier or simply not granted (so refusals tell an agent
    nothing about what the vault holds); `operator_reason` says which, for the audit log."""

    code = "credential_denied"

    def __init__(self, message: str, *, operator_reason: str, **detail: Any) -> None:
        super().__init__(message, **detail)
        self.operator_reason = operator_reason


def not_available(name: str, why: str) -> CredentialDenied:
    return CredentialDenied(
        f"credential {name!r} is not available to this agent: the operator must list it in "
        "the agent's allowed_credentials and store it as an agent-tier credential",
        operator_reason=why,
        credential=name,
    )


@dataclass(frozen=True)
class SecretInfo:
    name: str
    tier: Tier
    bound_hosts: list[str]
    created_at: float
    updated_at: float
    last_used_at: float | None
    allow_http: bool = False

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass(frozen=True)
class _Entry:
    tier: Tier
    bound_hosts: list[str]
    allow_http: bool
    value: str


def check_name(name: str) -> None:
    if not name or len(name) > 64 or not set(name) <= NAME_CHARS or not name[0].isalnum():
        raise LegionError(
            f"invalid credential name {name!r}: use lowercase letters, digits, '_', '-' and '.', "
            "starting with a letter or digit, at most 64 characters",
            code="invalid_credential_name",
        )


class Vault:
    def __init__(
        self,
        path: Path,
        key_file: Path,
        *,
        passphrase: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.key_file = key_file
        self.clock = clock
        self.db = connect(path)
        self.conn: apsw.Connection = self.db.connection()  # type: ignore[no-untyped-call]
        self.conn.execute(
            """
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS secrets (
                name TEXT PRIMARY KEY, tier TEXT NOT NULL, bound_hosts TEXT NOT NULL,
                nonce BLOB NOT NULL, ciphertext BLOB NOT NULL,
                created_at REAL NOT NULL, updated_at REAL NOT NULL, last_used_at REAL,
                allow_http INTEGER NOT NULL DEFAULT 0
            );
            """
        )
        columns = {row[1] for row in self.conn.execute("PRAGMA table_info(secrets)")}
        if "allow_http" not in columns:  # a vault.db from before bindings could allow http
            self.conn.execute(
                "ALTER TABLE secrets ADD COLUMN allow_http INTEGER NOT NULL DEFAULT 0"
            )
        os.chmod(path, 0o600)
        self._aead = AESGCM(self._load_key(passphrase))
        self._values: dict[str, _Entry] = {}
        self._touched: dict[str, float] = {}
        self._data_version = -1
        self._checked_this_turn = False

    def _note_turn(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (the CLI): every lookup checks
        if not self._checked_this_turn:
            self._checked_this_turn = True
            loop.call_soon(self._new_turn)

    def _new_turn(self) -> None:
        self._checked_this_turn = False

    # --- key ------------------------------------------------------------------

    def _meta(self, key: str) -> bytes | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return bytes(row[0]) if row else None

    def _load_key(self, passphrase: str | None) -> bytes:
        mode = (self._meta("mode") or b"keyfile").decode()
        if mode == "passphrase":
            passphrase = passphrase or passphrase_from_environment()
            if not passphrase:
                raise VaultLocked(
                    f"the vault at {self.path} is protected by a passphrase; set "
                    f"{PASSPHRASE_ENV} or the systemd credential {SYSTEMD_CREDENTIAL}"
                )
            salt = self._meta("salt")
            assert salt is not None
            key = derive_key(passphrase, salt)
        else:
            key = self._key_from_file()
        nonce, sealed = self._meta("verifier_nonce"), self._meta("verifier")
        if nonce is None or sealed is None:
            nonce = secrets.token_bytes(12)
            with self.conn:
                self.conn.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('mode', ?)", (mode.encode(),)
                )
                self.conn.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('verifier_nonce', ?)", (nonce,)
                )
                self.conn.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('verifier', ?)",
                    (AESGCM(key).encrypt(nonce, VERIFIER, b"verifier"),),
                )
        else:
            try:
                AESGCM(key).decrypt(nonce, sealed, b"verifier")
            except InvalidTag:
                raise VaultLocked(
                    f"wrong vault key or passphrase for {self.path}"
                    + ("" if mode == "passphrase" else f" (key file {self.key_file})")
                ) from None
        return key

    def _key_from_file(self) -> bytes:
        if not self.key_file.exists():
            fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_bytes(32).hex())
                handle.flush()
                os.fsync(handle.fileno())
        mode = self.key_file.stat().st_mode & 0o777
        if mode & 0o077:
            raise VaultLocked(
                f"{self.key_file} is readable by others (mode {mode:o}); run "
                f"`chmod 600 {self.key_file}`"
            )
        try:
            key = bytes.fromhex(self.key_file.read_text().strip())
        except ValueError:
            key = b""
        if len(key) != 32:
            raise VaultLocked(f"{self.key_file} does not hold a 32-byte hex key")
        return key

    def use_passphrase(self, passphrase: str) -> None:
        """Re-seal every secret under a key derived from `passphrase`."""
        if len(passphrase) < 12:
            raise LegionError("use a passphrase of at least 12 characters", code="weak_passphrase")
        plain = {name: self._open(name) for name in self.names()}
        audit_sealed = self._meta(AUDIT_KEY_META)
        audit_key = None if audit_sealed is None else _open_audit_key(self._aead, audit_sealed)
        salt = secrets.token_bytes(16)
        key = derive_key(passphrase, salt)
        new = AESGCM(key)
        nonce = secrets.token_bytes(12)
        with self.conn:
            if audit_key is not None:  # the audit log's signatures must outlive the re-key
                self.conn.execute(
                    "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                    (AUDIT_KEY_META, _seal_audit_key(new, audit_key)),
                )
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('mode', ?)", (b"passphrase",))
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('salt', ?)", (salt,))
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('verifier_nonce', ?)", (nonce,))
            self.conn.execute(
                "INSERT OR REPLACE INTO meta VALUES ('verifier', ?)",
                (new.encrypt(nonce, VERIFIER, b"verifier"),),
            )
            for name, (tier, value) in plain.items():
                n = secrets.token_bytes(12)
                self.conn.execute(
                    "UPDATE secrets SET nonce = ?, ciphertext = ? WHERE name = ?",
                    (n, new.encrypt(n, value.encode(), _aad(name, tier)), name),
                )
        self._aead = new
        self.key_file.unlink(missing_ok=True)
        self._data_version = -1

    # --- the audit log's signing key ---------------------------------------------

    def audit_key(self) -> tuple[bytes, bool]:
        """The key that signs the audit log's checkpoints (`legion.mesh.audit`), and
        whether it was created by this call.

        32 random bytes, sealed in vault.db under the vault key (AES-GCM with its own
        associated data): only who can open the vault can sign, and an edit of host.db
        alone cannot. Not derived from the vault key, which changes with `legion vault
        passphrase` (every earlier signature would stop verifying): re-sealed instead.
        For the host's own use; never logged, never given to an agent.
        """
        sealed = self._meta(AUDIT_KEY_META)
        if sealed is not None:
            return _open_audit_key(self._aead, sealed), False
        key = secrets.token_bytes(32)
        with self.conn:
            self.conn.execute(
                "INSERT OR IGNORE INTO meta VALUES (?, ?)",
                (AUDIT_KEY_META, _seal_audit_key(self._aead, key)),
            )
        sealed = self._meta(AUDIT_KEY_META)
        assert sealed is not None
        opened = _open_audit_key(self._aead, sealed)
        return opened, opened == key

    # --- secrets --------------------------------------------------------------

    def set(
        self,
        name: str,
        value: str,
        *,
        tier: Tier = "agent",
        bound_hosts: list[str] | None = None,
        allow_http: bool = False,
    ) -> SecretInfo:
        """Store (or replace) a credential. The value must pass the value rule
        (`legion.gateway.redact.value_problem`); `allow_http` lets the bound hosts receive
        it over plain http too (default: https only)."""
        check_name(name)
        if not value:
            raise LegionError("the secret is empty; nothing was stored", code="empty_secret")
        problem = value_problem(value)
        if problem is not None:
            raise WeakSecret(
                f"credential {name!r} was not stored: {problem}. A weaker value could not be "
                "masked safely wherever it might be echoed"
            )
        if tier not in ("system", "agent"):
            raise LegionError(f"tier must be system or agent, not {tier!r}", code="invalid_tier")
        hosts = sorted(set(bound_hosts or []))
        if allow_http and not hosts:
            raise LegionError(
                "allow_http applies to the hosts a credential is bound to; bind at least one",
                code="invalid_binding",
            )
        now = self.clock()
        nonce = secrets.token_bytes(12)
        sealed = self._aead.encrypt(nonce, value.encode(), _aad(name, tier))
        with self.conn:
            row = self.conn.execute(
                "SELECT created_at FROM secrets WHERE name = ?", (name,)
            ).fetchone()
            created = row[0] if row else now
            self.conn.execute(
                "INSERT OR REPLACE INTO secrets(name, tier, bound_hosts, nonce, ciphertext,"
                " created_at, updated_at, last_used_at, allow_http)"
                " VALUES (?,?,?,?,?,?,?,NULL,?)",
                (name, tier, json.dumps(hosts), nonce, sealed, created, now, int(allow_http)),
            )
        self._data_version = -1
        return SecretInfo(name, tier, hosts, created, now, None, allow_http)

    def remove(self, name: str) -> bool:
        with self.conn:
            self.conn.execute("DELETE FROM secrets WHERE name = ?", (name,))
            removed = self.conn.changes() > 0
        self._data_version = -1
        return removed

    def names(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT name FROM secrets ORDER BY name")]

    def infos(self) -> list[SecretInfo]:
        return [
            SecretInfo(r[0], r[1], json.loads(r[2]), r[3], r[4], r[5], bool(r[6]))
            for r in self.conn.execute(
                "SELECT name, tier, bound_hosts, created_at, updated_at, last_used_at, "
                "allow_http FROM secrets ORDER BY name"
            )
        ]

    def weak(self) -> list[str]:
        """Names of stored values that fail today's value rule (stored before it existed):
        they are still masked, but should be replaced."""
        self._refresh()
        return sorted(n for n, e in self._values.items() if value_problem(e.value) is not None)

    def _open(self, name: str) -> tuple[Tier, str]:
        row = self.conn.execute(
            "SELECT tier, nonce, ciphertext FROM secrets WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            raise NotFound(
                f"no credential named {name!r} in the vault; add it with `legion vault set {name}`",
                code="unknown_credential",
            )
        tier, nonce, sealed = row
        try:
            return tier, self._aead.decrypt(nonce, sealed, _aad(name, tier)).decode()
        except InvalidTag:
            raise VaultLocked(f"credential {name!r} does not decrypt (tampered?)") from None

    def _db_version(self) -> int:
        """Changes whenever another connection (e.g. `legion vault set`) commits."""
        row = self.conn.execute("PRAGMA data_version").fetchone()
        assert row is not None
        return int(row[0])

    def _refresh(self) -> None:
        # Another process's commit is looked for at most once per turn of the event loop
        # (a PRAGMA per lookup: two per audit record otherwise); requests served in one turn
        # have no order against it anyway. Our own writes reset `_data_version`: seen at once.
        if self._checked_this_turn and self._data_version != -1:
            return
        version = self._db_version()
        self._note_turn()
        if version == self._data_version:
            return
        values: dict[str, _Entry] = {}
        for info in self.infos():
            tier, value = self._open(info.name)
            values[info.name] = _Entry(tier, info.bound_hosts, info.allow_http, value)
        self._values = values
        self._data_version = self._db_version()

    def values(
        self, tier: Tier | None = None, *, names: Collection[str] | None = None
    ) -> list[str]:
        """Every secret value, or those of one tier or of the named credentials (for the
        redactors)."""
        self._refresh()
        return [
            e.value
            for name, e in self._values.items()
            if (tier is None or e.tier == tier) and (names is None or name in names)
        ]

    def granted_values(self, patterns: Collection[str]) -> list[str]:
        """Values of the agent-tier credentials whose names match `patterns` (an agent's
        allowed_credentials): what that agent may substitute, so what egress scrubs."""
        if not patterns:
            return []
        self._refresh()
        return [
            e.value
            for name, e in self._values.items()
            if e.tier == "agent" and any(glob_match(p, name) for p in patterns)
        ]

    def system_secret(self, name: str) -> str:
        """A secret for the host's own use (provider keys). Never call on behalf of an agent."""
        self._refresh()
        entry = self._values.get(name)
        if entry is None:
            raise NotFound(
                f"no credential named {name!r} in the vault; add it with "
                f"`legion vault set {name} --tier system`",
                code="unknown_credential",
            )
        self._touch(name)
        return entry.value

    def resolve_for_agent(
        self, name: str, *, allowed: list[str], host: str, scheme: str = "https"
    ) -> str:
        """The value of `$CRED{name}` for an agent sending to `scheme://host`, or
        CredentialDenied.

        An agent that may not use `name` gets one refusal, whether the credential is
        missing, system-tier or not granted: the refusal tells it nothing about the vault.
        Only for a credential it is granted does it learn more (where it is bound, that it
        needs https), which it needs to use it.
        """
        self._refresh()
        entry = self._values.get(name)
        if name not in allowed:
            raise not_available(name, f"{name!r} is not in the agent's allowed_credentials")
        if entry is None:
            raise not_available(
                name,
                f"no credential named {name!r} in the vault; add it with "
                f"`legion vault set {name} --bind HOST`",
            )
        if entry.tier == "system":
            raise not_available(
                name, f"{name!r} is system-tier: only the host itself uses it, never an agent"
            )
        bound = entry.bound_hosts
        if not any(glob_match(pattern, host.lower()) for pattern in bound):
            raise Forbidden(
                f"credential {name!r} is bound to {', '.join(bound) or 'no host'}, not {host!r}",
                code="credential_denied",
                credential=name,
                host=host,
            )
        if scheme != "https" and not entry.allow_http:
            raise Forbidden(
                f"credential {name!r} is sent to {host} over https only, and this request is "
                f"{scheme}://; use an https:// URL, or the operator allows plain http with "
                f"`legion vault set {name} --bind {host} --allow-http`",
                code="credential_needs_https",
                credential=name,
                host=host,
            )
        self._touch(name)
        return entry.value

    def _touch(self, name: str) -> None:
        """Record a use; written at most once a minute per credential (it is on the LLM hot
        path, and `last used` to the minute is all `legion vault ls` shows)."""
        now = self.clock()
        if now - self._touched.get(name, 0.0) < TOUCH_EVERY_S:
            return
        self._touched[name] = now
        with self.conn:
            self.conn.execute(
                "UPDATE secrets SET last_used_at = ? WHERE name = ?", (self.clock(), name)
            )
        self._data_version = self._db_version()

    def import_environment(self, environ: dict[str, str] | None = None) -> list[str]:
        """Store provider keys found in the environment as system secrets; scrub them from it."""
        """Store provider keys found in the environment as system secrets; scrub them from it.

        Every variable is removed from the environment; if any value fails the value rule,
        none is stored and WeakSecret names each variable (nothing half-imported)."""
        env = os.environ if environ is None else environ
        found: list[tuple[str, str, str]] = []
        for var in list(env):
            if var in PROVIDER_ENV:
                name = PROVIDER_ENV[var]
            elif var.startswith(GENERIC_ENV_PREFIX) and len(var) > len(GENERIC_ENV_PREFIX):
                name = var[len(GENERIC_ENV_PREFIX) :].lower()
            else:
                continue
            value = env.pop(var)
            if value:
                found.append((var, name, value))
        problems = []
        for var, name, value in found:
            check_name(name)
            problem = value_problem(value)
            if problem is not None:
                problems.append(f"{var} (credential {name!r}): {problem.split(';')[0]}")
        if problems:
            raise WeakSecret(
                "provider keys in the environment were not imported, because a value that "
                "weak could not be masked safely: "
                + "; ".join(problems)
                + ". The rule: "
                + VALUE_RULE_TEXT
                + ". Fix or unset the variable (a local server that needs no key needs no "
                "credential in its [llm.models] entry)"
            )
        for _, name, value in found:
            self.set(name, value, tier="system")
        return [name for _, name, _ in found]

    def close(self) -> None:
        if not self.db.is_closed():
            self.db.close()


def _aad(name: str, tier: str) -> bytes:
    return f"legion-secret:{tier}:{name}".encode()


def derive_key(passphrase: str, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=32, n=2**15, r=8, p=1).derive(passphrase.encode())


def passphrase_from_environment() -> str | None:
    value = os.environ.get(PASSPHRASE_ENV)
    if value:
        return value
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir:
        path = Path(cred_dir) / SYSTEMD_CREDENTIAL
        if path.exists():
            return path.read_text().strip()
    return None


def _seal_audit_key(aead: AESGCM, key: bytes) -> bytes:
    nonce = secrets.token_bytes(12)
    return nonce + aead.encrypt(nonce, key, AUDIT_KEY_AAD)


def _open_audit_key(aead: AESGCM, sealed: bytes) -> bytes:
    try:
        return aead.decrypt(sealed[:12], sealed[12:], AUDIT_KEY_AAD)
    except InvalidTag:
        raise VaultLocked(
            "the audit log's signing key in vault.db does not decrypt (tampered with?); "
            "restore vault.db from a backup"
        ) from None


@dataclass(frozen=True)
class AuditKeyLookup:
    """What `read_audit_key` found: whether vault.db holds an audit key (a host that signs
    the audit log has run), the key when it could be opened, and otherwise why not."""

    present: bool
    key: bytes | None
    problem: str = ""


def read_audit_key(path: Path, key_file: Path, *, passphrase: str | None = None) -> AuditKeyLookup:
    """The audit signing key, read-only (for `legion audit --verify`, host running or not).

    Creates nothing (no key file, no table), unlike opening a `Vault`. With a passphrase
    vault the passphrase comes from `passphrase`, `LEGION_VAULT_PASSPHRASE` or the systemd
    credential, as for the host; without it the key is reported as not opened.
    """
    if not path.exists():
        return AuditKeyLookup(False, None, f"there is no vault at {path}")
    try:
        db = connect(path, readonly=True)
    except Exception as exc:  # apsw's or peewee's "unable to open", whichever wraps it
        return AuditKeyLookup(
            True, None, f"cannot open {path} ({exc}); run as the user the host runs as"
        )
    try:
        conn: apsw.Connection = db.connection()  # type: ignore[no-untyped-call]

        def meta(key: str) -> bytes | None:
            try:
                row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            except apsw.SQLError:
                return None
            return bytes(row[0]) if row else None

        sealed = meta(AUDIT_KEY_META)
        if sealed is None:
            return AuditKeyLookup(
                False, None, f"{path} holds no audit key: no host that signs the audit log ran"
            )
        if (meta("mode") or b"keyfile").decode() == "passphrase":
            passphrase = passphrase or passphrase_from_environment()
            salt = meta("salt")
            if not passphrase or salt is None:
                return AuditKeyLookup(
                    True,
                    None,
                    f"the vault is protected by a passphrase; set {PASSPHRASE_ENV} to check "
                    "the signatures",
                )
            vault_key = derive_key(passphrase, salt)
        else:
            try:
                vault_key = bytes.fromhex(key_file.read_text().strip())
            except FileNotFoundError:
                return AuditKeyLookup(True, None, f"the vault key file {key_file} is missing")
            except PermissionError:
                return AuditKeyLookup(
                    True, None, f"cannot read {key_file}; run as the user the host runs as"
                )
            except ValueError:
                vault_key = b""
        nonce, verifier = meta("verifier_nonce"), meta("verifier")
        if len(vault_key) != 32 or nonce is None or verifier is None:
            return AuditKeyLookup(True, None, f"no usable vault key for {path}")
        aead = AESGCM(vault_key)
        try:
            aead.decrypt(nonce, verifier, b"verifier")
        except InvalidTag:
            return AuditKeyLookup(True, None, f"wrong vault key or passphrase for {path}")
        try:
            return AuditKeyLookup(True, _open_audit_key(aead, sealed))
        except VaultLocked as exc:
            return AuditKeyLookup(True, None, str(exc))
    finally:
        db.close()
