"""A real OpenSSH server on 127.0.0.1 for `legion --host ssh://...` tests (Debian's
openssh-server, which `.ci/run` installs): its own host key, a throwaway client key in its
own AuthorizedKeysFile, a free port, and a client config (`ssh -F`) that trusts exactly that
host key. Nothing of the machine's own ssh setup is read or changed (only /run/sshd, the
privilege separation folder sshd needs when it runs as root, is created when missing)."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sshd:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.user = getpass.getuser()
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.ssh_config = folder / "ssh_config"
        self.log = folder / "sshd.log"

    def start(self) -> Sshd:
        if not Path(SSHD).exists():
            raise AssertionError(
                "no sshd: install openssh-server (apt-get install openssh-server; .ci/run does)"
            )
        f = self.folder
        f.mkdir(parents=True, exist_ok=True, mode=0o700)
        for key in ("host_key", "client_key"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(f / key)], check=True
            )
        shutil.copy(f / "client_key.pub", f / "authorized_keys")
        os.chmod(f / "authorized_keys", 0o600)
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        for _ in range(5):  # the free port can be taken between the probe and sshd's bind
            self.port = _free_port()
            (f / "sshd_config").write_text(
                f"Port {self.port}\n"
                "ListenAddress 127.0.0.1\n"
                f"HostKey {f / 'host_key'}\n"
                f"AuthorizedKeysFile {f / 'authorized_keys'}\n"
                f"PidFile {f / 'sshd.pid'}\n"
                "StrictModes no\n"  # the temp folder's owner and modes are the test's
                "UsePAM no\n"
                "PasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\n"
                "PubkeyAuthentication yes\n"
                "PermitRootLogin prohibit-password\n"
                f"AllowUsers {self.user}\n"
            )
            self.log.write_bytes(b"")
            with self.log.open("ab") as log:
                self.proc = subprocess.Popen(
                    [SSHD, "-D", "-e", "-f", str(f / "sshd_config")],
                    stdout=log,
                    stderr=log,
                    stdin=subprocess.DEVNULL,
                )
            if self._wait_listening():
                break
            self.stop()
        else:
            raise AssertionError(f"sshd did not start: {self.log.read_text()}")
        host_pub = (f / "host_key.pub").read_text().split()
        (f / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        self.ssh_config.write_text(
            "Host *\n"
            f"  IdentityFile {f / 'client_key'}\n"
            "  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {f / 'known_hosts'}\n"
            "  GlobalKnownHostsFile /dev/null\n"
            "  StrictHostKeyChecking yes\n"
            "  LogLevel ERROR\n"
        )
        return self

    def _wait_listening(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if b"Server listening" in self.log.read_bytes():
                return True
            time.sleep(0.02)
        return False

    def url(self, home: Path | None = None, user: str | None = None) -> str:
        return f"ssh://{user or self.user}@127.0.0.1:{self.port}{home or ''}"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a client: this server's config, the test's legion there."""
        return {
            **os.environ,
            "LEGION_SSH_COMMAND": f"ssh -F {self.ssh_config}",
            "LEGION_REMOTE_LEGION": str(Path(sys.executable).parent / "legion"),
            **extra,
        }

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
