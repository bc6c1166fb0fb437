"""The `legion` command line, run as the operator runs it: a subprocess against a real host."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer

from legion import __version__
from legion.cli.main import app
from tests.conftest import Daemon

CONFIG = """
[agents.alpha]
[agents.alpha.permissions]
blackboard_read = ["shared/**"]
blackboard_write = ["shared/alpha/**"]
"""


# --- helpers -------------------------------------------------------------------------------


def legion(home: Path, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """`legion --home HOME ARGS...` in a fresh process, output captured as text."""
    env = {k: v for k, v in os.environ.items() if k != "LEGION_HOME"}
    env["COLUMNS"] = "200"  # rich tables: keep rows on one line
    return subprocess.run(
        [sys.executable, "-m", "legion", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    return result


def clean_fail(result: subprocess.CompletedProcess[str], code: int) -> str:
    """Asserts exit `code`, nothing on stdout, a message and no traceback on stderr."""
    assert result.returncode == code, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.strip()
    return result.stderr


def drain_until_ready(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> threading.Thread:
    """Wait for the daemon's `host ready` log line, then keep draining its stderr in a thread
    (so a chatty host never fills the pipe and stalls); join the thread after the exit."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while b'"msg": "host ready"' not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"daemon not ready within {timeout} s:\n{data.decode()}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"daemon exited before ready:\n{data.decode()}")
            data += chunk

    def drain() -> None:
        with contextlib.suppress(OSError):
            while os.read(fd, 65536):
                pass

    thread = threading.Thread(target=drain, name="daemon-stderr", daemon=True)
    thread.start()
    return thread


def unique(prefix: str = "shared/cli") -> str:
    return f"{prefix}/{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def host_home() -> Iterator[Path]:
    """One daemon for the module's tests that need a running host."""
    home = Path(tempfile.mkdtemp(prefix="lg-", dir="/tmp"))
    (home / "legion.toml").write_text(CONFIG + '\n[runtime]\nbackend = "none"\n')
    d = Daemon(home)
    drain: threading.Thread | None = None
    try:
        drain = drain_until_ready(d.start())
        yield home
    finally:
        if d.proc is not None:
            if d.proc.poll() is None:
                d.proc.send_signal(signal.SIGTERM)
            d.proc.wait(10)
            if drain is not None:
                drain.join(5)
            d.stop()
        shutil.rmtree(home, ignore_errors=True)


# --- the blackboard with a running host ------------------------------------------------------


@pytest.mark.slow
def test_bb_round_trip_human(host_home: Path) -> None:
    key = unique()
    out = ok(legion(host_home, "bb", "put", key, '{"plan": [1, 2], "by": "op"}')).stdout
    assert out.strip() == f"{key} = version 1"
    out = ok(legion(host_home, "bb", "put", key, '{"plan": [1, 2, 3], "by": "op"}')).stdout
    assert out.strip() == f"{key} = version 2"

    got = ok(legion(host_home, "bb", "get", key)).stdout
    assert json.loads(got) == {"plan": [1, 2, 3], "by": "op"}

    listing = ok(legion(host_home, "bb", "ls", "shared/cli/")).stdout
    row = next(line for line in listing.splitlines() if key in line)
    assert "operator" in row and " 2 " in f" {row} "

    assert ok(legion(host_home, "bb", "rm", key)).stdout.strip() == f"deleted {key}"
    assert key in clean_fail(legion(host_home, "bb", "get", key), 1)
    assert key in clean_fail(legion(host_home, "bb", "rm", key), 1)
    assert key not in legion(host_home, "bb", "ls", "shared/cli/").stdout


