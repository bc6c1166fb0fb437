"""Invariant 3: no secret leaves the host. Vault at rest, every echo path, system tier."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from legion.config import parse_config
from legion.gateway.vault import Vault
from legion.host import Host
from legion.paths import Paths
from tests.conftest import agent_client, control_client, loopback_server
from tests.fakes.provider import FakeProvider, Reply

pytestmark = pytest.mark.anyio

PROVIDER_KEY = "sk-system-4Kq8Zr2Xv6Tn0Lp3"
AGENT_TOKEN = "ghp-agent-9Wm3Yb7Rc1Hs5Dj2"


class Echo(BaseHTTPRequestHandler):
    """Echoes the request's Authorization header back in the body (a careless API)."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        body = f"you sent: {self.headers.get('Authorization')}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def echo_server() -> Iterator[ThreadingHTTPServer]:
    with loopback_server(Echo) as server:
        yield server


def config(base_url: str, echo_port: int) -> str:
    return f"""
[llm.models.m]
model = "openai/fake"
api_base = "{base_url}"
credential = "provider"
input_cost_per_mtok = 1.0
output_cost_per_mtok = 1.0

[egress]
allow = ["127.0.0.1:{echo_port}"]

[agents.alice]
model = "m"
[agents.alice.permissions]
allowed_credentials = ["token", "provider"]
egress_hosts = ["127.0.0.1"]
blackboard_write = ["**"]
blackboard_read = ["**"]
"""


def seed_vault(paths: Paths, echo_port: int) -> None:
    paths.home.mkdir(parents=True, exist_ok=True)
    vault = Vault(paths.vault_db, paths.vault_key)
    vault.set("provider", PROVIDER_KEY, tier="system")
    # The loopback echo server speaks plain http: the binding must allow it.
    vault.set("token", AGENT_TOKEN, tier="agent", bound_hosts=["127.0.0.1"], allow_http=True)
    vault.close()


