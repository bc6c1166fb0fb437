"""LiteLLM is loaded only for a model that needs it: a daemon whose models are all on the
direct path never imports it, through chat, streaming, embeddings and model listing, and
prices an unpriced direct-path model from LiteLLM's price map without importing LiteLLM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from legion.gateway.llm.pricing import load_table, price_for, price_map_path
from legion.gateway.vault import Vault
from legion.paths import Paths
from tests.fakes.provider import FakeProvider

pytestmark = pytest.mark.slow

KEY = "sk-lazy-litellm-test-key-0123456789"
ROOT = Path(__file__).resolve().parents[2]

# The real `legion daemon`, in a process that reports at exit which litellm modules it
# loaded, and its peak memory.
PROBE = textwrap.dedent(
    """
    import atexit, json, os, resource, runpy, sys

    def report():
        loaded = sorted(m for m in sys.modules if m.split(".")[0] == "litellm")
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with open(os.environ["PROBE_OUT"], "w") as out:
            json.dump({"litellm": loaded, "peak_mib": peak_kib / 1024}, out)

    atexit.register(report)
    sys.argv = ["legion", "--home", os.environ["PROBE_HOME"], "daemon", "--log-format", "json"]
    runpy.run_module("legion", run_name="__main__")
    """
)


def config(base_url: str, *, translated: bool) -> str:
    extra = (
        f"""
[llm.models.translated]
model = "openai/fake-translated"
api_base = "{base_url}"
credential = "provider"
passthrough = false
input_cost_per_mtok = 1.0
output_cost_per_mtok = 1.0
"""
        if translated
        else ""
    )
    return f"""
[runtime]
backend = "none"

[llm]
embedding_model = "emb"

[llm.models.m]
model = "openai/fake-model"
api_base = "{base_url}"
credential = "provider"
input_cost_per_mtok = 1.0
output_cost_per_mtok = 2.0

[llm.models.mapped]
# no price here: it comes from LiteLLM's price map, read without importing LiteLLM
model = "openai/gpt-4o-mini"
api_base = "{base_url}"
credential = "provider"

[llm.models.emb]
model = "openai/fake-embedding"
api_base = "{base_url}"
credential = "provider"
input_cost_per_mtok = 0.1
output_cost_per_mtok = 0.0
{extra}
[agents.alice]
model = "m"
allowed_models = ["mapped"]
"""


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    with FakeProvider() as fake:
        yield fake


def run_daemon(home: Path, text: str, calls: bool) -> dict[str, object]:
    paths = Paths.resolve(home)
    paths.home.mkdir(parents=True, exist_ok=True)
    paths.config.write_text(text)
    vault = Vault(paths.vault_db, paths.vault_key)
    vault.set("provider", KEY, tier="system")
    vault.close()
    out = home / "probe.json"
    env = {
        **os.environ,
        "PROBE_OUT": str(out),
        "PROBE_HOME": str(home),
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    result: dict[str, object] = {}
    try:
        deadline = time.monotonic() + 30
        while not paths.agent_socket("alice").exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the daemon did not open alice's socket"
            time.sleep(0.02)
        if calls:
            result.update(turn(paths))
        result["rss_mib"] = rss_mib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-3000:]
    result.update(json.loads(out.read_text()))
    return result


def turn(paths: Paths) -> dict[str, object]:
    """A chat turn as an agent makes it: the models it may use, a streamed reply, a plain
    one on the map-priced model, and an embedding."""
    transport = httpx.HTTPTransport(uds=str(paths.agent_socket("alice")))
    with httpx.Client(transport=transport, base_url="http://legion", timeout=30) as alice:
        listed = alice.get("/v1/models")
        assert listed.status_code == 200, listed.text
        hi = {"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 20}
        with alice.stream("POST", "/v1/chat/completions", json={**hi, "stream": True}) as r:
            assert r.status_code == 200
            events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
        text = "".join(
            (c.get("delta") or {}).get("content") or "" for e in events for c in e["choices"]
        )
        assert text == "echo: hello there"
        mapped = alice.post("/v1/chat/completions", json={**hi, "model": "mapped"})
        assert mapped.status_code == 200, mapped.text
        embedded = alice.post("/v1/embeddings", json={"input": "some words"})
        assert embedded.status_code == 200, embedded.text
        return {"mapped_cost": mapped.json()["legion"]["cost_usd"]}


def rss_mib(pid: int) -> float:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1]) / 1024
    return float("nan")


def test_issue_10_a_daemon_with_direct_models_only_never_imports_litellm(
    home: Path, provider: FakeProvider
) -> None:
    """issue 10: no model needs LiteLLM, so the daemon neither preloads it nor imports it
    for a chat turn (models, stream, plain call, embedding); the model without a price is
    priced from LiteLLM's price map all the same."""
    result = run_daemon(home, config(provider.base_url, translated=False), calls=True)
    assert result["litellm"] == [], result
    table = load_table()
    assert price_map_path() is not None and "gpt-4o-mini" in table.model_cost
    from legion.config import ModelConfig

    price = price_for("mapped", ModelConfig(model="openai/gpt-4o-mini"), table)
    assert price.input_per_token > 0
    cost = result["mapped_cost"]
    assert isinstance(cost, float) and cost > 0
    print(f"direct models only: RSS {result['rss_mib']:.0f} MiB, peak {result['peak_mib']:.0f} MiB")


def test_issue_10_a_model_that_needs_litellm_still_preloads_it(
    home: Path, provider: FakeProvider
) -> None:
    """issue 10: the probe sees LiteLLM when it is there: a model off the direct path
    (passthrough = false) makes the daemon import it at start, before any call."""
    result = run_daemon(home, config(provider.base_url, translated=True), calls=False)
    assert "litellm" in result["litellm"], result  # type: ignore[operator]
    print(f"a LiteLLM model: peak {result['peak_mib']:.0f} MiB")


@pytest.mark.anyio
async def test_issue_10_a_model_the_agent_may_not_use_never_starts_the_import(
    home: Path, provider: FakeProvider
) -> None:
    """issue 10: the permission is checked before LiteLLM is loaded: an agent naming a
    model off the direct path that it may not use is refused (403) without the host
    starting the import; its own direct-path model answers without it too."""
    from legion.config import parse_config
    from legion.host import Host
    from tests.conftest import agent_client

    paths = Paths.resolve(home)
    vault = Vault(paths.vault_db, paths.vault_key)
    vault.set("provider", KEY, tier="system")
    vault.close()
    text = config(provider.base_url, translated=True).replace('backend = "none"', "")
    async with (
        Host.running(parse_config(text), paths) as host,
        agent_client(paths, "alice") as alice,
    ):
        hi = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
        refused = await alice.post("/v1/chat/completions", json={**hi, "model": "translated"})
        assert refused.status_code == 403, refused.text
        assert (await alice.post("/v1/chat/completions", json=hi)).status_code == 200
        assert not host.litellm.started
