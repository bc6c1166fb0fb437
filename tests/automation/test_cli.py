"""`legion cron`, `legion webhooks`, `legion status` against a real daemon (issue 12)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from legion.automation.signatures import legion_signature
from tests.automation.test_cron_daemon import CONFIG, wait_for
from tests.conftest import Daemon

pytestmark = pytest.mark.slow

HOOKS = "\n[automation.webhooks]\nenabled = true\nport = 0\n"


def legion(home: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "legion", "--home", str(home), *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
    )


def test_the_commands(home: Path, daemon: Callable[[], Daemon]) -> None:
    (home / "legion.toml").write_text(CONFIG + HOOKS)
    d = daemon()
    d.start()
    try:
        added = legion(
            home, "cron", "add", "alice", "hello", "-s", "every 2s", "-m", "hi", "--json"
        )
        assert added.returncode == 0, added.stderr
        job = json.loads(added.stdout)
        assert job["agent"] == "alice" and job["kind"] == "every" and job["timezone"] == "UTC"
        bad = legion(home, "cron", "add", "alice", "x", "-s", "0 0 30 2 *", "-m", "x")
        assert bad.returncode == 1 and "not a valid cron expression" in bad.stderr
        assert "Traceback" not in bad.stderr
        assert (
            legion(home, "cron", "add", "alice", "y", "-s", "@daily", "--args", "[1]").returncode
            == 2
        )
        assert wait_for(
            lambda: json.loads(legion(home, "cron", "ls", "--json").stdout)[0]["runs"] >= 1
        )
        listed = legion(home, "cron", "ls")
        assert "alice/hello" in listed.stdout and "every 2s" in listed.stdout
        paused = legion(home, "cron", "pause", "alice/hello", "--json")
        assert json.loads(paused.stdout)["state"] == "paused"
        assert legion(home, "cron", "resume", str(job["id"])).returncode == 0
        runs = legion(home, "cron", "runs", "alice/hello", "--json")
        assert json.loads(runs.stdout)[0]["trigger"] == "schedule"
        status = json.loads(legion(home, "status", "--json").stdout)
        alice = status["agents"][0]
        assert alice["cron_jobs"] == 1 and alice["queue_depth"] >= 1
        assert "queue=" in legion(home, "status").stdout
        assert legion(home, "cron", "rm", "alice/hello").returncode == 0
        assert legion(home, "cron", "rm", "alice/hello").returncode == 1

        hook = legion(home, "webhooks", "add", "deploy", "--agent", "alice", "--json")
        assert hook.returncode == 0, hook.stderr
        info = json.loads(hook.stdout)
        secret, url = info["secret"], info["url"]
        assert secret.startswith("whk_") and url.endswith("/hooks/deploy")
        assert secret not in legion(home, "webhooks", "ls", "--json").stdout
        body, ts = b'{"ok": 1}', int(time.time())
        r = httpx.post(
            url,
            content=body,
            headers={
                "x-legion-timestamp": str(ts),
                "x-legion-delivery": "cli-1",
                "x-legion-signature": "sha256=" + legion_signature(secret, ts, "cli-1", body),
            },
        )
        assert r.status_code == 202, r.text
        result = legion(home, "webhooks", "result", r.json()["job"], "--json")
        assert json.loads(result.stdout)["status"] == "queued"
        rotated = legion(
            home,
            "webhooks",
            "rotate",
            "deploy",
            "--secret-stdin",
            stdin="whsec_from-stripe-0123456789\n",
        )
        assert rotated.returncode == 0 and "whsec_" not in rotated.stdout
        assert legion(home, "webhooks", "rm", "deploy").returncode == 0
        steer = legion(home, "chat", "alice", "--steer", "hurry", "--timeout", "1")
        assert steer.returncode == 1 and "steer queued for alice" in steer.stderr
    finally:
        d.stop()