async def test_no_secret_reaches_an_agent_the_logs_events_audit_or_disk(
    home: Path, echo_server: ThreadingHTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    port = int(echo_server.server_address[1])
    paths = Paths.resolve(home)
    seed_vault(paths, port)
    seen_events: list[str] = []
    responses: list[str] = []
    async with FakeProvider() as fake:
        leak = {"error": {"message": f"bad key {PROVIDER_KEY}", "type": "server_error"}}
        fake.script(Reply(status=400, error=leak), Reply(content=f"the key is {PROVIDER_KEY}"))
        async with (
            Host.running(parse_config(config(fake.base_url, port)), paths) as host,
            agent_client(paths, "alice") as alice,
            control_client(paths) as operator,
            host.bus.subscribe() as sub,
        ):
            messages = [{"role": "user", "content": "hi"}]
            # 1. provider error text echoing the key (into the error body, events, audit, logs)
            failed = await alice.post("/v1/chat/completions", json={"messages": messages})
            assert failed.status_code == 400
            # 2. a model reply that contains the key
            replied = await alice.post("/v1/chat/completions", json={"messages": messages})
            assert replied.status_code == 200
            assert fake.requests[-1].headers["authorization"] == f"Bearer {PROVIDER_KEY}"
            # 3. a careless API echoing the substituted agent credential back
            url = f"http://127.0.0.1:{port}/echo"
            echoed = await alice.post(
                "/egress/http",
                json={"url": url, "headers": {"Authorization": "Bearer $CRED{token}"}},
            )
            assert echoed.status_code == 200 and "[REDACTED]" in echoed.json()["body"]
            # 4. the system-tier provider key is never resolvable by an agent
            system = await alice.post(
                "/egress/http",
                json={"url": url, "headers": {"Authorization": "Bearer $CRED{provider}"}},
            )
            assert system.status_code == 403
            # 5. the agent writes the secret it cannot know into the blackboard: masked on read
            await operator.put("/v1/blackboard/entries/k", json={"value": PROVIDER_KEY})
            read_back = await alice.get("/v1/blackboard/entries/k")
            responses += [failed.text, replied.text, echoed.text, system.text, read_back.text]
            while not sub.queue.empty():
                seen_events.append(sub.queue.get_nowait().model_dump_json())
    for text in responses + seen_events + [caplog.text]:
        assert PROVIDER_KEY not in text
        assert AGENT_TOKEN not in text
    # nothing in LEGION_HOME holds either value in plaintext (db, WAL, keys, sockets, ...)
    for path in home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert PROVIDER_KEY.encode() not in data, path
            assert AGENT_TOKEN.encode() not in data, path


def test_vault_files_are_private_and_ciphertext_only(home: Path) -> None:
    paths = Paths.resolve(home)
    seed_vault(paths, 1)
    assert paths.vault_key.stat().st_mode & 0o777 == 0o600
    assert paths.vault_db.stat().st_mode & 0o777 == 0o600
    data = paths.vault_db.read_bytes()
    assert PROVIDER_KEY.encode() not in data and AGENT_TOKEN.encode() not in data


def test_passphrase_mode_and_wrong_passphrase(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from legion.gateway.vault import VaultLocked

    paths = Paths.resolve(home)
    seed_vault(paths, 1)
    vault = Vault(paths.vault_db, paths.vault_key)
    vault.use_passphrase("correct horse battery staple")
    vault.close()
    assert not paths.vault_key.exists()
    monkeypatch.delenv("LEGION_VAULT_PASSPHRASE", raising=False)
    with pytest.raises(VaultLocked, match="LEGION_VAULT_PASSPHRASE"):
        Vault(paths.vault_db, paths.vault_key)
    monkeypatch.setenv("LEGION_VAULT_PASSPHRASE", "wrong horse battery staple")
    with pytest.raises(VaultLocked, match="wrong"):
        Vault(paths.vault_db, paths.vault_key)
    monkeypatch.setenv("LEGION_VAULT_PASSPHRASE", "correct horse battery staple")
    vault = Vault(paths.vault_db, paths.vault_key)
    assert vault.system_secret("provider") == PROVIDER_KEY
    vault.close()


def test_a_ciphertext_moved_to_another_name_does_not_open(home: Path) -> None:
    import apsw

    from legion.gateway.vault import VaultLocked

    paths = Paths.resolve(home)
    seed_vault(paths, 1)
    conn = apsw.Connection(str(paths.vault_db))
    conn.execute(
        "UPDATE secrets SET nonce = (SELECT nonce FROM secrets WHERE name = 'provider'),"
        " ciphertext = (SELECT ciphertext FROM secrets WHERE name = 'provider'),"
        " tier = 'agent' WHERE name = 'token'"
    )
    conn.close()
    vault = Vault(paths.vault_db, paths.vault_key)
    with pytest.raises(VaultLocked, match="tampered"):
        vault.values()
    vault.close()


def test_provider_keys_from_the_environment(home: Path) -> None:
    paths = Paths.resolve(home)
    seed_vault(paths, 1)
    vault = Vault(paths.vault_db, paths.vault_key)
    env = {
        "OPENAI_API_KEY": "sk-env-openai-123",
        "LEGION_SECRET_INTERNAL_API": "xyz-Qm83-Tz1w",
        "PATH": "/bin",
    }
    assert sorted(vault.import_environment(env)) == ["internal_api", "openai"]
    assert env == {"PATH": "/bin"}  # scrubbed from the environment passed in
    assert vault.system_secret("openai") == "sk-env-openai-123"
    infos = {i.name: i.tier for i in vault.infos()}
    assert infos["openai"] == "system" and infos["internal_api"] == "system"
    vault.close()


def test_weak_provider_keys_in_the_environment_are_refused(home: Path) -> None:
    """issue 7: provider keys from the environment follow the value rule: a weak one is
    refused with the variable's name and the rule, nothing is imported, and every key is
    scrubbed from the environment anyway."""
    from legion.gateway.vault import WeakSecret

    paths = Paths.resolve(home)
    paths.home.mkdir(parents=True, exist_ok=True)
    vault = Vault(paths.vault_db, paths.vault_key)
    env = {"OPENAI_API_KEY": "sk-fine-Qm83Tz1wLk5", "GROQ_API_KEY": "EMPTY", "PATH": "/bin"}
    with pytest.raises(WeakSecret) as info:
        vault.import_environment(env)
    message = info.value.message
    assert "GROQ_API_KEY (credential 'groq'): the value is 5 characters" in message
    assert "OPENAI_API_KEY" not in message and "EMPTY" not in message
    assert "at least 8 characters with at least 40 bits" in message
    assert env == {"PATH": "/bin"} and vault.names() == []
    vault.close()


def test_daemon_refuses_to_start_with_a_weak_provider_key(home: Path) -> None:
    """issue 7: the daemon says which variable is too weak and exits 2 (it does not run
    with a key it could not mask)."""
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "legion", "--home", str(home), "daemon"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "OPENAI_API_KEY": "sk-1234"},
    )
    assert run.returncode == 2
    assert "OPENAI_API_KEY (credential 'openai'): the value is 7 characters" in run.stderr
    assert "sk-1234" not in run.stderr and "Traceback" not in run.stderr