@pytest.mark.slow
def test_bb_round_trip_json(host_home: Path) -> None:
    key = unique()
    put = json.loads(ok(legion(host_home, "bb", "put", key, '"hello"', "--json")).stdout)
    assert put["key"] == key and put["value"] == "hello"
    assert put["version"] == 1 and put["writer"] == "operator" and put["expires_at"] is None

    got = json.loads(ok(legion(host_home, "bb", "get", key, "--json")).stdout)
    assert got == put

    listed = json.loads(ok(legion(host_home, "bb", "ls", "shared/cli/", "--json")).stdout)
    assert isinstance(listed, list)
    assert [e for e in listed if e["key"] == key] == [put]
    assert all(e["key"].startswith("shared/cli/") for e in listed)

    removed = json.loads(ok(legion(host_home, "bb", "rm", key, "--json")).stdout)
    assert removed == {"key": key, "deleted": True}
    listed = json.loads(ok(legion(host_home, "bb", "ls", "shared/cli/", "--json")).stdout)
    assert key not in {e["key"] for e in listed}
    clean_fail(legion(host_home, "bb", "get", key, "--json"), 1)


@pytest.mark.slow
def test_bb_ttl_expires_from_get_and_ls(host_home: Path) -> None:
    key = unique("shared/ttl")
    put = json.loads(ok(legion(host_home, "bb", "put", key, "1", "--ttl", "0.3", "--json")).stdout)
    put_at = time.time()  # the write happened before this
    assert put["expires_at"] == pytest.approx(put["updated_at"] + 0.3, abs=1e-3)
    # Live right after the write (read in-process: a CLI start takes most of 0.3 s).
    control = Path(host_home, "run", "control.sock")
    with httpx.Client(
        transport=httpx.HTTPTransport(uds=str(control)), base_url="http://legion", timeout=10
    ) as client:
        early = client.get(f"/v1/blackboard/entries/{key}")
    if time.time() < put["expires_at"]:
        assert early.status_code == 200, early.text

    # The TTL itself is the condition here: wait until 0.5 s after the write.
    time.sleep(max(0.0, put_at + 0.5 - time.time()))
    assert "no blackboard key" in clean_fail(legion(host_home, "bb", "get", key), 1)
    listed = json.loads(ok(legion(host_home, "bb", "ls", "shared/ttl/", "--json")).stdout)
    assert key not in {e["key"] for e in listed}
    assert key not in legion(host_home, "bb", "ls", "shared/ttl/").stdout


@pytest.mark.slow
@pytest.mark.parametrize("value", ["not json", "{'a': 1}", "[1, 2"])
def test_bb_put_bad_json_exits_2_with_a_hint(host_home: Path, value: str) -> None:
    key = unique()
    err = clean_fail(legion(host_home, "bb", "put", key, value), 2)
    assert "JSON" in err
    assert "quote strings" in err  # the hint
    assert legion(host_home, "bb", "get", key).returncode == 1  # nothing was written


@pytest.mark.slow
def test_bb_get_missing_key_is_a_clear_exit_1(host_home: Path) -> None:
    key = unique()
    result = legion(host_home, "bb", "get", key)
    err = clean_fail(result, 1)
    assert result.stdout == ""
    assert f"no blackboard key '{key}'" in err
    assert len(err.strip().splitlines()) == 1


def _all_keys(home: Path) -> set[str]:
    return {e["key"] for e in json.loads(ok(legion(home, "bb", "ls", "--json")).stdout)}


@pytest.mark.slow
@pytest.mark.parametrize(
    "suffix", ["/../etc", "/./dot", "/q?x=1", "/frag#x", "/pct%2Fslash", "/sp ace"]
)
def test_bb_put_of_an_invalid_key_is_refused_and_writes_nothing(
    host_home: Path, suffix: str
) -> None:
    """The key the operator typed is the key the host judges: never a URL-normalized other key
    (`a/../b` must not become `b`, `a?x` must not become `a`)."""
    key = unique("shared/bad") + suffix
    before = _all_keys(host_home)
    err = clean_fail(legion(host_home, "bb", "put", key, "1"), 1)
    assert "invalid key" in err
    assert _all_keys(host_home) == before, "an invalid key wrote some other key"


