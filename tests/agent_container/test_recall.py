"""Cross-session recall with the runtime as a plain process (issue 11).

The user states a fact in one session; the process is stopped (SIGTERM) and started again,
so the new session has no history; the agent finds the fact with memory_search in
memory.db, over the host's embeddings. The same test runs in a real container, restarted,
in tests/fleet/test_docker.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from legion.host import Host
from tests.agent_container.harness import ask, identity_of, running_host, until
from tests.agent_container.test_mind import chat_requests, mind_config
from tests.fakes.provider import FakeProvider, Reply, ToolCall

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@asynccontextmanager
async def agent_process(host: Host, home: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent_container",
        env={
            **os.environ,
            "LEGION_SOCKET": str(host.paths.agent_socket("alice")),
            "LEGION_WORKSPACE": str(home / "data" / "workspace"),
            "LEGION_DATA": str(home / "data"),
            "LEGION_IDENTITY": str(identity_of(host, "alice")),
        },
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def test_a_fact_told_in_one_session_is_recalled_in_the_next_one(home: Path) -> None:
    """issue 11: the cross-session recall, end to end against the fake provider."""
    # Short host long-polls: a stopped process leaves its last long-poll parked on the host
    # (the server does not see the client go), and an item handed to it would stay hidden
    # for the visibility timeout. The test waits for that poll to lapse before restarting.
    async with (
        FakeProvider() as fake,
        running_host(home, "[host]\nlong_poll_max_s = 0.5\n" + mind_config(fake.base_url)) as host,
    ):
        async with agent_process(host, home):
            fake.script(
                Reply(
                    tool_calls=[ToolCall("memory_save", {"text": "The user's cat is called Miso"})]
                ),
                Reply(content="I will remember that."),
            )
            reply = await ask(host, "My cat is called Miso.", timeout_s=30)
            assert reply.text == "I will remember that."
            assert await until(lambda: host.inboxes.depth("alice") == 0)
        assert (home / "data" / "memory.db").exists()
        assert await until(lambda: not host.inboxes._parked.get("alice"))
        async with agent_process(host, home):  # a new process: a new session, no history
            fake.script(
                Reply(tool_calls=[ToolCall("memory_search", {"query": "what is my cat called"})]),
                Reply(content="Your cat is called Miso."),
            )
            reply = await ask(host, "What is my cat called?", timeout_s=30)
            assert reply.text == "Your cat is called Miso."
        first_of_new_session = chat_requests(fake)[-2]["messages"]
        assert [m["role"] for m in first_of_new_session] == ["system", "user"]
        assert "Miso" not in str(first_of_new_session)  # not from history or the prompt
        found = chat_requests(fake)[-1]["messages"][-1]
        assert found["role"] == "tool" and "The user's cat is called Miso" in found["content"]
        assert "vector" in found["content"]  # found through its embedding too
