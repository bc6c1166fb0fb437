"""The operator's hand-off: noVNC in a local browser, to watch or drive an agent's browser.

    laptop --ssh -L--> 127.0.0.1:PORT  websockify (Debian's, `--inetd`: the host bound the
    port itself, on 127.0.0.1 only) --token--> run/vnc/<session>.sock (the host's relay)
    --> run/browsers/NAME/vnc.sock (x11vnc in the browser container, `-unixsock`)

* Each `open` makes a session: a random token (in the link), valid until `expires_at`
  (`[browser] handoff_ttl_s`). websockify maps tokens to targets through a folder of token
  files (its `TokenFile` plugin re-reads it on every connection); the host writes one file
  per session and removes it when the session ends, so a link without a token, with a
  wrong one, or after expiry reaches nothing.
* websockify never connects into a folder the browser container can write: its target is
  the host's relay socket, and the relay opens x11vnc's socket with a no-follow open,
  checks it is a socket of the agent's uid, and connects through `/proc/self/fd/N`
  (invariant 9). Every connection is audited.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import os
import secrets
import shutil
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from legion.browser import files
from legion.errors import LegionError
from legion.fsutil import UnsafeEntry, atomic_write
from legion.wire.browser import Handoff
from legion.wire.events import BrowserHandoff

if TYPE_CHECKING:
    from legion.browser.manager import Browsers
    from legion.host import Host

log = logging.getLogger("legion.browser.vnc")

CHUNK = 64 * 1024


class NoVnc(LegionError):
    status = 409
    code = "vnc_unavailable"


@dataclass
class Session:
    sid: str
    agent: str
    token: str
    expires_at: float
    relay: Path
    server: asyncio.AbstractServer | None = None
    conns: set[asyncio.Task[None]] = field(default_factory=set)


class Handoffs:
    def __init__(self, host: Host, browsers: Browsers) -> None:
        self.host = host
        self.browsers = browsers
        self.sessions: dict[str, Session] = {}
        self.port: int | None = None
        self._listener: socket.socket | None = None
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def folder(self) -> Path:
        return files.vnc_dir(self.host.paths)

    def open_for(self, agent: str) -> Session | None:
        live = [s for s in self.sessions.values() if s.agent == agent]
        return max(live, key=lambda s: s.expires_at) if live else None

    # --- websockify --------------------------------------------------------------------

    def _tools(self) -> tuple[str, str]:
        websockify = shutil.which("websockify")
        novnc = self.host.config.browser.novnc_dir
        if websockify is None or not (Path(novnc) / "vnc.html").is_file():
            raise NoVnc(
                "the VNC hand-off needs Debian's websockify and novnc on the host; install "
                f"them (`apt-get install websockify novnc`), or set [browser] novnc_dir "
                f"(now {novnc})"
            )
        return websockify, novnc

    async def _ensure_websockify(self) -> int:
        if self._proc is not None and self._proc.returncode is None and self.port is not None:
            return self.port
        websockify, novnc = self._tools()
        tokens = self.folder / "tokens"
        tokens.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self._listener is None:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                listener.bind(("127.0.0.1", self.host.config.browser.vnc_port))
            except OSError as exc:
                listener.close()
                raise NoVnc(
                    f"cannot listen on 127.0.0.1:{self.host.config.browser.vnc_port} for noVNC "
                    f"({exc.strerror}); set [browser] vnc_port to a free port (0: any)"
                ) from None
            listener.listen(16)
            self._listener = listener
            self.port = int(listener.getsockname()[1])
        self._proc = await asyncio.create_subprocess_exec(
            websockify,
            "--inetd",
            "--web",
            novnc,
            "--token-plugin",
            "TokenFile",
            "--token-source",
            str(tokens),
            "--log-file",
            str(self.folder / "websockify.log"),
            stdin=self._listener.fileno(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert self.port is not None
        return self.port

    # --- sessions ----------------------------------------------------------------------

    async def open(self, agent: str, actor: str = "operator") -> Handoff:
        self._tools()
        if ":" in str(self.folder):  # websockify's token files are `token: unix_socket:PATH`
            raise NoVnc(
                f"the VNC hand-off cannot use {self.folder}: websockify's token files do not "
                "allow ':' in a path; use a LEGION_HOME without ':'"
            )
        slot = await self.browsers.ensure(agent)
        await self.browsers.call(slot, "vnc_start", {})
        port = await self._ensure_websockify()
        sid = secrets.token_hex(8)
        token = secrets.token_urlsafe(24)
        expires_at = self.host.clock() + self.host.config.browser.handoff_ttl_s
        session = Session(sid, agent, token, expires_at, self.folder / f"{sid}.sock")
        old = os.umask(0o177)
        try:
            session.server = await asyncio.start_unix_server(
                lambda r, w: self._relay(session, r, w), path=str(session.relay)
            )
        finally:
            os.umask(old)
        self.sessions[sid] = session
        await asyncio.to_thread(
            atomic_write, self.folder / "tokens" / sid, f"{token}: unix_socket:{session.relay}\n"
        )
        self.host.audit.append(
            actor, "browser.handoff_opened", agent, "allow", expires_at=expires_at
        )
        self.host.bus.publish(
            BrowserHandoff(at=self.host.clock(), agent=agent, state="opened", url=slot.url)
        )
        link = (
            f"http://127.0.0.1:{port}/vnc.html?autoconnect=true&resize=scale"
            f"&path=websockify%3Ftoken%3D{token}"
        )
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "USER"
        hint = (
            f"ssh -N -L {port}:127.0.0.1:{port} {user}@{socket.gethostname()}  "
            "# then open the link on your laptop"
        )
        return Handoff(agent=agent, link=link, ssh_hint=hint, port=port, expires_at=expires_at)

    async def _relay(
        self, session: Session, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        session.conns.add(task)
        try:
            if session.sid not in self.sessions or self.host.clock() >= session.expires_at:
                return
            owner = self.host.fleet.owner()
            uid = owner[0] if owner else os.getuid()
            target = files.socket_dir(self.host.paths, session.agent) / "vnc.sock"
            try:
                fd = files.open_socket_nofollow(target, uid)
            except (UnsafeEntry, OSError) as exc:
                self.host.audit.append(
                    "host", "browser.vnc_refused", session.agent, "deny", reason=str(exc)
                )
                return
            try:
                up_reader, up_writer = await asyncio.open_unix_connection(f"/proc/self/fd/{fd}")
            except OSError as exc:
                log.warning("cannot reach the VNC server of %s: %s", session.agent, exc)
                return
            finally:
                os.close(fd)
            self.host.audit.append("operator", "browser.vnc_connect", session.agent, "allow")
            try:
                await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
            finally:
                up_writer.close()
        except asyncio.CancelledError:  # the session ended (asyncio would log it as an error)
            pass
        finally:
            writer.close()
            session.conns.discard(task)

    async def _end(self, session: Session, why: str) -> None:
        self.sessions.pop(session.sid, None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.folder / "tokens" / session.sid)
        if session.server is not None:
            session.server.close()
        for task in list(session.conns):
            task.cancel()
        await asyncio.gather(*session.conns, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(session.relay)
        if why == "expired":
            self.host.audit.append("host", "browser.handoff_expired", session.agent, "allow")
            self.host.bus.publish(
                BrowserHandoff(at=self.host.clock(), agent=session.agent, state="expired")
            )

    async def close_agent(self, agent: str, why: str) -> None:
        for session in [s for s in self.sessions.values() if s.agent == agent]:
            await self._end(session, why)

    async def expire_forever(self, interval_s: float = 0.5) -> None:
        while True:
            await asyncio.sleep(interval_s)
            now = self.host.clock()
            for session in [s for s in self.sessions.values() if now >= s.expires_at]:
                try:
                    await self._end(session, "expired")
                except Exception:
                    log.exception("ending a VNC session failed")

    async def close(self) -> None:
        for session in list(self.sessions.values()):
            await self._end(session, "host shutdown")
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, 15)
            try:
                await asyncio.wait_for(self._proc.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, 9)
                await self._proc.wait()
        self._proc = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(CHUNK):
            dst.write(data)
            await dst.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if dst.can_write_eof():
                dst.write_eof()
