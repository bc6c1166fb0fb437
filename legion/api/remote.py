"""`legion --host ssh://user@server`: the control API of a remote daemon, through SSH.

The convention is Docker's (`DOCKER_HOST=ssh://`): every connection the client opens is one
`ssh user@server legion dial-stdio` process, whose stdin and stdout the remote command
bridges to the daemon's control socket there (`legion/cli/dial_cmd.py`). No port is opened
on the server; who may connect is decided by sshd (keys) and then by the control socket's
own permissions (0600, the daemon's user), exactly as for a local `legion` there.

The client side is an httpcore network backend whose `connect_tcp` spawns that process with
one end of a socket pair as its stdin and stdout: httpx then speaks HTTP/1.1 over the other
end, with keep-alive, so a TUI pays the SSH handshake once per pooled connection, not per
request. `dial-stdio` writes one greeting line (`GREETING`) once it has reached the socket,
so a failure (no ssh binary, the server refused the key, no legion or no daemon there) is
diagnosed at connect time, from ssh's exit status and its stderr, as a `RemoteError` that
says how to fix it, instead of a confusing protocol error on the first request.

ssh runs with `BatchMode=yes` (it never prompts: a TUI owns the terminal) in a session of
its own (no controlling terminal). `LEGION_SSH_COMMAND` replaces `ssh` (like
`GIT_SSH_COMMAND`: `ssh -F ~/.ssh/legion_config`), `LEGION_REMOTE_LEGION` names the legion
command on the server when it is not `legion` on the login PATH (a virtualenv's
`/opt/legion/bin/legion`). The URL's path, when given, is the server's LEGION_HOME.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO, Any
from urllib.parse import unquote, urlsplit

import httpcore
import httpx

from legion.api.client import HostNotRunning
from legion.api.sockstream import AsyncSocketStream, is_readable

GREETING = b"legion-dial-stdio 1\n"
# dial-stdio's exit status when no daemon answers on the server (as the CLI's HostNotRunning).
EXIT_NOT_RUNNING = 3
_SSH_FAILED = 255  # ssh's own failures: connect, host key, authentication
_NOT_FOUND = 127  # the remote shell: command not found
_STDERR_LIMIT = 4000
_GONE_WAIT_S = 5.0  # how long a failed ssh gets to exit after closing its end

URL_FORM = "ssh://[user@]host[:port][/remote/legion/home]"


class RemoteError(HostNotRunning):
    """The remote daemon cannot be reached through SSH; the message says why and what to do."""

    def __init__(self, message: str) -> None:
        Exception.__init__(self, message)


@dataclass(frozen=True)
class Remote:
    """Where a remote daemon is: `ssh://[user@]host[:port][/home]`, and how to get there."""

    url: str
    host: str
    user: str | None = None
    port: int | None = None
    home: str | None = None
    ssh_command: tuple[str, ...] = ("ssh",)
    remote_legion: tuple[str, ...] = ("legion",)

    @property
    def target(self) -> str:
        """`user@host` (or `host`), as messages show it."""
        return f"{self.user}@{self.host}" if self.user else self.host

    @classmethod
    def parse(cls, url: str, env: dict[str, str] | None = None) -> Remote:
        """Parse a `--host` value (ValueError, naming the form, when it is not one)."""
        env = dict(os.environ) if env is None else env
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"invalid --host {url!r} ({exc}); write {URL_FORM}") from None
        if parts.scheme != "ssh":
            raise ValueError(
                f"invalid --host {url!r}: only ssh:// is supported; write {URL_FORM} "
                "(without --host, legion uses the daemon of this machine's LEGION_HOME)"
            )
        host, user = parts.hostname, parts.username
        if not host or parts.password is not None or parts.query or parts.fragment:
            raise ValueError(f"invalid --host {url!r}: write {URL_FORM}")
        for what, value in (("host", host), ("user", user or "")):
            # ssh would take a leading "-" as an option; a space or control is never a name
            if value.startswith("-") or any(c.isspace() or ord(c) < 32 for c in value):
                raise ValueError(f"invalid {what} {value!r} in --host {url!r}")
        home = unquote(parts.path) if parts.path not in ("", "/") else None
        try:
            ssh_command = tuple(shlex.split(env.get("LEGION_SSH_COMMAND", "") or "ssh"))
            remote_legion = tuple(shlex.split(env.get("LEGION_REMOTE_LEGION", "") or "legion"))
        except ValueError as exc:
            raise ValueError(f"LEGION_SSH_COMMAND or LEGION_REMOTE_LEGION: {exc}") from None
        return cls(url, host, user, port, home, ssh_command, remote_legion)

    def argv(self) -> list[str]:
        """The ssh command line of one connection."""
        remote = [*self.remote_legion]
        if self.home:
            remote += ["--home", self.home]
        remote.append("dial-stdio")
        argv = [*self.ssh_command, "-T", "-o", "BatchMode=yes", "-o", "ServerAliveInterval=15"]
        if self.port is not None:
            argv += ["-p", str(self.port)]
        if self.user:
            argv += ["-l", self.user]
        # the remote side gets one string for its shell: quoted, so a home with spaces stays one
        return [*argv, "--", self.host, shlex.join(remote)]

    def explain(self, status: int | None, stderr: str) -> RemoteError:
        """What went wrong, from the ssh process's exit status and what it wrote on stderr."""
        from legion.textsafe import safe_text

        lines = [line.strip() for line in stderr.replace("\r", "").splitlines() if line.strip()]
        said = safe_text("\n".join(lines[-3:])[-_STDERR_LIMIT:], multiline=True)
        tail = f"\nssh said: {said}" if said else ""
        where = f"{self.target} (--host {self.url})"
        low = stderr.lower()
        if "remote host identification has changed" in low:
            return RemoteError(
                f"the host key of {where} has CHANGED since it was accepted: someone may be "
                "intercepting the connection, or the server was reinstalled. Check with the "
                f"server's administrator before you replace its key in known_hosts{tail}"
            )
        if status == EXIT_NOT_RUNNING:
            said = said.removeprefix("legion: ")  # the remote CLI's own prefix
            return RemoteError(f"on {where}: {said or 'no legion daemon answers'}")
        if status == _NOT_FOUND or "command not found" in low or ": not found" in low:
            return RemoteError(
                f"{shlex.join(self.remote_legion)!r} was not found on {where}: install legion "
                "there, or set LEGION_REMOTE_LEGION to its path (for example "
                f"/opt/legion/bin/legion){tail}"
            )
        if "host key verification failed" in low or "host key for" in low:
            return RemoteError(
                f"ssh could not verify the host key of {where}; run `ssh {self.target}` once "
                f"to check and accept it (legion's ssh never prompts){tail}"
            )
        if "permission denied" in low:
            return RemoteError(
                f"{where} refused the login: legion's ssh runs in batch mode (keys or an "
                f"ssh-agent, no password prompt); check `ssh {self.target} true` works "
                f"without a prompt (ssh-copy-id installs a key){tail}"
            )
        if status == _SSH_FAILED:
            return RemoteError(f"ssh could not reach {where}{tail}")
        if "unknown command" in low or "no such command" in low:
            return RemoteError(
                f"the legion on {where} has no `dial-stdio` command: upgrade it to this "
                f"version{tail}"
            )
        code = "no exit status" if status is None else f"exit status {status}"
        return RemoteError(f"`legion dial-stdio` on {where} failed ({code}){tail}")

    def failed(
        self, hello: bytes, status: int | None, stderr: str, timeout: float | None
    ) -> RemoteError:
        """The error for a connection whose greeting did not come (`hello`: what came)."""
        if hello == b"timeout":
            from legion.textsafe import safe_text

            said = safe_text(stderr.strip().replace("\r", "")[-_STDERR_LIMIT:], multiline=True)
            return RemoteError(
                f"ssh to {self.target} (--host {self.url}) did not connect within "
                f"{timeout or 0:.0f} s" + (f"; ssh said: {said}" if said else "")
            )
        if hello:  # something answered, but not dial-stdio
            stderr = f"it printed {hello[:60]!r} instead of the greeting\n{stderr}"
        return self.explain(status, stderr)

    def lost(self, exc: BaseException) -> RemoteError:
        return RemoteError(
            f"the connection to the daemon on {self.target} (--host {self.url}) was lost "
            f"({exc.__class__.__name__}: {exc}); check the network, then run the command again"
        )


