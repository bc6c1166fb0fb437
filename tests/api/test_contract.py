"""issue 15: the API contract, checked by a tool nobody here wrote.

Schemathesis (its `st run` command, as its authors ship it) reads each socket's own OpenAPI
document and drives the socket with what the document allows and what it forbids, in all
its phases: coverage (boundary and negative values of every rule), fuzzing, and stateful
sequences that follow the document's links (a put's version feeds a compare-and-swap, a
poll's item ids feed an ack). Every check runs: no server error, responses as documented,
schema-invalid requests refused (negative data), schema-valid requests never refused with a
4xx the server should not give (positive data), and so on.

The hosts are real daemons (`legion daemon`, one per socket so the two runs cannot lock
each other's keys), the LLM routes reach the fake provider over loopback, and the egress
route is refused before any lookup (the agent holds no `egress_hosts`): nothing leaves the
machine. Schemathesis speaks TCP, so the test owns a bridge from an ephemeral 127.0.0.1 port
to each Unix socket.

The run is deterministic (a fixed seed) and sized to stay well under two minutes on a
loaded 2-core machine: `EXAMPLES` (25) cases per operation; LEGION_CONTRACT_EXAMPLES=100
runs it deeper, LEGION_CONTRACT_SEED another seed (docs/api.md shows how to run it by hand).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from legion.paths import Paths
from tests.fakes.provider import FakeProviderProcess

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("LEGION_CONTRACT_EXAMPLES", "25"))
SEED = int(os.environ.get("LEGION_CONTRACT_SEED", "20150"))
# Checks left out, each with the reason. None: every check runs (`allow_header_conformance`
# and `unsupported_method` too, since the h11 server answers 405 with `Allow` and HEAD).
EXCLUDED_CHECKS: dict[str, str] = {}
# Operations where a schema-valid request may still be refused, each with the status, the
# reason and where the document says so. Nothing else is allowed.
POSITIVE_ALLOWANCES: dict[str, dict[str, list[str]]] = {
    "agent": {},
    "control": {
        # A skill folder's SKILL.md is a document in a format of its own (UTF-8, front matter by
        # the Agent Skills rules, whose name matches the folder), and the folder has a total
        # size in bytes: the schema states the folder's shape (name, paths, padded base64, one
        # file's size, the count), and the route answers 422 invalid_skill for what is inside.
        "POST /v1/skills": ["422"],
    },
}
# Operations left out: the ones that stop the host or stream forever.
EXCLUDED_PATHS = {
    "control": ["/v1/stop", "/v1/events"],
    "agent": [],
}

AGENT_CONFIG = """
[host]
# Long polls come back at once: the generated wait_s values (up to 30) are accepted, capped.
long_poll_max_s = 0.05
# Items polled but not acked come back soon, so stateful runs keep finding items to ack.
visibility_timeout_s = 2.0

[runtime]
backend = "none"

[automation]
# Above an hour: the schedule pattern in the document is the one for one minute and one
# hour (or */N hours) a day; the control host below carries the one for 5 minutes.
min_interval_s = 7200

[llm]
default_model = "fake"

[llm.models.fake]
model = "openai/fake-model"
api_base = "{base_url}"
input_cost_per_mtok = 0.0
output_cost_per_mtok = 0.0

[teams.red]

[agents.alice]
team = "red"

[agents.alice.permissions]
blackboard_read = ["**"]
blackboard_write = ["**"]
can_message = ["*"]
can_publish = ["**"]
can_subscribe = ["**"]
# The automation and browser routes answer past their policy: cron jobs (up to the cap,
# then 409), steering bob, and the browser (409 no_browser_runtime: no containers here).
can_manage_cron = true
can_steer = ["bob"]
can_use_browser = true

[agents.bob]
"""

CONTROL_CONFIG = """
[host]
long_poll_max_s = 0.05

[runtime]
backend = "none"

[automation]
min_interval_s = 300

[teams.red]

[agents.alice]
team = "red"

[agents.bob]
"""

# Statuses that mean "refused" for schema-invalid requests: schemathesis's defaults, plus
# 413, which the server answers when an over-long field makes the body exceed
# [host] max_body_bytes (a refusal all the same).
NEGATIVE_STATUSES = [
    "400",
    "401",
    "403",
    "404",
    "405",
    "406",
    "409",
    "413",
    "415",
    "422",
    "428",
    "429",
    "5xx",
]


class UnixBridge:
    """Forwards 127.0.0.1:<ephemeral port> to a Unix socket, on its own loop in a thread."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            upstream_reader, upstream_writer = await asyncio.open_unix_connection(
                str(self.socket_path)
            )
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        try:
            await asyncio.gather(
                self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
            )
        finally:
            self._tasks.discard(task)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._connect, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def __enter__(self) -> UnixBridge:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextmanager
def daemon_on(config: str) -> Iterator[Paths]:
    """`legion daemon` on a fresh home; its log goes to a file (a long run must never block
    on a full pipe), shown when the daemon does not exit cleanly."""
    home = Path(tempfile.mkdtemp(prefix="lg-", dir="/tmp"))
    (home / "legion.toml").write_text(config)
    paths = Paths.resolve(home)
    log = home / "daemon.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "legion", "--home", str(home), "daemon"],
            stdout=sink,
            stderr=sink,
        )
    try:
        deadline = time.monotonic() + 30
        while not paths.control_socket.exists():
            assert proc.poll() is None, f"the daemon exited: {log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, "the daemon did not open its control socket"
            time.sleep(0.02)
        yield paths
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        text = log.read_text(errors="replace")
        shutil.rmtree(home, ignore_errors=True)
    assert code == 0, f"the daemon exited {code}: {text[-4000:]}"
    assert '"level": "error"' not in text, f"the daemon logged errors: {text[-8000:]}"


