"""Where legion keeps its state: `LEGION_HOME` and the files inside it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# A Unix socket path must fit in sockaddr_un.sun_path (108 bytes on Linux, with the NUL).
MAX_SOCKET_PATH = 107


def default_home() -> Path:
    env = os.environ.get("LEGION_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "legion"


@dataclass(frozen=True)
class Paths:
    home: Path

    @classmethod
    def resolve(cls, home: str | Path | None = None) -> Paths:
        return cls(Path(home).expanduser().resolve() if home else default_home().resolve())

    @property
    def config(self) -> Path:
        return self.home / "legion.toml"

    @property
    def host_db(self) -> Path:
        return self.home / "host.db"

    @property
    def vault_db(self) -> Path:
        return self.home / "vault.db"

    @property
    def vault_key(self) -> Path:
        return self.home / "vault.key"

    @property
    def audit_anchor(self) -> Path:
        """The audit log's newest signed checkpoint, kept outside host.db."""
        return self.home / "audit.anchor"

    @property
    def run(self) -> Path:
        return self.home / "run"

    @property
    def control_socket(self) -> Path:
        return self.run / "control.sock"

    @property
    def lock_file(self) -> Path:
        return self.run / "host.lock"

    @property
    def pid_file(self) -> Path:
        return self.run / "host.pid"

    def agent_socket_dir(self, agent: str) -> Path:
        return self.run / "agents" / agent

    def agent_socket(self, agent: str) -> Path:
        return self.agent_socket_dir(agent) / "mesh.sock"

    def agent_data(self, agent: str) -> Path:
        return self.home / "agents" / agent

    def agent_identity(self, agent: str) -> Path:
        """The host-owned workspace files of an agent (outside its volume): `files/` is
        mounted read-only into its container, `versions/` never is."""
        return self.home / "identity" / agent
