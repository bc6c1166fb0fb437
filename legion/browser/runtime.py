"""Browser containers on Docker: the agent containers' hardening (non-root, no
capabilities, no-new-privileges, read-only root, no network, limits), with what a browser
needs on top (see docs/browser.md, "The container"):

* `shm_size` (`[browser] shm_mb`): Chromium shares rendered frames through /dev/shm;
  Docker's 64 MiB default crashes tabs on large pages;
* a larger `/tmp` tmpfs (still noexec): the X socket, fontconfig's cache, the driver's
  temporary files; HOME points there;
* Chromium runs with `--no-sandbox` (Playwright's default): its own sandbox needs user
  namespaces or a setuid helper, which `no-new-privileges` and the seccomp profile refuse;
  the container is the sandbox.

The Docker SDK blocks, so every call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from legion.fleet.backend import AgentSpec, BackendUnavailable
from legion.fleet.docker_backend import (
    LOG_ROTATION,
    container_config,
    container_name,
    low_level_arguments,
)

TMPFS_TMP = "rw,noexec,nosuid,nodev,size=256m"
ROLE_LABEL = "legion.role"


@dataclass(frozen=True)
class BrowserSpec:
    agent: str
    image: str
    uid: int
    gid: int
    profile_dir: Path
    socket_dir: Path
    memory_mb: int
    cpus: float
    pids: int
    shm_mb: int
    runtime: str | None = None
    env: dict[str, str] = field(default_factory=dict)


def browser_container_name(home_label: str, agent: str) -> str:
    return container_name(home_label, f"browser-{agent}")


def browser_container_config(spec: BrowserSpec, name: str, home_label: str) -> dict[str, Any]:
    """The docker-py `containers.create` arguments (pure, so tests can read them)."""
    base = container_config(
        AgentSpec(
            name=spec.agent,
            image=spec.image,
            data_dir=spec.profile_dir,
            socket_dir=spec.socket_dir,
            uid=spec.uid,
            gid=spec.gid,
            memory_mb=spec.memory_mb,
            cpus=spec.cpus,
            pids=spec.pids,
            runtime=spec.runtime,
        ),
        name,
    )
    base["volumes"] = {
        str(spec.profile_dir): {"bind": "/profile", "mode": "rw"},
        str(spec.socket_dir): {"bind": "/run/legion-browser", "mode": "rw"},
    }
    base["environment"] = {
        "HOME": "/tmp/home",
        "LEGION_BROWSER_DIR": "/run/legion-browser",
        "LEGION_BROWSER_PROFILE": "/profile",
        **spec.env,
    }
    base["tmpfs"] = {"/tmp": TMPFS_TMP}
    base["shm_size"] = f"{spec.shm_mb}m"
    # Not `legion.agent = NAME`: the fleet's sweep must never mistake it for the agent.
    base["labels"] = {
        "legion.agent": f"browser:{spec.agent}",
        "legion.browser": spec.agent,
        ROLE_LABEL: "browser",
        "legion.home": home_label,
    }
    return base


class DockerBrowsers:
    def __init__(self, home_label: str, client: Any | None = None) -> None:
        self.home_label = home_label
        self._client = client

    def _docker(self) -> Any:
        if self._client is None:
            import docker

            try:
                self._client = docker.from_env(timeout=60)
                self._client.ping()
            except Exception as exc:
                self._client = None
                raise BackendUnavailable(
                    f"cannot reach the Docker engine ({exc}); the browser needs it (see "
                    "`legion doctor`)"
                ) from None
        return self._client

    def _start(self, spec: BrowserSpec) -> str:
        import docker.errors

        api = self._docker().api
        name = browser_container_name(self.home_label, spec.agent)
        config = browser_container_config(spec, name, self.home_label)
        create = low_level_arguments(
            api, config, log_config={"type": "json-file", "config": LOG_ROTATION}
        )
        try:
            try:
                container_id = api.create_container(**create)["Id"]
            except docker.errors.APIError as exc:
                if exc.status_code != 409:
                    raise
                api.remove_container(name, force=True)
                container_id = api.create_container(**create)["Id"]
            api.start(container_id)
        except docker.errors.ImageNotFound:
            raise BackendUnavailable(
                f"image {spec.image} is not built; run `legion images build --only browser`"
            ) from None
        except docker.errors.APIError as exc:
            raise BackendUnavailable(f"docker refused to start the browser: {exc}") from None
        return str(container_id)

    def _stop(self, agent: str, timeout_s: float) -> None:
        import docker.errors

        name = browser_container_name(self.home_label, agent)
        try:
            container = self._docker().containers.get(name)
        except (docker.errors.NotFound, BackendUnavailable):
            return
        try:
            container.stop(timeout=max(1, int(timeout_s)))
        except docker.errors.APIError:
            pass
        finally:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)

    def _running(self, agent: str) -> bool:
        import docker.errors

        try:
            container = self._docker().containers.get(
                browser_container_name(self.home_label, agent)
            )
        except docker.errors.NotFound:
            return False
        return bool(container.attrs.get("State", {}).get("Running"))

    def _memory(self, agent: str) -> int | None:
        import docker.errors

        try:
            container = self._docker().containers.get(
                browser_container_name(self.home_label, agent)
            )
        except docker.errors.NotFound:
            return None
        usage = container.stats(stream=False).get("memory_stats", {})
        value = usage.get("usage")
        stats = usage.get("stats", {})
        # as DockerBackend.memory_bytes: page cache out (cgroup v1 `cache`, v2 `inactive_file`)
        cache = stats.get("cache", 0) or stats.get("inactive_file", 0)
        return None if value is None else int(value) - int(cache or 0)

    def _logs(self, agent: str, tail: int) -> str:
        import docker.errors

        try:
            container = self._docker().containers.get(
                browser_container_name(self.home_label, agent)
            )
        except docker.errors.NotFound:
            return ""
        data: bytes = container.logs(tail=tail)
        return data.decode(errors="replace")

    def _sweep(self) -> list[str]:
        found = self._docker().containers.list(
            all=True,
            filters={"label": [f"legion.home={self.home_label}", f"{ROLE_LABEL}=browser"]},
        )
        gone = []
        for container in found:
            container.remove(force=True)
            gone.append(str(container.labels.get("legion.browser", "")))
        return sorted(gone)

    async def start(self, spec: BrowserSpec) -> str:
        return await asyncio.to_thread(self._start, spec)

    async def stop(self, agent: str, timeout_s: float = 3.0) -> None:
        await asyncio.to_thread(self._stop, agent, timeout_s)

    async def running(self, agent: str) -> bool:
        return await asyncio.to_thread(self._running, agent)

    async def memory_bytes(self, agent: str) -> int | None:
        return await asyncio.to_thread(self._memory, agent)

    async def logs(self, agent: str, tail: int = 100) -> str:
        return await asyncio.to_thread(self._logs, agent, tail)

    async def sweep(self) -> list[str]:
        """Remove the browser containers an earlier host of this home left behind."""
        return await asyncio.to_thread(self._sweep)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await asyncio.to_thread(client.close)
