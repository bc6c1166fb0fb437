"""The agent's mind in real containers (issue 11; marker `docker`).

The identity files are the operator's: mounted read-only outside the volume, the agent
user inside the container can neither modify, replace, remove nor shadow them. A fact
told before a container restart is recalled after it, through memory.db in the volume.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from legion.config import parse_config
from legion.fleet.docker_backend import DockerBackend
from legion.fleet.identity import AgentFiles
from legion.gateway.vault import Vault
from legion.host import Host
from legion.paths import Paths
from tests.agent_container.harness import until
from tests.fakes.provider import FakeProvider, Reply, ToolCall
from tests.fleet.test_docker import PROVIDER_KEY, docker_exec, reply_to, until_polling

pytestmark = [pytest.mark.docker, pytest.mark.anyio, pytest.mark.slow]

SOUL = "You are Alice: calm, precise, loyal to your operator."


def config_text(image: str, base_url: str) -> str:
    return f"""
[host]
long_poll_max_s = 1

[runtime]
image = "{image}"
heartbeat_timeout_s = 60
restart_max_per_hour = 10

[llm]
embedding_model = "emb"

[llm.models.m]
model = "openai/fake"
api_base = "{base_url}"
credential = "provider"
input_cost_per_mtok = 1.0
output_cost_per_mtok = 1.0

[llm.models.emb]
model = "openai/fake-embedding"
api_base = "{base_url}"
credential = "provider"
input_cost_per_mtok = 0.1
output_cost_per_mtok = 0.0

[agents.alice]
model = "m"
"""


@asynccontextmanager
async def mind_fleet(home: Path, image: str, fake: FakeProvider) -> AsyncIterator[Host]:
    paths = Paths.resolve(home)
    paths.home.mkdir(parents=True, exist_ok=True)
    vault = Vault(paths.vault_db, paths.vault_key)
    vault.set("provider", PROVIDER_KEY, tier="system")
    vault.close()
    AgentFiles.of(paths, "alice").write("SOUL.md", SOUL, "operator")
    config = parse_config(config_text(image, fake.base_url))
    async with Host.running(config, paths, runtime=DockerBackend(str(home))) as host:
        await until_polling(host, "alice")
        yield host


ATTACKS = r"""
import json, os
ident = "/etc/legion/identity"
out = {"seen": sorted(os.listdir(ident)), "soul": open(ident + "/SOUL.md").read()}
def attempt(name, fn):
    try:
        fn()
        out[name] = "succeeded"
    except OSError as exc:
        out[name] = type(exc).__name__
open("/tmp/evil", "w").write("EVIL")
attempt("write", lambda: open(ident + "/SOUL.md", "w").write("EVIL"))
attempt("append", lambda: open(ident + "/SOUL.md", "a").write("EVIL"))
attempt("rename_over", lambda: os.rename("/tmp/evil", ident + "/SOUL.md"))
attempt("remove", lambda: os.unlink(ident + "/SOUL.md"))
attempt("symlink", lambda: os.symlink("/tmp/evil", ident + "/INSTRUCTIONS.md"))
attempt("new_file", lambda: open(ident + "/USER.md", "w").write("EVIL"))
attempt("chmod", lambda: os.chmod(ident + "/SOUL.md", 0o666))
attempt("move_folder", lambda: os.rename(ident, "/etc/legion/old"))
attempt("shadow_folder", lambda: os.mkdir("/etc/legion/identity2"))
attempt("workspace_copy", lambda: open("/data/workspace/SOUL.md", "w").write("EVIL SOUL"))
attempt("workspace_link", lambda: os.symlink("/tmp/evil", "/data/workspace/INSTRUCTIONS.md"))
out["soul_after"] = open(ident + "/SOUL.md").read()
print(json.dumps(out))
"""


async def test_the_agent_cannot_modify_replace_or_shadow_its_identity(
    home: Path, agent_image: str
) -> None:
    """issue 11: write, rename over, symlink, remove, a same-named file in the workspace."""
    async with FakeProvider() as fake, mind_fleet(home, agent_image, fake) as host:
        code, output = await docker_exec(host, "alice", ATTACKS)
        assert code == 0, output
        seen: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
        assert seen["soul"] == SOUL and seen["soul_after"] == SOUL
        for attack in (
            "write",
            "append",
            "rename_over",
            "remove",
            "symlink",
            "new_file",
            "chmod",
            "move_folder",
            "shadow_folder",
        ):
            assert seen[attack] != "succeeded", (attack, seen)
        assert seen["workspace_copy"] == "succeeded"  # its workspace is its own...
        assert seen["workspace_link"] == "succeeded"
        fake.script(Reply(content="hello"), model="fake")
        await reply_to(host, "alice", "who are you?")
        prompt = fake.requests[-1].body["messages"][0]["content"]
        assert SOUL in prompt and "EVIL" not in prompt  # ...but never shadows the identity
        files = AgentFiles.of(host.paths, "alice")
        assert files.read("SOUL.md") == SOUL and files.read("INSTRUCTIONS.md") == ""
        assert [v.by for v in files.versions()] == ["operator"]


async def test_a_fact_is_recalled_after_the_container_restarts(
    home: Path, agent_image: str
) -> None:
    """issue 11: cross-session recall, the container restarted in between."""
    async with FakeProvider() as fake, mind_fleet(home, agent_image, fake) as host:
        fake.script(
            Reply(tool_calls=[ToolCall("memory_save", {"text": "The user's cat is called Miso"})]),
            Reply(content="I will remember that."),
            model="fake",
        )
        reply = await reply_to(host, "alice", "My cat is called Miso.")
        assert reply.text == "I will remember that."
        assert (host.paths.agent_data("alice") / "memory.db").exists()
        old = host.fleet.runs["alice"].container_id
        await host.fleet.restart("alice")
        assert host.fleet.runs["alice"].container_id != old
        await until_polling(host, "alice")
        # the stopped container's last long poll lapses on the host (long_poll_max_s = 1)
        assert await until(lambda: len(host.inboxes._parked.get("alice", [])) <= 1, 10)
        started = time.monotonic()
        fake.script(
            Reply(tool_calls=[ToolCall("memory_search", {"query": "what is my cat called"})]),
            Reply(content="Your cat is called Miso."),
            model="fake",
        )
        reply = await reply_to(host, "alice", "What is my cat called?")
        assert reply.text == "Your cat is called Miso.", time.monotonic() - started
        chats = [r.body for r in fake.requests if r.path.endswith("/chat/completions")]
        assert [m["role"] for m in chats[-2]["messages"]] == ["system", "user"]
        assert "Miso" not in json.dumps(chats[-2]["messages"])
        found = chats[-1]["messages"][-1]
        assert found["role"] == "tool" and "The user's cat is called Miso" in found["content"]
        assert "vector" in found["content"]
