"""Reaching the host's control socket, with the standard library only.

The errors every client of the control socket raises (no host, a host whose socket is gone,
a socket of another user, a typed API error) live here, and `get_json`: one request over the
socket with `http.client`. `legion status` uses it, so it starts without importing httpx or
pydantic (docs/cli.md, "Start-up"); everything else goes through `legion.api.client`.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any

from legion.paths import Paths


class HostNotRunning(Exception):
    def __init__(self, paths: Paths) -> None:
        try:
            stale = paths.control_socket.is_socket() or paths.control_socket.is_symlink()
        except OSError:
            stale = False
        where = (
            f"nothing answers on its control socket {paths.control_socket}, a stale one"
            if stale
            else f"no control socket at {paths.control_socket}"
        )
        super().__init__(
            f"no legion host is running for {paths.home} ({where}); start one with "
            "`legion daemon` (or `make run`)"
        )


def bad_response(paths: Paths, path: str, what: str) -> HostError:
    """The error of an answer that is not the host's HTTP or JSON: another program (or a
    host of another version) serves the control socket, or the host stopped mid-answer."""
    return HostError(
        502,
        "bad_response",
        f"the control socket {paths.control_socket} answered {path} with {what}; is another "
        "program serving it? (`legion stop`, then `legion daemon`, replaces a stale one)",
    )


class ControlSocketGone(HostNotRunning):
    """A host holds this home's lock, but its control socket is missing or dead."""

    def __init__(self, paths: Paths, pid: int | None) -> None:
        Exception.__init__(
            self,
            f"the host (pid {pid if pid is not None else 'unknown'}) is running for "
            f"{paths.home} but its control socket {paths.control_socket} is gone; it serves "
            "it again within seconds"
            + (f" (or at once on `kill -HUP {pid}`)" if pid is not None else "")
            + "; `legion stop` still stops it",
        )
        self.paths = paths
        self.pid = pid


class NoPermission(HostNotRunning):
    """This user may not use the control socket (the host runs as another user)."""

    def __init__(self, paths: Paths) -> None:
        Exception.__init__(
            self,
            f"permission denied on {paths.control_socket}: the host for {paths.home} belongs "
            "to another user; run this as that user (e.g. with sudo)",
        )


class HostError(Exception):
    """A typed error the host answered with: stable `code`, HTTP `status`, `detail`."""

    def __init__(
        self, status: int, code: str, message: str, detail: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.detail = detail or {}


def not_running(paths: Paths) -> HostNotRunning:
    """HostNotRunning, or ControlSocketGone when the host lock says a host is there, or
    NoPermission when this user cannot look."""
    from legion.hostlock import lock_holder

    try:
        holder = lock_holder(paths)
    except PermissionError:
        return NoPermission(paths)
    except OSError:
        holder = None
    return HostNotRunning(paths) if holder is None else ControlSocketGone(paths, holder.pid)


def socket_present(paths: Paths) -> bool:
    try:
        return paths.control_socket.exists()
    except PermissionError:
        raise NoPermission(paths) from None


def error_of(status: int, raw: bytes) -> HostError:
    """The HostError of an error response; a body that is not the typed JSON still says why."""
    try:
        err = json.loads(raw)["error"]
        detail = err.get("detail")
        return HostError(
            int(err.get("status") or status),
            str(err["code"]),
            str(err.get("message") or ""),
            detail if isinstance(detail, dict) else None,
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return HostError(status, "http_error", raw[:500].decode(errors="replace"))


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("legion", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def get_json(paths: Paths, path: str, timeout: float = 35.0) -> Any:
    """GET `path` on the control socket and decode the JSON answer.

    Raises HostNotRunning (or ControlSocketGone, NoPermission) when the host cannot be
    reached, HostError when it answers with an error."""
    if not socket_present(paths):
        raise not_running(paths)
    conn = _UnixConnection(str(paths.control_socket), timeout)
    try:
        conn.request("GET", path, headers={"Accept": "application/json"})
        response = conn.getresponse()
        body = response.read()
    except PermissionError:
        raise NoPermission(paths) from None
    except TimeoutError:
        raise HostError(
            504, "timeout", f"the host did not answer {path} within {timeout:g} s"
        ) from None
    except (ConnectionError, FileNotFoundError, http.client.RemoteDisconnected):
        raise not_running(paths) from None  # gone, refusing, or stopping mid-answer
    except http.client.HTTPException as exc:  # a status line or body that is not HTTP
        raise bad_response(paths, path, f"something that is not HTTP ({exc!r:.200})") from None
    finally:
        conn.close()
    if response.status >= 400:
        raise error_of(response.status, body)
    try:
        return json.loads(body)
    except ValueError:
        raise bad_response(
            paths, path, f"something that is not JSON: {body[:200].decode(errors='replace')!r}"
        ) from None
