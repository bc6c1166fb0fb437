"""systemd: the unit file `legion daemon --print-unit [--user]` prints, and sd_notify.

Each line of the unit says why it is there. The system unit runs the host as root (it
hands socket folders and volumes to the agents' uid) in a sandbox that leaves it what it
uses: its home read-write, the Docker socket, Unix and IP sockets. The user unit is for a
rootless Docker: no `User=`, started with the user's session (or at boot with lingering).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

from legion.paths import Paths

log = logging.getLogger("legion.daemon")

# Where ProtectHome= hides things: a home (or the program) there gets it read-only.
HOME_ROOTS = (Path("/home"), Path("/root"), Path("/run/user"))
STATE_ROOT = Path("/var/lib")
_PLAIN_WORD = re.compile(r"[A-Za-z0-9_@+=:,./-]+")


def sd_notify(message: str) -> bool:
    """Send a message to systemd's NOTIFY_SOCKET, if there is one."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError as exc:
            log.warning("could not notify systemd", extra={"fields": {"error": str(exc)}})
            return False
    return True


class UnitError(ValueError):
    """No safe unit can be written for this home (the message says why)."""


def _checked(text: str) -> str:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise UnitError(
            f"{text!r} has control characters; a unit file cannot hold it safely. "
            "Use a plain path for --home"
        )
    return text


def _word(text: str, *, variables: bool) -> str:
    """One word of a unit setting: specifiers (and, in Exec lines, variables) escaped,
    quoted when it has anything but plain path characters."""
    escaped = _checked(text).replace("%", "%%")
    if variables:
        escaped = escaped.replace("$", "$$")
    if _PLAIN_WORD.fullmatch(escaped):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _legion_executable() -> list[str]:
    """The command words that run this legion: its script, or `python -m legion`."""
    candidate = Path(sys.argv[0])
    if candidate.name == "legion" and candidate.exists():
        return [str(candidate.resolve())]
    sibling = Path(sys.executable).parent / "legion"
    return [str(sibling)] if sibling.exists() else [sys.executable, "-m", "legion"]


def _program_paths(executable: list[str]) -> list[Path]:
    """Everything the service must be able to read to start: the program, the interpreter
    and its installation (a venv may live under /home, its Python under /root/.pyenv)."""
    out = [Path(executable[0]), Path(executable[0]).resolve()]
    out += [Path(sys.executable), Path(sys.executable).resolve()]
    out += [Path(sys.prefix), Path(sys.base_prefix)]
    return out


def unit_file(
    paths: Paths,
    executable: list[str] | None = None,
    *,
    user: bool = False,
    environ: Mapping[str, str] | None = None,
    programs: list[Path] | None = None,
) -> str:
    """The systemd unit for this home: a system unit, or with `user` a user unit.

    `programs`: the paths the service reads to start (default: this legion, its Python
    and their installations); under a home root they make ProtectHome= read-only."""
    words = executable or _legion_executable()
    env = os.environ if environ is None else environ
    home = paths.home
    home_word = _word(str(home), variables=True)
    exe = " ".join(_word(w, variables=True) for w in words)
    exec_start = f"{exe} --home {home_word} daemon --systemd --log-format json"
    environment = _word(f"LEGION_HOME={home}", variables=False)
    common = f"""[Service]
# The daemon sends READY=1 once every socket listens, and STOPPING=1 when it begins to stop.
Type=notify
NotifyAccess=main
ExecStart={exec_start}
# SIGHUP re-reads legion.toml (as `legion config reload` does); a file that fails
# validation changes nothing and the refusal is logged.
ExecReload=/bin/kill -HUP $MAINPID
Environment={environment}
# SIGTERM stops it cleanly (agent containers stopped, sockets removed) within 10 s; only
# the host gets it, so it stops its own work in order (mixed: SIGKILL for leftovers).
KillSignal=SIGTERM
KillMode=mixed
TimeoutStopSec=15
Restart=on-failure
RestartSec=2
# What it creates (vault key, databases, sockets) is for its own user only.
UMask=0077
"""
    if user:
        return _user_unit(paths, common, env)
    return _system_unit(paths, programs or _program_paths(words), common)


