"""`legion doctor`: what is wrong with this host, and what to do about each problem."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Any

from legion.config import Config
from legion.paths import MAX_SOCKET_PATH, Paths


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def run_checks(paths: Paths, config: Config | None, config_error: str | None) -> list[Check]:
    checks: list[Check] = []
    checks.append(
        Check(
            "config",
            config_error is None,
            "legion.toml is valid" if config_error is None else config_error,
            "" if config_error is None else "fix it; see `legion config check`",
        )
    )
    longest = max(
        [len(os.fsencode(paths.control_socket))]
        + [len(os.fsencode(paths.agent_socket(a))) for a in (config.agents if config else {})]
    )
    checks.append(
        Check(
            "socket paths",
            longest <= MAX_SOCKET_PATH,
            f"longest socket path is {longest} bytes (limit {MAX_SOCKET_PATH})",
            "use a shorter LEGION_HOME",
        )
    )
    runtime = config.runtime if config else None
    if runtime is not None and runtime.backend == "none":
        checks.append(
            Check("runtime", True, "[runtime] backend = none: agents are not started by the host")
        )
        return checks
    try:
        import docker

        client = docker.from_env(timeout=10)
        info = client.info()
        version = client.version()
    except Exception as exc:
        checks.append(
            Check(
                "docker engine",
                False,
                f"not reachable: {exc}",
                "install and start Docker (Debian: `apt-get install docker.io && systemctl start "
                "docker`; without systemd: `dockerd --bridge=none --iptables=false &`); agents "
                "use no network, so no bridge is needed",
            )
        )
        return checks
    checks.append(
        Check(
            "docker engine",
            True,
            f"Docker {version.get('Version')} (API {version.get('ApiVersion')}), "
            f"cgroup v{info.get('CgroupVersion', '?')}",
        )
    )
    runtimes = sorted((info.get("Runtimes") or {}).keys())
    wanted = (runtime.container_runtime if runtime else None) or info.get("DefaultRuntime", "runc")
    checks.append(
        Check(
            "container runtime",
            wanted in runtimes,
            f"{wanted} ({'available' if wanted in runtimes else 'not known to the engine'}; "
            f"engine has: {', '.join(runtimes)})",
            f"install {wanted} and register it in /etc/docker/daemon.json, or clear "
            "[runtime] container_runtime",
        )
    )
    from legion.fleet.images import BASE_TAG, image_is_current

    image = runtime.image if runtime else "legion-agent:latest"
    for tag, what in (
        (image, "agent image"),
        (runtime.base_image if runtime and runtime.base_image else BASE_TAG, "base image"),
    ):
        try:
            client.images.get(tag)
            packages = config.images.mcp_packages if config else []
            if what == "agent image" and not image_is_current(client, tag, packages):
                checks.append(
                    Check(
                        what,
                        False,
                        f"{tag} was built from older legion code or other [images] mcp_packages",
                        "run `legion images build`",
                    )
                )
            else:
                checks.append(Check(what, True, f"{tag} present"))
        except Exception:
            checks.append(Check(what, False, f"{tag} missing", "run `legion images build`"))
    if not (runtime and runtime.base_image):
        have = shutil.which("debootstrap") is not None
        checks.append(
            Check(
                "debootstrap",
                have,
                "installed"
                if have
                else "missing (needed to build the base image on an air-gapped host)",
                "apt-get install debootstrap",
            )
        )
    client.close()
    return checks