def _read_stderr(file: IO[bytes]) -> str:
    file.seek(0)
    return file.read()[-_STDERR_LIMIT:].decode("utf-8", "replace")


def _spawn_error(remote: Remote, exc: OSError) -> RemoteError:
    name = remote.ssh_command[0]
    if isinstance(exc, FileNotFoundError) or shutil.which(name) is None:
        return RemoteError(
            f"no ssh client ({name!r} not found) for --host {remote.url}: install OpenSSH's "
            "client (Debian: apt-get install openssh-client), or set LEGION_SSH_COMMAND"
        )
    return RemoteError(f"could not run {name!r} for --host {remote.url}: {exc}")


def _pair() -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return ours, theirs


# --- the synchronous side (the CLI's ControlClient) ------------------------------------------


class _SshStream(httpcore.NetworkStream):
    def __init__(self, sock: socket.socket, proc: subprocess.Popen[bytes], err: IO[bytes]):
        self.sock, self.proc, self.err = sock, proc, err

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(max_bytes)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ReadError(str(exc)) from exc

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.sock.settimeout(timeout)
        try:
            self.sock.sendall(buffer)
        except TimeoutError as exc:
            raise httpcore.WriteTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.WriteError(str(exc)) from exc

    def close(self) -> None:
        self.sock.close()  # ssh sees EOF on its stdin and ends the session
        try:
            self.proc.wait(_GONE_WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        finally:
            self.err.close()

    def start_tls(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("TLS is not used over ssh")

    def get_extra_info(self, info: str) -> Any:
        return is_readable(self.sock) if info == "is_readable" else None


def _greeting_sync(sock: socket.socket, timeout: float | None) -> bytes:
    """Read up to the greeting's newline; b"" when the process ended first."""
    got = b""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not got.endswith(b"\n") and len(got) < len(GREETING):
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        sock.settimeout(left)
        chunk = sock.recv(len(GREETING) - len(got))
        if not chunk:
            return b""
        got += chunk
    return got


class SshBackend(httpcore.NetworkBackend):
    def __init__(self, remote: Remote) -> None:
        self.remote = remote

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        ours, theirs = _pair()
        err = tempfile.TemporaryFile()  # noqa: SIM115 (the stream owns it)
        proc: subprocess.Popen[bytes] | None = None
        owned = False  # by the stream, once the greeting came
        try:
            try:
                proc = subprocess.Popen(
                    self.remote.argv(),
                    stdin=theirs.fileno(),
                    stdout=theirs.fileno(),
                    stderr=err,
                    start_new_session=True,
                )
            except OSError as exc:
                raise _spawn_error(self.remote, exc) from None
            finally:
                theirs.close()
            try:
                hello = _greeting_sync(ours, timeout)
            except TimeoutError:
                hello = b"timeout"
            except OSError:
                hello = b""
            if hello == GREETING:
                owned = True
                return _SshStream(ours, proc, err)
            ours.close()
            try:
                status: int | None = proc.wait(_GONE_WAIT_S)
            except subprocess.TimeoutExpired:
                status = None
            raise self.remote.failed(hello, status, _read_stderr(err), timeout)
        finally:
            if not owned:
                ours.close()
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait()
                err.close()


class SshTransport(httpx.HTTPTransport):
    """An httpx transport whose connections are `ssh ... legion dial-stdio` processes."""

    def __init__(self, remote: Remote) -> None:
        super().__init__()
        self._pool = httpcore.ConnectionPool(network_backend=SshBackend(remote), retries=0)


# --- the asynchronous side (the TUI's HostClient) --------------------------------------------


class _AsyncSshStream(AsyncSocketStream):
    def __init__(self, sock: socket.socket, proc: asyncio.subprocess.Process, err: IO[bytes]):
        super().__init__(sock)
        self.proc, self.err = proc, err

    async def aclose(self) -> None:
        self.sock.close()  # ssh sees EOF on its stdin and ends the session
        try:
            async with asyncio.timeout(_GONE_WAIT_S):
                await self.proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        finally:
            self.err.close()


async def _greeting(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    got = b""
    while not got.endswith(b"\n") and len(got) < len(GREETING):
        chunk = await loop.sock_recv(sock, len(GREETING) - len(got))
        if not chunk:
            return b""
        got += chunk
    return got


class AsyncSshBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, remote: Remote) -> None:
        self.remote = remote

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        ours, theirs = _pair()
        ours.setblocking(False)
        err = tempfile.TemporaryFile()  # noqa: SIM115 (the stream owns it)
        proc: asyncio.subprocess.Process | None = None
        owned = False  # by the stream, once the greeting came
        try:  # every exit but success (a failure, a cancel) leaves no process, socket or file
            try:
                proc = await asyncio.create_subprocess_exec(
                    *self.remote.argv(),
                    stdin=theirs.fileno(),
                    stdout=theirs.fileno(),
                    stderr=err.fileno(),
                    start_new_session=True,
                )
            except OSError as exc:
                raise _spawn_error(self.remote, exc) from None
            finally:
                theirs.close()
            try:
                async with asyncio.timeout(timeout):
                    hello = await _greeting(ours)
            except TimeoutError:
                hello = b"timeout"
            except OSError:
                hello = b""
            if hello == GREETING:
                owned = True
                return _AsyncSshStream(ours, proc, err)
            ours.close()
            status: int | None = None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_GONE_WAIT_S):
                    status = await proc.wait()
            said = await asyncio.to_thread(_read_stderr, err)
            raise self.remote.failed(hello, status, said, timeout)
        finally:
            if not owned:
                ours.close()
                if proc is not None and proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await asyncio.shield(proc.wait())
                err.close()


class AsyncSshTransport(httpx.AsyncHTTPTransport):
    """The async twin of `SshTransport`, for `HostClient`."""

    def __init__(self, remote: Remote) -> None:
        super().__init__()
        self._pool = httpcore.AsyncConnectionPool(
            network_backend=AsyncSshBackend(remote), retries=0
        )