@pytest.mark.slow
def test_bb_rm_of_a_dotted_key_deletes_nothing_else(host_home: Path) -> None:
    victim = unique("shared/victim")
    ok(legion(host_home, "bb", "put", victim, '"keep me"'))
    dotted = "shared/other/.." + victim.removeprefix("shared")
    err = clean_fail(legion(host_home, "bb", "rm", dotted), 1)
    assert "invalid key" in err
    assert json.loads(ok(legion(host_home, "bb", "get", victim)).stdout) == "keep me"
    assert "invalid key" in clean_fail(legion(host_home, "bb", "get", dotted), 1)


# --- audit ---------------------------------------------------------------------------------


def _audit(home: Path, *args: str) -> list[dict[str, Any]]:
    records = json.loads(ok(legion(home, "audit", "--json", "--limit", "10000", *args)).stdout)
    assert isinstance(records, list)
    return records


@pytest.mark.slow
def test_audit_json_lists_the_operators_bb_put(host_home: Path) -> None:
    key = unique()
    ok(legion(host_home, "bb", "put", key, "42"))
    records = _audit(host_home)
    mine = [r for r in records if r["target"] == key]
    assert [(r["actor"], r["action"], r["decision"]) for r in mine] == [
        ("operator", "bb.put", "allow")
    ]
    seqs = [r["seq"] for r in records]
    assert seqs == sorted(seqs)
    assert {"seq", "ts", "actor", "action", "target", "decision", "hash", "prev_hash"} <= set(
        mine[0]
    )
    human = ok(legion(host_home, "audit", "--limit", "10000")).stdout
    assert any(key in line and "bb.put" in line for line in human.splitlines())


@pytest.mark.slow
def test_audit_filters_by_agent_since_and_limit(host_home: Path) -> None:
    key = unique()
    ok(legion(host_home, "bb", "put", key, "1"))
    # An agent acts too: one allowed write and one denied.
    sock = Path(host_home, "run", "agents", "alpha", "mesh.sock")
    with httpx.Client(
        transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://legion", timeout=10
    ) as alpha:
        mid = time.time()
        assert alpha.put(f"/v1/blackboard/entries/shared/alpha/{key[-10:]}", json={"value": 1})
        denied = alpha.put("/v1/blackboard/entries/shared/cli/nope", json={"value": 1})
        assert denied.status_code == 403

    operator = _audit(host_home, "--agent", "operator")
    assert operator and {r["actor"] for r in operator} == {"operator"}
    assert any(r["target"] == key and r["action"] == "bb.put" for r in operator)

    alpha_records = _audit(host_home, "--agent", "alpha")
    assert {r["actor"] for r in alpha_records} == {"alpha"}
    assert any(r["decision"] == "deny" and r["target"] == "shared/cli/nope" for r in alpha_records)

    recent = _audit(host_home, "--since", "1h")
    assert any(r["target"] == key for r in recent)
    assert all(r["ts"] >= time.time() - 3600 - 5 for r in recent)
    after = _audit(host_home, "--since", f"{mid:.6f}")
    assert after and all(r["ts"] >= mid for r in after)
    assert not any(r["target"] == key for r in after)  # written before `mid`
    # issue 8: an actor found nowhere (not configured, no record) is a typo: exit 1
    assert "no agent named 'nobody'" in clean_fail(
        legion(host_home, "audit", "--since", "1h", "--agent", "nobody"), 1
    )

    newest = _audit(host_home, "--limit", "1")
    assert len(newest) == 1
    assert newest[0]["seq"] == max(r["seq"] for r in _audit(host_home))

    err = clean_fail(legion(host_home, "audit", "--since", "last tuesday"), 2)
    assert "30m" in err  # says what it accepts


@pytest.mark.slow
def test_audit_verify_with_a_running_host(host_home: Path) -> None:
    ok(legion(host_home, "bb", "put", unique(), "1"))
    out = ok(legion(host_home, "audit", "--verify")).stdout
    assert out.startswith("audit log ok:")
    result = json.loads(ok(legion(host_home, "audit", "--verify", "--json")).stdout)
    assert result["ok"] is True and result["checked"] >= 1 and result["bad_seq"] is None


