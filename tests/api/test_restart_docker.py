"""issue 8, in real containers: a chat right after `legion agents restart` answers at once.

Before, the item went to the long poll the stopped container had parked (its connection
gone, the host none the wiser) and the new container waited out the 60 s visibility
timeout. Marker `docker`; CI runs it with an engine.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import control_client, loopback_server
from tests.fakes.provider import FakeProvider
from tests.fleet.test_docker import Hello, fleet, reply_to, until_polling

pytestmark = [pytest.mark.docker, pytest.mark.anyio, pytest.mark.slow]

RESTARTED_REPLY_S = 2.0


@pytest.fixture
def web() -> Iterator[ThreadingHTTPServer]:
    with loopback_server(Hello) as server:
        yield server


async def test_a_chat_right_after_a_restart_answers_in_a_real_container(
    home: Path, agent_image: str, web: ThreadingHTTPServer
) -> None:
    port = int(web.server_address[1])
    async with FakeProvider() as fake, fleet(home, agent_image, fake, port) as host:
        first = await reply_to(host, "alice", "warm up")  # the first LLM call loads LiteLLM
        assert first.text.startswith("echo: warm up")
        for round_ in range(2):
            host.last_seen.pop("alice", None)
            async with control_client(host.paths) as operator:
                restarted = await operator.post("/v1/agents/alice/restart")
                assert restarted.status_code == 200, restarted.text
            started = time.monotonic()
            reply = await reply_to(host, "alice", f"after restart {round_}", timeout_s=90)
            took = time.monotonic() - started
            assert reply.text.startswith(f"echo: after restart {round_}")
            assert took < RESTARTED_REPLY_S, f"the chat after a restart took {took:.2f} s"
            await until_polling(host, "alice")
