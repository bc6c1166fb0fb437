"""`legion dial-stdio`: bridge stdin/stdout to this home's control socket.

What `legion --host ssh://user@server ...` runs on the server (`legion/api/remote.py`): one
process per connection. It connects to the control socket as the user ssh logged in as (the
socket's 0600 mode decides, as for any local `legion`), writes the greeting line, then copies
bytes both ways until either side ends. Nothing is parsed or changed in between.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading

import typer

from legion.cli.common import State, fail

_CHUNK = 65536


def dial_stdio() -> None:
    """Bridge stdin/stdout to the control socket (what `legion --host ssh://...` runs here)."""
    from legion.api.client import NoPermission, not_running
    from legion.api.remote import EXIT_NOT_RUNNING, GREETING

    paths = State.paths()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(paths.control_socket))
    except PermissionError:
        sock.close()
        fail(str(NoPermission(paths)), EXIT_NOT_RUNNING)
    except OSError:
        sock.close()
        fail(str(not_running(paths)), EXIT_NOT_RUNNING)
    try:
        _write_all(sys.stdout.fileno(), GREETING)
        _bridge(sys.stdin.fileno(), sys.stdout.fileno(), sock)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the other side went away: nothing left to copy
    finally:
        sock.close()
    raise typer.Exit(0)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _bridge(stdin: int, stdout: int, sock: socket.socket) -> None:
    """Copy stdin to the socket and the socket to stdout until one of them ends.

    The client never half-closes (HTTP/1.1 over a pooled connection), so the end of stdin
    is the end of the session: the socket is shut down rather than left to drain. A thread
    (not a selector) reads stdin, so any kind of file works as stdin."""

    def upstream() -> None:
        try:
            while data := os.read(stdin, _CHUNK):
                sock.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # wakes the copy below: the session is over

    reader = threading.Thread(target=upstream, name="dial-stdin", daemon=True)
    reader.start()
    while data := sock.recv(_CHUNK):
        _write_all(stdout, data)
