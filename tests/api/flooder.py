"""An agent flooding its own socket, as a separate process (so its work is not the host's).

`python -m tests.api.flooder SOCKET SECONDS COUNT` keeps COUNT connections to SOCKET for
SECONDS: a third silent, the others with a request head or body sent in part and then
trickled a byte at a time (slowloris). Every connection the host closes, and every
connect the kernel refuses (backlog full), is tried again at once.

`python -m tests.api.flooder SOCKET SECONDS COUNT requests` instead keeps COUNT
connections busy with complete requests, pipelined as fast as the host takes them:
heads of 100 header lines (30 KB, the most the host parses), blackboard writes and
OpenAPI documents; answers are read and dropped.

Prints one JSON line with what happened.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import select
import socket
import sys
import time

ATTEMPTS_PER_ROUND = 200
HALF_HEAD = b"POST /v1/blackboard/cas HTTP/1.1\r\nhost: legion\r\nx-slow: "
HALF_BODY = (
    b"PUT /v1/blackboard/entries/flood HTTP/1.1\r\nhost: legion\r\n"
    b"content-length: 1000000\r\n\r\n" + b"x" * 8192
)


def main(path: str, seconds: float, count: int) -> dict[str, int]:
    # An agent's container runs with a CPU limit ([runtime] cpus, 0.5 by default); a lower
    # priority stands in for it here, so the flooder's own spinning does not starve the
    # host of the machine's CPU (what the host does with the flood is what is measured).
    os.nice(10)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1024), hard))
    socks: dict[int, tuple[socket.socket, int]] = {}  # fd -> (socket, kind)
    stats = {"attempted": 0, "refused": 0, "closed_by_host": 0, "open_at_end": 0}
    poller = select.poll()
    kind_next = 0

    def connect() -> None:
        nonlocal kind_next
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        stats["attempted"] += 1
        code = sock.connect_ex(path)
        if code != 0:
            stats["refused"] += 1
            sock.close()
            return
        kind = kind_next % 3  # 0 silent, 1 half head, 2 half body
        kind_next += 1
        try:
            if kind == 1:
                sock.send(HALF_HEAD)
            elif kind == 2:
                sock.send(HALF_BODY)
        except OSError:
            pass
        socks[sock.fileno()] = (sock, kind)
        poller.register(sock.fileno(), select.POLLIN | select.POLLHUP)

    deadline = time.monotonic() + seconds
    last_trickle = time.monotonic()
    while time.monotonic() < deadline:
        for _ in range(min(ATTEMPTS_PER_ROUND, count - len(socks))):
            connect()  # past the backlog the kernel refuses: counted, tried again next round
        for fd, _ in poller.poll(10):
            sock, _kind = socks.pop(fd)
            poller.unregister(fd)
            with contextlib.suppress(OSError):
                sock.recv(65536)
            sock.close()
            stats["closed_by_host"] += 1
        now = time.monotonic()
        if now - last_trickle > 0.5:
            last_trickle = now
            for sock, kind in list(socks.values()):
                if kind:
                    try:
                        sock.send(b"a")
                    except OSError as exc:
                        if exc.errno not in (errno.EAGAIN, errno.EPIPE, errno.ECONNRESET):
                            raise
    stats["open_at_end"] = len(socks)
    for sock, _ in socks.values():
        sock.close()
    return stats


BIG_HEAD = (
    "GET /v1/whoami HTTP/1.1\r\nhost: legion\r\n"
    + "".join(f"x-h{i}: {'a' * 290}\r\n" for i in range(98))
    + "\r\n"
).encode()
PUT = (
    b"PUT /v1/blackboard/entries/flood/k HTTP/1.1\r\nhost: legion\r\n"
    b'content-length: 14\r\n\r\n{"value": 1.0}'
)
OPENAPI = b"GET /v1/openapi.json HTTP/1.1\r\nhost: legion\r\n\r\n"
BATCH = BIG_HEAD * 4 + PUT * 8 + OPENAPI * 2


def requests(path: str, seconds: float, count: int) -> dict[str, int]:
    """Complete requests, pipelined in batches, answers dropped, for `seconds`."""
    os.nice(10)
    stats = {"batches": 0, "bytes_sent": 0, "bytes_received": 0, "closed_by_host": 0}
    poller = select.poll()
    socks: dict[int, list[object]] = {}  # fd -> [socket, unsent bytes]

    def connect() -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if sock.connect_ex(path) != 0:
            sock.close()
            return
        sock.setblocking(False)
        socks[sock.fileno()] = [sock, BATCH]
        poller.register(sock.fileno(), select.POLLIN | select.POLLOUT)

    for _ in range(count):
        connect()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for fd, events in poller.poll(10):
            entry = socks.get(fd)
            if entry is None:
                continue
            sock, unsent = entry[0], entry[1]
            assert isinstance(sock, socket.socket) and isinstance(unsent, bytes)
            try:
                if events & select.POLLIN:
                    data = sock.recv(262144)
                    if not data:
                        raise ConnectionResetError
                    stats["bytes_received"] += len(data)
                if events & select.POLLOUT:
                    if not unsent:
                        unsent = BATCH
                        stats["batches"] += 1
                    sent = sock.send(unsent)
                    stats["bytes_sent"] += sent
                    entry[1] = unsent[sent:]
            except BlockingIOError:
                pass
            except OSError:
                poller.unregister(fd)
                del socks[fd]
                sock.close()
                stats["closed_by_host"] += 1
                connect()
    for entry in socks.values():
        sock = entry[0]
        assert isinstance(sock, socket.socket)
        sock.close()
    return stats


if __name__ == "__main__":
    mode = sys.argv[4] if len(sys.argv) > 4 else "connections"
    run = requests if mode == "requests" else main
    result = run(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]))
    print(json.dumps(result), flush=True)
