"""issue 8: `legion.api.reach.get_json`, the standard-library client `legion status` uses,
turns whatever is on the other end of run/control.sock into a clear error, never a
traceback: nothing there, a dead socket, an answer that is not JSON, an untyped error, a
connection dropped mid-answer, a server that never answers."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from legion.api.reach import HostError, HostNotRunning, get_json
from legion.paths import Paths


@contextmanager
def serving(paths: Paths, answer: bytes | None) -> Iterator[None]:
    """A Unix socket at run/control.sock answering every request with `answer` (None:
    read the request and say nothing)."""
    paths.run.mkdir(parents=True, exist_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(paths.control_socket))
    server.listen()
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                if answer is not None:
                    conn.sendall(answer)
                    continue
                stop.wait(10)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        server.close()
        thread.join(5)


def http(status: str, body: bytes, extra: str = "") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode()
    return head + body


def test_no_socket_and_a_dead_socket_are_host_not_running(home: Path) -> None:
    paths = Paths.resolve(home)
    with pytest.raises(HostNotRunning):
        get_json(paths, "/v1/status")
    paths.run.mkdir()
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(paths.control_socket))
    dead.close()
    with pytest.raises(HostNotRunning):
        get_json(paths, "/v1/status")


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        (http("200 OK", b"<html>not json</html>"), "bad_response"),
        (http("500 Internal", b"oops"), "http_error"),
        (http("404 Not Found", b'{"error": {"code": "no_route", "status": 404}}'), "no_route"),
    ],
    ids=["not-json", "untyped-error", "typed-error"],
)
def test_a_strange_answer_is_a_typed_error(home: Path, answer: bytes, code: str) -> None:
    paths = Paths.resolve(home)
    with serving(paths, answer), pytest.raises(HostError) as caught:
        get_json(paths, "/v1/status", timeout=5)
    assert caught.value.code == code


def test_a_dropped_answer_is_host_not_running(home: Path) -> None:
    paths = Paths.resolve(home)
    with (
        serving(paths, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"),
        pytest.raises((HostNotRunning, HostError)),
    ):
        get_json(paths, "/v1/status", timeout=5)


def test_silence_is_a_timeout(home: Path) -> None:
    paths = Paths.resolve(home)
    with serving(paths, None), pytest.raises(HostError) as caught:
        get_json(paths, "/v1/status", timeout=0.5)
    assert caught.value.code == "timeout"


def test_status_prints_one_line_for_each(home: Path) -> None:
    paths = Paths.resolve(home)
    with serving(paths, http("200 OK", b"not json")):
        run = subprocess.run(
            [sys.executable, "-m", "legion", "--home", str(home), "status"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert run.returncode == 1 and "not JSON" in run.stderr and "Traceback" not in run.stderr
    assert run.stdout == ""


GARBAGE = {
    "not-http": b"\x00\xffNOT HTTP AT ALL\r\n\r\n",
    "html": http("200 OK", b"<html></html>", "Content-Type: text/html\r\n"),
    "wrong-json": http("200 OK", b'{"pid": "x"}', "Content-Type: application/json\r\n"),
    "cut-body": b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n" + b"[" * 100_000,
}
# Every kind of command: the stdlib client (status), the httpx client (agents ls, bb ls,
# stop), a stream (events, logs).
COMMANDS = [
    ("status",),
    ("status", "--json"),
    ("agents", "ls"),
    ("bb", "ls"),
    ("stop",),
    ("events",),
    ("logs", "scout"),
]


@pytest.mark.parametrize("garbage", list(GARBAGE), ids=list(GARBAGE))
def test_every_client_names_a_control_socket_answering_garbage(home: Path, garbage: str) -> None:
    """issue 8 (attack pass): whatever serves run/control.sock, every command (the stdlib
    client, the httpx one, the streams) exits 1 with one line saying the socket answered
    something that is not the host's, and how to replace it: no traceback, nothing on
    stdout, and no garbage printed as if it were a status."""
    paths = Paths.resolve(home)
    with serving(paths, GARBAGE[garbage]):
        for args in COMMANDS:
            run = subprocess.run(
                [sys.executable, "-m", "legion", "--home", str(home), *args],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert run.returncode == 1, (args, run.returncode, run.stdout, run.stderr)
            assert "Traceback" not in run.stderr, (args, run.stderr)
            assert "is another program serving it?" in run.stderr, (args, run.stderr)
            assert run.stdout == "", (args, run.stdout)
