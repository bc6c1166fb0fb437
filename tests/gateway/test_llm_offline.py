"""LiteLLM is imported lazily and never reaches for the network (its price map is local)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PROBE = textwrap.dedent(
    """
    import asyncio, json, sys
    network = []

    def hook(event, args):
        if event in ("socket.connect", "socket.getaddrinfo", "socket.gethostbyname",
                     "socket.gethostbyname_ex", "socket.sendto"):
            network.append([event, repr(args)[:300]])

    sys.addaudithook(hook)
    import legion.host  # the host itself must not import LiteLLM
    assert "litellm" not in sys.modules, "litellm imported on the start path"
    from legion.config import ModelConfig
    from legion.gateway.llm.pricing import price_for
    from legion.gateway.llm.runtime import load_blocking
    from tests.fakes.provider import FakeProvider

    litellm = load_blocking()
    price = price_for("mini", ModelConfig(model="openai/gpt-4o-mini"), litellm)

    async def call():
        async with FakeProvider() as fake:
            reply = await litellm.acompletion(
                model="openai/fake", api_base=fake.base_url, api_key="k",
                messages=[{"role": "user", "content": "hi"}], num_retries=0)
            tokens = litellm.token_counter(model="gpt-4o-mini", text="hello world")
            return reply.choices[0].message.content, tokens

    content, tokens = asyncio.run(call())
    print(json.dumps({"price": [price.input_per_token, price.output_per_token],
                      "content": content, "tokens": tokens, "network": network}))
    """
)

LOOPBACK = ("'127.0.0.1'", "'::1'", "'localhost'", "127.0.0.1")


@pytest.mark.slow
def test_litellm_prices_and_calls_without_any_remote_access(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    run = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(root)},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["price"][0] > 0 and result["price"][1] > 0  # from the installed price map
    assert result["content"] == "echo: hi"
    assert result["tokens"] > 0  # the tokenizer files ship with LiteLLM
    remote = [n for n in result["network"] if not any(lo in n[1] for lo in LOOPBACK)]
    assert remote == [], remote
