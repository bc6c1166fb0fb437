"""The daemon's own logs: JSON lines or text (`--log-format`), ISO timestamps, and nothing
else on stdout or stderr, LiteLLM's prints included."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from legion.gateway.vault import Vault
from legion.paths import Paths
from tests.conftest import Daemon
from tests.fakes.provider import FakeProvider, Reply
from tests.test_daemon import signal_and_wait, start_ready, wait_until

pytestmark = pytest.mark.slow

ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"
TEXT_RECORD = re.compile(rf"^{ISO} (debug|info|warning|error|critical) +\S+: \S")
KEY = "sk-daemon-logs-provider-key-8e4d1c"


def llm_config(base_url: str) -> str:
    return f"""
[llm.models.m]
model = "openai/fake-model"
api_base = "{base_url}"
credential = "provider"
passthrough = false
input_cost_per_mtok = 1.0
output_cost_per_mtok = 1.0

[llm.models.nowhere]
model = "no-such-provider-anywhere"
api_base = "{base_url}"
credential = "provider"
passthrough = false
input_cost_per_mtok = 1.0
output_cost_per_mtok = 1.0

[agents.alpha]
model = "m"
allowed_models = ["nowhere"]

[runtime]
backend = "none"
"""


def check_json_lines(stderr: str) -> list[dict[str, object]]:
    records = []
    for line in stderr.splitlines():
        assert line.strip(), "an empty line on stderr"
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON log record: {line!r}\n{stderr}") from None
        assert isinstance(record, dict), line
        assert re.fullmatch(ISO, str(record["ts"])), line
        assert record["level"] in {"debug", "info", "warning", "error", "critical"}, line
        assert isinstance(record["msg"], str), line
        records.append(record)
    return records


def check_text_lines(stderr: str) -> None:
    for line in stderr.splitlines():
        assert TEXT_RECORD.match(line) or line.startswith("    "), f"{line!r}\n{stderr}"


def drive_llm_calls(paths: Paths, fake: FakeProvider) -> None:
    """A call that works, a streamed one, one the provider fails, one LiteLLM cannot route."""
    with httpx.Client(
        transport=httpx.HTTPTransport(uds=str(paths.agent_socket("alpha"))),
        base_url="http://legion",
        timeout=60,
    ) as alpha:
        body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 20}
        ok = alpha.post("/v1/chat/completions", json=body)
        assert ok.status_code == 200, ok.text
        with alpha.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            assert r.status_code == 200
            assert "[DONE]" in "".join(r.iter_lines())
        fake.script(Reply(status=500))
        assert alpha.post("/v1/chat/completions", json=body).status_code >= 400
        unroutable = alpha.post("/v1/chat/completions", json={**body, "model": "nowhere"})
        assert unroutable.status_code >= 400, unroutable.text


@pytest.mark.parametrize(
    ("log_format", "env"),
    [
        ("json", {}),
        ("text", {}),
        ("json", {"JSON_LOGS": "true", "LITELLM_LOG": "DEBUG"}),  # LiteLLM's own switches
    ],
    ids=["json", "text", "litellm-env"],
)
def test_llm_calls_through_litellm_leave_only_log_records(
    home: Path, daemon: Callable[[], Daemon], log_format: str, env: dict[str, str]
) -> None:
    """issue 8: with LiteLLM imported and called (a success, a stream, a provider error, a
    model it cannot route: the paths where it prints banners), every line on stderr is one
    log record in the chosen format, and stdout stays empty."""
    paths = Paths.resolve(home)
    vault = Vault(paths.vault_db, paths.vault_key)
    vault.set("provider", KEY, tier="system")
    vault.close()
    with FakeProvider() as fake:
        (home / "legion.toml").write_text(llm_config(fake.base_url))
        d = daemon()
        proc = d.start("--log-format", log_format, env=env)
        wait_until(paths.agent_socket("alpha").is_socket, 20, "alpha's socket")
        drive_llm_calls(paths, fake)
        assert len(fake.requests) >= 3
        rc, _ = signal_and_wait(d, signal.SIGTERM)
        assert proc.stdout is not None and proc.stderr is not None
        stdout = proc.stdout.read().decode()
        stderr = proc.stderr.read().decode(errors="replace")
        d.stop()
    assert rc == 0, stderr
    assert stdout == "", stdout
    assert KEY not in stderr
    if log_format == "json":
        records = check_json_lines(stderr)
        assert any(r["msg"] == "host ready" for r in records)
        assert not any("Give Feedback" in str(r["msg"]) for r in records), stderr
    else:
        check_text_lines(stderr)
        assert " info    legion.daemon: host ready " in stderr
    assert "Give Feedback" not in stderr and "Provider List" not in stderr


STRAY = """
import sys, warnings, logging
from legion import logs
logs.setup("info", sys.argv[1])
logs.capture_stray_output()
print("printed to stdout")
print("\\x1b[31mprinted\\x1b[0m to stderr", file=sys.stderr)
sys.stdout.write("no newline yet")
sys.stdout.flush()
warnings.warn("a library warning")
logging.getLogger("lib").info("one %s", "record", extra={"fields": {"n": 1, "msg": "x"}})
try:
    1 / 0
except ZeroDivisionError:
    logging.getLogger("lib").exception("it failed")
"""


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_stray_prints_and_warnings_become_log_records(log_format: str) -> None:
    """issue 8: whatever a library prints or warns in the daemon comes out as a log record,
    never raw; control characters never reach the terminal raw."""
    result = subprocess.run(
        [sys.executable, "-c", STRAY, log_format],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONWARNINGS": "default"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "\x1b" not in result.stderr
    if log_format == "json":
        records = check_json_lines(result.stderr)
        msgs = {r["msg"]: r for r in records}
        assert msgs["printed to stdout"]["logger"] == "stdout"
        assert msgs["\x1b[31mprinted\x1b[0m to stderr"]["level"] == "warning"
        assert "no newline yet" in msgs
        assert any("a library warning" in str(m) for m in msgs)
        one = msgs["one record"]
        assert one["n"] == 1 and one["field_msg"] == "x"  # a field never hides the message
        assert "ZeroDivisionError" in str(msgs["it failed"]["exc"])
    else:
        check_text_lines(result.stderr)
        assert " info    stdout: printed to stdout" in result.stderr
        assert "\\x1b[31mprinted\\x1b[0m to stderr" in result.stderr
        assert " info    lib: one record n=1 msg=x" in result.stderr
        assert "\n    ZeroDivisionError: division by zero" in result.stderr


def test_auto_format_is_json_when_stderr_is_not_a_terminal(
    home: Path, daemon: Callable[[], Daemon]
) -> None:
    (home / "legion.toml").write_text('[agents.alpha]\n[runtime]\nbackend = "none"\n')
    d = daemon()
    err = start_ready(d)  # no --log-format: auto, and stderr is a pipe
    ready = err.wait_for_msg("host ready")
    at = datetime.fromisoformat(str(ready["ts"]).replace("Z", "+00:00"))
    assert at.tzinfo is not None and at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    rc, _ = signal_and_wait(d, signal.SIGTERM)
    check_json_lines(err.drain())
    d.stop()
    assert rc == 0


def test_bad_log_format_is_refused(home: Path) -> None:
    from tests.test_daemon import legion

    result = legion(home, "daemon", "--log-format", "xml")
    assert result.returncode == 2
    assert "auto, json, text" in result.stderr