# What schemathesis takes for an accepted schema-valid request (its own default).
POSITIVE_STATUSES = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]


def schemathesis_config(socket: str, directory: Path) -> Path:
    path = directory / f"schemathesis-{socket}.toml"

    def statuses(values: list[str]) -> str:
        return ", ".join(json.dumps(s) for s in values)

    text = (
        f"[checks.negative_data_rejection]\nexpected-statuses = [{statuses(NEGATIVE_STATUSES)}]\n"
    )
    for operation, extra in POSITIVE_ALLOWANCES[socket].items():
        text += (
            f"\n[[operations]]\ninclude-name = {json.dumps(operation)}\n"
            "[operations.checks.positive_data_acceptance]\n"
            f"expected-statuses = [{statuses(POSITIVE_STATUSES + extra)}]\n"
        )
    path.write_text(text)
    return path


def run_schemathesis(socket: str, bridge: UnixBridge, directory: Path) -> dict[str, Any]:
    """One `st run` over the bridge; returns its JSON report (and prints its summary)."""
    assert importlib.util.find_spec("schemathesis"), "schemathesis is missing: run make install"
    report = directory / f"{socket}.json"
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--no-color",
        "--config-file",
        str(schemathesis_config(socket, directory)),
        "run",
        f"{bridge.url}/v1/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(EXAMPLES),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--generation-database",
        "none",
        "--output-truncate",
        "true",
        "--report",
        "json",
        "--report-json-path",
        str(report),
    ]
    if EXCLUDED_CHECKS:
        command += ["--exclude-checks", ",".join(EXCLUDED_CHECKS)]
    for path in EXCLUDED_PATHS[socket]:
        command += ["--exclude-path", path]
    done = subprocess.run(
        command, cwd=directory, capture_output=True, text=True, timeout=600, check=False
    )
    phases = [
        line
        for line in done.stdout.splitlines()
        if "(in " in line or "Scenarios:" in line or "API Links:" in line
    ]
    summary = done.stdout[done.stdout.find("SUMMARY") - 40 :] if "SUMMARY" in done.stdout else ""
    print(f"\n--- schemathesis, {socket} socket, {EXAMPLES} examples per operation ---")
    print("\n".join(phases) + "\n" + (summary or done.stdout[-4000:]))
    assert report.exists(), f"no report; schemathesis said:\n{done.stdout[-6000:]}{done.stderr}"
    result: dict[str, Any] = json.loads(report.read_text())
    result["_output"] = done.stdout
    return result


def assert_clean(socket: str, report: dict[str, Any]) -> None:
    output = report["_output"]
    failures_text = output[output.find("FAILURES") :] if "FAILURES" in output else output
    assert report["failures"] == [], f"{socket} socket:\n{failures_text[:12000]}"
    assert report["errors"] == [], f"{socket} socket:\n{output[-12000:]}"
    assert report["test_cases"]["with_failures"] == 0
    assert report["test_cases"]["errored"] == 0
    operations = report["operations"]
    assert operations["tested"] == operations["selected"] > 0
    assert operations["errored"] == 0
    # Every phase that applies ran and passed; the stateful one follows the links.
    phases = report["phases"]
    assert phases["coverage"]["status"] == "success", phases
    assert phases["fuzzing"]["status"] == "success", phases
    assert phases["stateful"]["status"] == "success", phases
    # Every rule's regex is one schemathesis can generate from.
    assert report["warnings"]["unsupported_regex"] == []
    assert report["exit_code"] == 0


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="lg-st-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def prepare_agent_host(paths: Paths, agent: str, count: int) -> None:
    """Messages from the operator, so the stateful run finds items to ack and answer; and one
    chat call, so the gateway has loaded LiteLLM (seconds on a loaded machine) before the
    run's requests, which time out after 10 s."""
    transport = httpx.HTTPTransport(uds=str(paths.control_socket))
    with httpx.Client(transport=transport, base_url="http://legion", timeout=10) as client:
        for i in range(count):
            sent = client.post("/v1/messages", json={"to": agent, "payload": {"n": i}})
            assert sent.status_code == 200, sent.text
    transport = httpx.HTTPTransport(uds=str(paths.agent_socket(agent)))
    with httpx.Client(transport=transport, base_url="http://legion", timeout=180) as client:
        chat = {"messages": [{"role": "user", "content": "ready?"}]}
        answer = client.post("/v1/chat/completions", json=chat)
        assert answer.status_code == 200, answer.text


def test_agent_socket_honours_its_contract(workdir: Path) -> None:
    """issue 15: every route of an agent socket, schemathesis with all checks: no 500 on
    ids beyond SQLite's range, no lax coercion (`true` as 1), no schema-valid key, topic or
    URL refused, stateful through the links; zero failures."""
    with (
        FakeProviderProcess() as provider,
        daemon_on(AGENT_CONFIG.format(base_url=provider.base_url)) as paths,
    ):
        prepare_agent_host(paths, "alice", 300)
        with UnixBridge(paths.agent_socket("alice")) as bridge:
            report = run_schemathesis("agent", bridge, workdir)
    assert_clean("agent", report)


def test_control_socket_honours_its_contract(workdir: Path) -> None:
    """issue 15: every route of the control socket but the one that stops the host and the
    endless event stream, schemathesis with all checks; zero failures."""
    with daemon_on(CONTROL_CONFIG) as paths, UnixBridge(paths.control_socket) as bridge:
        report = run_schemathesis("control", bridge, workdir)
    assert_clean("control", report)