def test_values_stored_before_the_rule_are_still_masked_and_flagged(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """issue 7: a value stored before the rule (here: 3 characters) is masked anyway (a
    stored secret is always maskable; the old redactor skipped values under 4 characters)
    and named by `Vault.weak()` so the host and `legion vault ls` can say to replace it."""
    from legion.gateway import vault as vault_mod
    from legion.gateway.redact import MASK, Redactor

    paths = Paths.resolve(home)
    paths.home.mkdir(parents=True, exist_ok=True)
    vault = Vault(paths.vault_db, paths.vault_key)
    with monkeypatch.context() as patch:
        patch.setattr(vault_mod, "value_problem", lambda value: None)
        vault.set("legacy", "q7z", tier="system")
    vault.set("strong", "sk-strong-Vn4Rw8Yh2Pk6", tier="system")
    assert vault.weak() == ["legacy"]
    redactor = Redactor(vault.values)
    assert redactor.redact("a q7z b") == f"a {MASK} b"
    vault.close()


def test_a_vault_from_before_bindings_allowed_http_opens(home: Path) -> None:
    """issue 7: a vault.db without the allow_http column gains it (https only) on open."""
    import apsw

    paths = Paths.resolve(home)
    seed_vault(paths, 1)
    conn = apsw.Connection(str(paths.vault_db))
    conn.execute(
        "CREATE TABLE old AS SELECT name, tier, bound_hosts, nonce, ciphertext, created_at,"
        " updated_at, last_used_at FROM secrets; DROP TABLE secrets;"
        " ALTER TABLE old RENAME TO secrets;"
    )
    conn.close()
    vault = Vault(paths.vault_db, paths.vault_key)
    info = {i.name: i for i in vault.infos()}
    assert info["token"].allow_http is False and info["token"].bound_hosts == ["127.0.0.1"]
    assert vault.system_secret("provider") == PROVIDER_KEY
    from legion.errors import Forbidden

    with pytest.raises(Forbidden, match="over https only"):
        vault.resolve_for_agent("token", allowed=["token"], host="127.0.0.1", scheme="http")
    assert vault.resolve_for_agent("token", allowed=["token"], host="127.0.0.1") == AGENT_TOKEN
    vault.close()


async def test_vault_values_are_read_once_per_turn_and_own_writes_at_once(home: Path) -> None:
    """issue 10: on the event loop the redactors' source (`Vault.values`) looks for another
    process's commit at most once per turn of the loop (a PRAGMA per audit record was a
    tenth of a blackboard write's CPU); a value set through this vault is masked at once,
    one set by another process (`legion vault set` beside the host) from the next turn."""
    import asyncio

    paths = Paths.resolve(home)
    vault = Vault(paths.vault_db, paths.vault_key)
    other = Vault(paths.vault_db, paths.vault_key)
    try:
        assert vault.values() == []
        vault.set("mine", "sk-own-value-0123456789abcdef", tier="agent")
        assert vault.values() == ["sk-own-value-0123456789abcdef"]  # same turn: at once
        other.set("theirs", "sk-other-process-0123456789ab", tier="agent")
        # Until the loop turns, the other connection's commit is not looked for ...
        assert "sk-other-process-0123456789ab" not in vault.values()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        # ... from the next turn it is.
        assert sorted(vault.values()) == sorted(
            ["sk-own-value-0123456789abcdef", "sk-other-process-0123456789ab"]
        )
    finally:
        other.close()
        vault.close()


def test_vault_values_without_a_loop_see_every_commit(home: Path) -> None:
    """issue 10: without an event loop (the CLI) every lookup looks for other commits."""
    paths = Paths.resolve(home)
    vault = Vault(paths.vault_db, paths.vault_key)
    other = Vault(paths.vault_db, paths.vault_key)
    try:
        assert vault.values() == []
        other.set("theirs", "sk-other-process-0123456789ab", tier="agent")
        assert vault.values() == ["sk-other-process-0123456789ab"]
    finally:
        other.close()
        vault.close()
