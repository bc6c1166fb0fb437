"""`legion doctor`: what is wrong with this host, and what to do about each problem."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
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


def model_checks(paths: Paths, config: Config) -> list[Check]:
    """Every model an agent can reach (its model, embedding model, allowed models and their
    failover hops) has a usable credential, or needs none, and a price."""
    from legion.gateway.llm import catalog

    stored, problem = catalog.stored_credentials(paths.vault_db)
    checks: list[Check] = []
    if problem:
        checks.append(Check("vault", False, problem, "run `legion doctor` as the host's user"))
    needed = sorted({m.credential for m in config.llm.models.values() if m.credential})
    keys = sorted(n for n in needed if stored.get(n) == "system")
    default = config.llm.models.get(config.llm.default_model or "")
    first = default.credential if default is not None and default.credential else None
    if needed and not keys and not problem:
        first = first or needed[0]
        checks.append(
            Check(
                "provider keys",
                False,
                "no provider key is stored, so no agent can call a cloud model yet (the "
                f"models name: {', '.join(needed)})",
                f"`legion vault set {first} --tier system` (prompted; the key never goes on "
                "the command line), or `legion setup` for a provider, model and starter fleet",
            )
        )
    elif keys:
        checks.append(Check("provider keys", True, f"stored: {', '.join(keys)}"))
    found = catalog.problems(config, stored, problem)
    for item in found:
        agents = ", ".join(item.agents)
        checks.append(
            Check(f"model {item.alias}", False, f"{item.what} (used by {agents})", item.fix)
        )
    reached = sorted({a for agent in config.agents for a in catalog.reachable(config, agent)})
    if not found and reached:
        checks.append(
            Check(
                "models",
                True,
                f"{len(reached)} model(s) the agents can reach have a credential (or need "
                f"none) and a price: {', '.join(reached)}",
            )
        )
    elif not config.agents:
        checks.append(
            Check(
                "models",
                True,
                "no agents yet: add one with `legion agents add NAME --model ALIAS` "
                "(`legion models ls` lists the aliases)",
            )
        )
    return checks


def container_checks(client: Any, paths: Paths, packages: Sequence[str] = ()) -> list[Check]:
    """Each of this home's running containers runs an image built from this legion's code:
    an agent's from its agent code with these `[images] mcp_packages`, a browser's from its
    browser code (a stale one misses fixes and may not speak the host's current API)."""
    from legion.fleet.browser_image import browser_source_digest
    from legion.fleet.images import source_digest

    try:
        containers = client.containers.list(filters={"label": f"legion.home={paths.home}"})
    except Exception as exc:
        return [Check("running containers", False, f"could not list them: {exc}", "")]
    want = {"agent": source_digest(packages), "browser": browser_source_digest()}
    stale = []
    for container in containers:
        try:
            labels = (container.image.attrs.get("Config") or {}).get("Labels") or {}
        except Exception:
            labels = {}
        role = labels.get("org.legion.role", "agent")
        if labels.get("org.legion.source") != want.get(role, want["agent"]):
            stale.append(container.labels.get("legion.agent", container.name))
    if stale:
        return [
            Check(
                "running containers",
                False,
                f"{', '.join(sorted(stale))} run(s) an image built from other legion code",
                "`legion images build`, then `legion agents restart NAME` for each",
            )
        ]
    if not containers:
        return []
    return [
        Check(
            "running containers",
            True,
            f"{len(containers)} running, each on an image built from this code",
        )
    ]


def run_checks(
    paths: Paths, config: Config | None, config_error: str | None, *, with_docker: bool = True
) -> list[Check]:
    """Every check, in order; `with_docker=False` stops before the Docker engine's (the config,
    socket paths, provider keys and models only: fast, what `make run` runs first)."""
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
    if config is not None:
        checks += model_checks(paths, config)
    runtime = config.runtime if config else None
    if not with_docker:
        return checks
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
    checks += container_checks(client, paths, config.images.mcp_packages if config else ())
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
