"""issue 7: redaction is never an oracle. What an agent gets back never depends on whether
its own input matched a vault value it was not given; the operator's views still mask.

The same scenario runs twice on fresh hosts with the same vault and a fixed clock: once
with every secret the attacker is not given as its guesses (the system-tier provider key,
another system secret, another agent's token), once with wrong guesses of the same length.
Everything the agents read back (status and bytes of every response) must be the same,
byte for byte, once each guess is replaced by a placeholder.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest

from legion.config import parse_config
from legion.gateway.redact import MASK
from legion.gateway.vault import Vault
from legion.host import Host
from legion.mesh import audit
from legion.paths import Paths
from legion.store import connect
from tests.conftest import agent_client, control_client, loopback_server
from tests.fakes.provider import FakeProvider

pytestmark = pytest.mark.anyio

PROVIDER_KEY = "sk-system-4Kq8Zr2Xv6Tn0Lp3"  # system tier, the model's credential
HOOK_SECRET = "whsec-Jq7Tz2Lm9Xc4Vb8Nw"  # system tier, not a provider key
BOB_TOKEN = "ghp-bob-9Wm3Yb7Rc1Hs5Dj2Kx"  # agent tier, another agent's
ALICE_TOKEN = "ghp-alice-Qz8Lw2Nr6Tp4Vm1"  # agent tier, the attacker's own
SECRETS = (PROVIDER_KEY, HOOK_SECRET, BOB_TOKEN)


def wrong(secret: str) -> str:
    """A guess of the same length and shape that is not the secret."""
    return secret[:-1] + ("A" if secret[-1] != "A" else "B")


WRONG = tuple(wrong(s) for s in SECRETS)


class Echo(BaseHTTPRequestHandler):
    """Echoes path, body and Authorization as JSON, with no Date or Server header (so two
    runs get the same bytes)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode()
        out = json.dumps(
            {"path": self.path, "body": body, "auth": self.headers.get("Authorization")}
        ).encode()
        self.send_response_only(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


@pytest.fixture(scope="module")
def echo_port() -> Iterator[int]:
    with loopback_server(Echo) as server:
        yield int(server.server_address[1])


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
blackboard_read = ["**"]
blackboard_write = ["**"]
can_message = ["carol"]
egress_hosts = ["127.0.0.1"]
allowed_credentials = ["alicetoken"]

[agents.bob]
[agents.bob.permissions]
allowed_credentials = ["bobtoken"]

[agents.carol]
[agents.carol.permissions]
blackboard_read = ["**"]
can_message = ["alice"]

[agents.dave]
role = "granted names that are system-tier or missing (an operator's mistake)"
[agents.dave.permissions]
egress_hosts = ["127.0.0.1"]
allowed_credentials = ["provider", "hook", "nosuchcredential"]
"""


def seed(home: Path) -> Paths:
    paths = Paths.resolve(home)
    home.mkdir(parents=True, exist_ok=True)
    vault = Vault(paths.vault_db, paths.vault_key)
    vault.set("provider", PROVIDER_KEY, tier="system")
    vault.set("hook", HOOK_SECRET, tier="system")
    vault.set("bobtoken", BOB_TOKEN, bound_hosts=["127.0.0.1"], allow_http=True)
    vault.set("alicetoken", ALICE_TOKEN, bound_hosts=["127.0.0.1"], allow_http=True)
    vault.close()
    return paths


@dataclass
class Run:
    transcript: list[tuple[str, int, str]] = field(default_factory=list)  # what agents read
    operator_bb: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    audit_text: str = ""
    cli_bb_get: str = ""

    def read(self, label: str, response: httpx.Response) -> httpx.Response:
        self.transcript.append((label, response.status_code, response.text))
        return response


async def scenario(home: Path, base_url: str, port: int, guesses: tuple[str, ...]) -> Run:
    """Alice writes each guess everywhere she can; Alice and Carol read everything back."""
    paths = seed(home)
    run = Run()
    echo_url = f"http://127.0.0.1:{port}/echo"
    async with (
        Host.running(parse_config(config(base_url, port)), paths, clock=lambda: 1000.0),
        agent_client(paths, "alice") as alice,
        agent_client(paths, "carol") as carol,
        control_client(paths) as operator,
    ):
        async with operator.stream("GET", "/v1/events") as stream:
            lines = stream.aiter_lines()
            for i, guess in enumerate(guesses):
                # the blackboard: a value, and a key, that are the guess
                run.read(
                    "bb.put",
                    await alice.put(
                        f"/v1/blackboard/entries/probe/{i}", json={"value": {"v": guess}}
                    ),
                )
                run.read("bb.get", await alice.get(f"/v1/blackboard/entries/probe/{i}"))
                run.read("bb.get(other)", await carol.get(f"/v1/blackboard/entries/probe/{i}"))
                run.read(
                    "bb.put key",
                    await alice.put(f"/v1/blackboard/entries/keys/{guess}", json={"value": i}),
                )
                run.read("bb.get key", await carol.get(f"/v1/blackboard/entries/keys/{guess}"))
                # a message to another agent
                run.read(
                    "message",
                    await alice.post(
                        "/v1/messages", json={"to": "carol", "payload": {"text": guess}}
                    ),
                )
                run.read("poll(other)", await carol.post("/v1/inbox/poll", json={"wait_s": 0}))
                # a reply to another agent's question
                await carol.post("/v1/messages", json={"to": "alice", "payload": "question"})
                polled = (await alice.post("/v1/inbox/poll", json={"wait_s": 0})).json()["items"]
                item = polled[-1]["id"]
                run.read(
                    "reply",
                    await alice.post("/v1/replies", json={"in_reply_to": item, "text": guess}),
                )
                run.read(
                    "poll reply(other)", await carol.post("/v1/inbox/poll", json={"wait_s": 0})
                )
                # an egress request to an echo server the agent may reach, with its own
                # credential substituted (so the response is scrubbed) and the guess in the
                # query and the body
                run.read(
                    "egress",
                    await alice.post(
                        "/egress/http",
                        json={
                            "method": "POST",
                            "url": f"{echo_url}?q={guess}",
                            "headers": {"Authorization": "Bearer $CRED{alicetoken}"},
                            "body": guess,
                        },
                    ),
                )
                # a notification to the operator
                run.read("notify", await alice.post("/v1/notify", json={"text": guess}))
                run.operator_bb.append(
                    (await operator.get(f"/v1/blackboard/entries/probe/{i}")).text
                )
            run.read("bb.list", await alice.get("/v1/blackboard/entries", params={"prefix": ""}))
            run.read("self", await alice.get("/v1/self"))
            await alice.post("/v1/notify", json={"text": "scenario done"})
            async for line in lines:
                run.events.append(line)
                if "scenario done" in line:
                    break
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "legion",
            "--home",
            str(home),
            "bb",
            "get",
            "probe/0",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={k: v for k, v in os.environ.items() if k != "LEGION_HOME"},
        )
        out, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        run.cli_bb_get = out.decode()
    db = connect(Paths.resolve(home).host_db, readonly=True)
    try:
        conn = db.connection()  # type: ignore[no-untyped-call]
        run.audit_text = json.dumps([r.as_dict() for r in audit.query(conn, limit=10_000)])
    finally:
        db.close()
    return run


def normalised(run: Run, guesses: tuple[str, ...]) -> list[tuple[str, int, str]]:
    out = []
    for label, status, text in run.transcript:
        for i, guess in enumerate(guesses):
            text = text.replace(guess, f"<guess {i}>")
        out.append((label, status, text))
    return out


async def test_what_an_agent_reads_back_never_depends_on_a_secret_match(
    tmp_path_factory: pytest.TempPathFactory, echo_port: int
) -> None:
    """issue 7: bb values and keys, messages, replies, egress echoes (with the agent's own
    credential substituted), notifications: byte-identical for right and wrong guesses."""
    async with FakeProvider() as fake:
        homes = [Path(f"/tmp/lg-or{n}-{os.getpid()}") for n in (1, 2)]
        try:
            real = await scenario(homes[0], fake.base_url, echo_port, SECRETS)
            guess = await scenario(homes[1], fake.base_url, echo_port, WRONG)
        finally:
            import shutil

            for home in homes:
                shutil.rmtree(home, ignore_errors=True)
    # what the agents read back: same statuses, same lengths, same bytes but for the guess
    assert [(label, status) for label, status, _ in real.transcript] == [
        (label, status) for label, status, _ in guess.transcript
    ]
    assert all(status == 200 for _, status, _ in real.transcript), real.transcript
    assert [len(t) for _, _, t in real.transcript] == [len(t) for _, _, t in guess.transcript]
    assert normalised(real, SECRETS) == normalised(guess, WRONG)
    every = "".join(t for _, _, t in real.transcript)
    assert all(secret in every for secret in SECRETS)  # read back as written
    # the attacker's own credential, echoed by the host it is bound to, is still scrubbed
    assert ALICE_TOKEN not in every
    egress = [json.loads(t) for label, _, t in real.transcript if label == "egress"]
    assert all(json.loads(e["body"])["auth"] == f"Bearer {MASK}" for e in egress)
    # the operator's views mask real vault values, and only those
    for i, secret in enumerate(SECRETS):
        assert secret not in real.operator_bb[i] and MASK in real.operator_bb[i]
        assert WRONG[i] in guess.operator_bb[i] and MASK not in guess.operator_bb[i]
    assert MASK in real.cli_bb_get and PROVIDER_KEY not in real.cli_bb_get
    assert WRONG[0] in guess.cli_bb_get
    events = "\n".join(real.events)
    assert all(secret not in events for secret in SECRETS) and MASK in events
    assert all(w in "\n".join(guess.events) for w in WRONG)
    for secret in (*SECRETS, ALICE_TOKEN):
        assert secret not in real.audit_text
    assert MASK in real.audit_text and all(w in guess.audit_text for w in WRONG)


async def test_llm_echo_masks_provider_keys_only(home: Path) -> None:
    """issue 7: the LLM path masks the provider keys it uses (a provider may echo one) and
    nothing else: another agent's token or a non-provider system secret in a model's echo
    comes back as the agent wrote it, so the model is no oracle for them."""
    async with FakeProvider() as fake:
        paths = seed(home)
        async with (
            Host.running(parse_config(config(fake.base_url, 1)), paths),
            agent_client(paths, "alice") as alice,
        ):
            texts = {}
            for secret in (PROVIDER_KEY, HOOK_SECRET, BOB_TOKEN, wrong(PROVIDER_KEY)):
                messages = [{"role": "user", "content": secret}]
                reply = await alice.post("/v1/chat/completions", json={"messages": messages})
                assert reply.status_code == 200
                texts[secret] = reply.json()["choices"][0]["message"]["content"]
    assert texts[PROVIDER_KEY] == f"echo: {MASK}"
    for secret in (HOOK_SECRET, BOB_TOKEN, wrong(PROVIDER_KEY)):
        assert texts[secret] == f"echo: {secret}"


async def test_a_refused_handle_says_nothing_about_the_vault(home: Path, echo_port: int) -> None:
    """issue 7: naming a credential the agent may not use gets one refusal, byte for byte the
    same (but for the name it gave) for another agent's credential, a system secret, a
    provider key and a name the vault does not hold, granted by name or not; the audit
    record says which it was."""
    probes = [
        ("alice", "bobtoken", "not in the agent's allowed_credentials"),
        ("alice", "hook", "not in the agent's allowed_credentials"),
        ("alice", "provider", "not in the agent's allowed_credentials"),
        ("alice", "nosuchcredential", "not in the agent's allowed_credentials"),
        ("dave", "provider", "system-tier"),
        ("dave", "hook", "system-tier"),
        ("dave", "nosuchcredential", "no credential named 'nosuchcredential' in the vault"),
    ]
    async with FakeProvider() as fake:
        paths = seed(home)
        async with (
            Host.running(parse_config(config(fake.base_url, echo_port)), paths) as host,
            agent_client(paths, "alice") as alice,
            agent_client(paths, "dave") as dave,
        ):
            answers = []
            for agent, handle, _ in probes:
                client = alice if agent == "alice" else dave
                response = await client.post(
                    "/egress/http",
                    json={
                        "method": "POST",
                        "url": f"http://127.0.0.1:{echo_port}/echo",
                        "headers": {"Authorization": f"Bearer $CRED{{{handle}}}"},
                    },
                )
                answers.append((response.status_code, response.text.replace(handle, "<name>")))
            records = [r for r in audit.query(host.store.conn) if r.action == "egress.http"]
    assert len(set(answers)) == 1, answers
    status, text = answers[0]
    error = json.loads(text)["error"]
    assert status == 403 and error["code"] == "credential_denied"
    assert error["detail"] == {"credential": "<name>"}
    assert "not available to this agent" in error["message"]
    assert len(records) == len(probes)
    for record, (agent, _, why) in zip(records, probes, strict=True):
        assert record.actor == agent and record.decision == "deny"
        assert why in record.detail["reason"]


async def test_the_operators_socket_masks_errors_and_bodies_in(home: Path) -> None:
    """issue 7: on the control socket an error naming a vault value is masked, and a vault
    value the operator writes is masked on the way in (agents read the masked value)."""
    async with FakeProvider() as fake:
        paths = seed(home)
        async with (
            Host.running(parse_config(config(fake.base_url, 1)), paths),
            control_client(paths) as operator,
            agent_client(paths, "carol") as carol,
        ):
            missing = await operator.get(f"/v1/blackboard/entries/keys/{BOB_TOKEN}")
            assert missing.status_code == 404
            assert BOB_TOKEN not in missing.text and MASK in missing.text
            put = await operator.put(
                "/v1/blackboard/entries/shared/x", json={"value": {"note": f"use {HOOK_SECRET}"}}
            )
            assert put.status_code == 200
            read = (await carol.get("/v1/blackboard/entries/shared/x")).json()
            assert read["value"] == {"note": f"use {MASK}"}


def test_masking_a_route_that_does_not_exist_is_an_error() -> None:
    """A renamed route must not silently lose its masking."""
    from legion.api.http import Router
    from legion.api.masking import mask_routes
    from legion.gateway.redact import Redactor

    with pytest.raises(ValueError, match="no such routes"):
        mask_routes(Router("t"), Redactor(), only={("GET", "/v1/gone")})


def stream_deltas(raw: bytes) -> list[str]:
    """The content of every delta the agent received, in order (None as '')."""
    out = []
    for line in raw.decode().split("\n"):
        if line.startswith("data: {"):
            for choice in json.loads(line[6:]).get("choices") or []:
                out.append((choice.get("delta") or {}).get("content") or "")
    return out


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "litellm"])
async def test_a_streamed_echo_never_tells_which_guesses_begin_a_provider_key(
    home: Path, direct: bool
) -> None:
    """issue 7 (redaction oracle, found by the adversarial pass): a model streams back what
    the agent wrote. The stream redactor held back the end of the text exactly when it
    could begin a provider key, so an empty delta where the agent expected text told it
    that its guess was a prefix of the key: the key came out one character at a time
    (27 characters in under 700 calls). Every prefix of the key, and a wrong guess of the
    same length, must stream in deltas of the same sizes."""
    async with FakeProvider(chunk_chars=3) as fake:
        paths = seed(home)
        passthrough = f"passthrough = {str(direct).lower()}"
        text = config(fake.base_url, 1).replace(
            'credential = "provider"', f'credential = "provider"\n{passthrough}'
        )
        async with (
            Host.running(parse_config(text), paths) as host,
            agent_client(paths, "alice") as alice,
        ):

            async def shape(guess: str) -> list[int]:
                body = {"messages": [{"role": "user", "content": guess}], "stream": True}
                async with alice.stream("POST", "/v1/chat/completions", json=body) as response:
                    assert response.status_code == 200
                    deltas = stream_deltas(await response.aread())
                assert "".join(deltas) == f"echo: {guess}"  # a prefix alone is no secret
                return [len(d) for d in deltas]

            for size in range(1, len(PROVIDER_KEY)):
                prefix = PROVIDER_KEY[:size]
                other = prefix[:-1] + ("#" if prefix[-1] != "#" else "%")
                assert await shape(prefix) == await shape(other), size
            assert host.budgets.open == {}