def _system_unit(paths: Paths, programs: list[Path], common: str) -> str:
    home = paths.home
    lines = [
        "# legion host (system unit). Install and start it:",
        f"#   legion --home {shlex.quote(str(home))} daemon --print-unit |"
        " sudo tee /etc/systemd/system/legion.service",
        "#   sudo systemctl daemon-reload && sudo systemctl enable --now legion",
        "# Reload legion.toml: sudo systemctl reload legion; logs: journalctl -u legion -f",
        "[Unit]",
        "Description=legion agent host",
        "# Agents run in containers of the local Docker engine: start after it, and pull it",
        "# in; the LLM gateway calls providers as soon as agents run, so wait for the network.",
        "After=network-online.target docker.service",
        "Wants=network-online.target docker.service",
        "",
        common.rstrip("\n"),
    ]
    if _under(home, STATE_ROOT) and home != STATE_ROOT:
        relative = str(home.relative_to(STATE_ROOT))
        if _PLAIN_WORD.fullmatch(relative):
            lines += [
                "# The home is under /var/lib: systemd creates it, owned by the service, 0700.",
                f"StateDirectory={relative}",
                "StateDirectoryMode=0700",
            ]
    hidden_home = any(_under(p, root) for p in [home, *programs] for root in HOME_ROOTS)
    protect_home = (
        [
            "# The home or the program lives under /home, /root or /run/user: those stay",
            "# readable (the home itself writable, below), not hidden.",
            "ProtectHome=read-only",
        ]
        if hidden_home
        else ["# Users' homes (/home, /root, /run/user) are hidden from it.", "ProtectHome=true"]
    )
    lines += [
        "",
        "# --- sandbox: what the host needs, nothing more ---",
        "# It runs no setuid program and reaches Docker through its socket, which needs no",
        "# privilege escalation: it can never gain privileges.",
        "NoNewPrivileges=true",
        "# The whole file system is read-only to it, except its home.",
        "ProtectSystem=strict",
        f"ReadWritePaths={_word(str(home), variables=False)}",
        *protect_home,
        "# A /tmp and /var/tmp of its own, removed when it stops.",
        "PrivateTmp=true",
        "# No hardware devices (/dev/null, /dev/urandom and the like stay).",
        "PrivateDevices=true",
        "# Kernel settings, modules, the kernel log, cgroups, the clock and the host name are",
        "# none of its business.",
        "ProtectKernelTunables=true",
        "ProtectKernelModules=true",
        "ProtectKernelLogs=true",
        "ProtectControlGroups=true",
        "ProtectClock=true",
        "ProtectHostname=true",
        "# Other users' processes are invisible in /proc.",
        "ProtectProc=invisible",
        "# Unix sockets (its own, Docker's) and IP (LLM providers, egress); no netlink,",
        "# packet or other families.",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "# It makes no namespaces itself (Docker makes the containers', outside this unit).",
        "RestrictNamespaces=true",
        "RestrictRealtime=true",
        "RestrictSUIDSGID=true",
        "LockPersonality=true",
        "# The system calls of an ordinary service (no mount, reboot, swap, modules, raw I/O).",
        "# MemoryDenyWriteExecute= is left out: the Python libraries it loads (cffi) need it.",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "SystemCallErrorNumber=EPERM",
        "# As root it only hands the agents' socket folders and volumes to their uid and",
        "# works inside them (they are that uid's, mode 0700): chown and file-permission",
        "# overrides, no other capability.",
        "CapabilityBoundingSet=CAP_CHOWN CAP_FOWNER CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def _user_unit(paths: Paths, common: str, env: Mapping[str, str]) -> str:
    docker_host = env.get("DOCKER_HOST")
    docker_line = (
        [
            "# The Docker engine this legion talked to when the unit was printed.",
            f"Environment={_word(f'DOCKER_HOST={docker_host}', variables=False)}",
        ]
        if docker_host
        else [
            "# Rootless Docker listens in the user's runtime directory (%t). With a rootful",
            "# engine and your user in the docker group, delete this line.",
            "Environment=DOCKER_HOST=unix://%t/docker.sock",
        ]
    )
    lines = [
        "# legion host (user unit, for a rootless Docker). Install and start it:",
        "#   mkdir -p ~/.config/systemd/user",
        f"#   legion --home {shlex.quote(str(paths.home))} daemon --print-unit --user"
        " > ~/.config/systemd/user/legion.service",
        "#   systemctl --user daemon-reload && systemctl --user enable --now legion",
        "#   loginctl enable-linger $USER    # keep it running after you log out",
        "# Reload legion.toml: systemctl --user reload legion;"
        " logs: journalctl --user -u legion -f",
        "[Unit]",
        "Description=legion agent host (user)",
        "# Rootless Docker runs as the user unit docker.service: start after it, pull it in.",
        "After=docker.service",
        "Wants=docker.service",
        "",
        common.rstrip("\n"),
        *docker_line,
        "",
        "# --- sandbox: what works without privileges ---",
        "# A user manager cannot always make mount namespaces, so ProtectSystem=, ProtectHome=",
        "# and PrivateTmp= are left out; these need none (seccomp, with NoNewPrivileges).",
        "NoNewPrivileges=true",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "RestrictNamespaces=true",
        "RestrictRealtime=true",
        "RestrictSUIDSGID=true",
        "LockPersonality=true",
        "SystemCallArchitectures=native",
        "SystemCallFilter=@system-service",
        "SystemCallErrorNumber=EPERM",
        "",
        "[Install]",
        "WantedBy=default.target",
    ]
    return "\n".join(lines) + "\n"