# --- without a host --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [("status",), ("status", "--json"), ("bb", "get", "shared/x"), ("bb", "ls"), ("stop",)],
    ids=lambda a: " ".join(a),
)
@pytest.mark.parametrize("stale_socket", [False, True], ids=["no-socket", "stale-socket"])
def test_no_host_exits_3_naming_legion_daemon(
    home: Path, args: tuple[str, ...], stale_socket: bool
) -> None:
    if stale_socket:
        # What a host killed with SIGKILL leaves behind: a socket file nobody listens on.
        run = home / "run"
        run.mkdir(mode=0o700)
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dead.bind(str(run / "control.sock"))
        dead.close()
    result = legion(home, *args)
    err = clean_fail(result, 3)
    assert "legion daemon" in err
    assert result.stdout == ""


def test_audit_without_a_database_says_how_to_start(home: Path) -> None:
    assert "legion daemon" in clean_fail(legion(home, "audit"), 1)


# --- config ----------------------------------------------------------------------------------


def test_config_init_writes_a_file_config_check_accepts(home: Path) -> None:
    target = home / "fresh"
    path = ok(legion(target, "config", "path")).stdout.strip()
    assert path == str(target / "legion.toml")
    assert not Path(path).exists()

    assert path in ok(legion(target, "config", "init")).stdout
    assert Path(path).is_file()
    assert (Path(path).stat().st_mode & 0o077) == 0  # may name credentials later: 0600

    checked = ok(legion(target, "config", "check")).stdout
    assert "ok" in checked
    report = json.loads(ok(legion(target, "config", "check", "--json")).stdout)
    assert report["ok"] is True and report["file"] == path
    assert report["agents"]  # the example defines agents

    # init never silently overwrites
    original = Path(path).read_text()
    assert "--force" in clean_fail(legion(target, "config", "init"), 1)
    Path(path).write_text("# mine\n")
    ok(legion(target, "config", "init", "--force"))
    assert Path(path).read_text() == original


def test_config_check_names_key_and_fix(home: Path) -> None:
    bad = home / "bad.toml"
    bad.write_text('[host]\nlog_level = "loud"\n\n[agents.alpha.permissions]\ncan_mesage = []\n')
    err = clean_fail(legion(home, "config", "check", str(bad)), 2)
    assert f"{bad}:2: host.log_level" in err
    assert "agents.alpha.permissions.can_mesage" in err and "can_message" in err
    assert "2 problem(s)" in err
    report = json.loads(legion(home, "config", "check", str(bad), "--json").stdout)
    assert report["ok"] is False and len(report["problems"]) == 2
    assert "no such file" in clean_fail(legion(home, "config", "check", str(home / "x.toml")), 2)


# --- help and version --------------------------------------------------------------------------


def _command_paths() -> list[tuple[str, ...]]:
    root = typer.main.get_command(app)
    paths: list[tuple[str, ...]] = [()]

    # Typer may vendor its own click: walk groups by their `commands` attribute.
    def walk(group: Any, prefix: tuple[str, ...]) -> None:
        for name, command in group.commands.items():
            paths.append((*prefix, name))
            if hasattr(command, "commands"):
                walk(command, (*prefix, name))

    walk(root, ())
    return paths


COMMANDS = _command_paths()


def test_every_command_is_covered_by_the_help_test() -> None:
    expected = {
        ("daemon",),
        ("status",),
        ("stop",),
        ("events",),
        ("audit",),
        ("bb",),
        ("bb", "put"),
        ("bb", "get"),
        ("bb", "ls"),
        ("bb", "rm"),
        ("config",),
        ("config", "check"),
        ("config", "init"),
        ("config", "path"),
    }
    assert expected <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "legion")
def test_help_of_every_command(home: Path, command: tuple[str, ...]) -> None:
    result = ok(legion(home, *command, "--help"))
    assert "Usage:" in result.stdout
    assert not (home / "run").exists()  # asking for help starts nothing


def test_version(home: Path) -> None:
    result = ok(legion(home, "--version"))
    assert result.stdout.strip() == f"legion {__version__}"
