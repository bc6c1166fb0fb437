"""The Docker backend: one hardened container per agent.

Every container: a non-root UID, all capabilities dropped, no-new-privileges, a read-only
root, a noexec tmpfs at /tmp, memory, CPU and pids limits, NO network, the agent's volume
at /data, its socket folder at /run/legion and its host-owned bootstrap files (SOUL.md,
INSTRUCTIONS.md, ...) read-only at /etc/legion/identity.

The Docker SDK blocks, so each call runs in a worker thread of the backend's own bounded
pool (never the event loop's default executor, which the rest of the host shares: 100
starts must not queue behind, or hold up, anything else). The supervisor follows one event
stream for the whole fleet (a thread of its own) and lists the containers once in a while;
nothing here inspects containers one by one on a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from legion.fleet.backend import (
    AgentSpec,
    BackendUnavailable,
    ContainerStatus,
    ExecResult,
    NoContainer,
    StatusChange,
    TooManyLogStreams,
)

T = TypeVar("T")

log = logging.getLogger("legion.fleet.docker")

TMPFS_TMP = "rw,noexec,nosuid,nodev,size=64m"
# Each container's output is kept in at most 3 files of 10 MB (`legion logs` reads them).
LOG_ROTATION = {"max-size": "10m", "max-file": "3"}
# Log streams open at once (each holds one thread and one Docker connection).
MAX_LOG_STREAMS = 16
# Chunks read from Docker but not yet sent: a slow reader stops the read, not the memory.
LOG_BUFFER_CHUNKS = 64
# What one chunk sent to the client gathers from the chunks waiting (Docker frames are lines).
LOG_COALESCE_BYTES = 64 * 1024
IDENTITY_MOUNT = "/etc/legion/identity"
# Worker threads for Docker calls when the host does not say (`[runtime] start_concurrency`
# plus a few for stops, statuses and logs while starts run).
DEFAULT_WORKERS = 8
SPARE_WORKERS = 4
# The container events the supervisor follows (health_status matches every verdict).
WATCHED_EVENTS = ("start", "die", "oom", "health_status", "destroy")
# Containers whose `oom` event is remembered until their `die` event names the cause.
OOM_MEMORY = 256
_EXITED = re.compile(r"Exited \((-?\d+)\)")
SKILLS_MOUNT = "/etc/legion/skills"
EGRESS_MOUNT = "/run/legion-egress"


def container_name(home_label: str, agent: str) -> str:
    digest = hashlib.sha256(home_label.encode()).hexdigest()[:8]
    return f"legion-{digest}-{agent}"


def container_config(spec: AgentSpec, name: str) -> dict[str, Any]:
    """The docker-py `containers.create` arguments for `spec` (pure, so tests can read it)."""
    config: dict[str, Any] = {
        "image": spec.image,
        "name": name,
        "user": f"{spec.uid}:{spec.gid}",
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "read_only": True,
        "tmpfs": {"/tmp": TMPFS_TMP},
        "mem_limit": f"{spec.memory_mb}m",
        "memswap_limit": f"{spec.memory_mb}m",
        "nano_cpus": int(spec.cpus * 1e9),
        "pids_limit": spec.pids,
        "network_mode": "none",
        "volumes": {
            str(spec.data_dir): {"bind": "/data", "mode": "rw"},
            str(spec.socket_dir): {"bind": "/run/legion", "mode": "rw"},
        },
        "environment": {
            "LEGION_SOCKET": "/run/legion/mesh.sock",
            "LEGION_WORKSPACE": "/data/workspace",
            "HOME": "/data",
            **spec.env,
        },
        "labels": {"legion.agent": spec.name, **spec.labels},
        "init": True,
        "detach": True,
        "stop_signal": "SIGTERM",
        # What the agent writes to stdout/stderr is kept, rotated: an agent printing without
        # end cannot fill the host's disk (Docker's json-file default keeps it all).
        "log_config": {"type": "json-file", "config": LOG_ROTATION},
    }
    if spec.identity_dir is not None:
        # Outside /data and in a read-only root: the agent can neither write, replace nor
        # shadow what the runtime reads its identity from.
        config["volumes"][str(spec.identity_dir)] = {"bind": IDENTITY_MOUNT, "mode": "ro"}
        config["environment"]["LEGION_IDENTITY"] = IDENTITY_MOUNT
    # Skills the same way: the operator's, read-only (the agent's own are in /data).
    for where, folder in (("fleet", spec.fleet_skills_dir), ("agent", spec.skills_dir)):
        if folder is not None:
            config["volumes"][str(folder)] = {"bind": f"{SKILLS_MOUNT}/{where}", "mode": "ro"}
            config["environment"]["LEGION_SKILLS"] = SKILLS_MOUNT
    if spec.egress_dir is not None:
        # The host's folder, read-only: the agent connects to the socket, never replaces it.
        config["volumes"][str(spec.egress_dir)] = {"bind": EGRESS_MOUNT, "mode": "ro"}
        config["environment"]["LEGION_EGRESS_PROXY"] = f"{EGRESS_MOUNT}/proxy.sock"
    if spec.runtime:
        config["runtime"] = spec.runtime
    return config


def create_arguments(api: Any, spec: AgentSpec, name: str, home_label: str) -> dict[str, Any]:
    """The low-level `create_container` arguments of `spec` for this home (docker-py's
    APIClient `api` builds the host config); the benchmarks start bare containers with
    exactly these."""
    config = container_config(spec, name)
    config["labels"]["legion.home"] = home_label
    return low_level_arguments(api, config)


def low_level_arguments(
    api: Any, config: dict[str, Any], log_config: dict[str, Any] | None = None
) -> dict[str, Any]:
    """docker-py `containers.create` arguments (`config`, consumed) as the low-level
    APIClient's `create_container` arguments, every hardening option in the host config
    (agent and browser containers both go through here)."""
    volumes = config.pop("volumes")
    optional = {key: config.pop(key) for key in ("shm_size",) if key in config}
    logs = config.pop("log_config", None)
    host_config = api.create_host_config(
        binds=volumes,
        cap_drop=config.pop("cap_drop"),
        security_opt=config.pop("security_opt"),
        read_only=config.pop("read_only"),
        tmpfs=config.pop("tmpfs"),
        mem_limit=config.pop("mem_limit"),
        memswap_limit=config.pop("memswap_limit"),
        nano_cpus=config.pop("nano_cpus"),
        pids_limit=config.pop("pids_limit"),
        network_mode=config.pop("network_mode"),
        init=config.pop("init"),
        runtime=config.pop("runtime", None),
        log_config=log_config if log_config is not None else logs,
        **optional,
    )
    config.pop("detach")
    return {**config, "volumes": [v["bind"] for v in volumes.values()], "host_config": host_config}


def status_of_listing(entry: dict[str, Any]) -> ContainerStatus:
    """A container's status from one row of the engine's container list (`State` is
    running, exited, created ...; `Status` is "Up 5 minutes (unhealthy)", "Exited (137) 3
    seconds ago")."""
    state = entry.get("State") or "unknown"
    text = entry.get("Status") or ""
    mapped = (
        "running"
        if state in ("running", "restarting")
        else ("created" if state == "created" else "exited")
    )
    code = None
    if mapped == "exited":
        found = _EXITED.search(text)
        code = int(found.group(1)) if found else None
    health = None
    for verdict in ("unhealthy", "healthy", "health: starting"):
        if f"({verdict})" in text:
            health = verdict.removeprefix("health: ")
            break
    return ContainerStatus(
        mapped,  # type: ignore[arg-type]
        exit_code=code,
        container_id=entry.get("Id"),
        health=health,
    )


class DockerBackend:
    name = "docker"

    def __init__(
        self, home_label: str, client: Any | None = None, *, workers: int = DEFAULT_WORKERS
    ) -> None:
        self.home_label = home_label
        self._client = client
        self._workers = workers
        # A bounded pool of its own: Docker calls never take the loop's default executor.
        self._executor: ThreadPoolExecutor | None = None
        self._client_lock = threading.Lock()
        self._log_streams = 0
        self._log_streams_lock = threading.Lock()

    @classmethod
    def for_starts(cls, home_label: str, start_concurrency: int) -> DockerBackend:
        """A backend whose pool serves `start_concurrency` starts and a few other calls."""
        return cls(home_label, workers=start_concurrency + SPARE_WORKERS)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self._workers, thread_name_prefix="docker"
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    def _docker(self) -> Any:
        with self._client_lock:  # many threads may ask for the first client at once
            return self._connect()

    def _connect(self) -> Any:
        if self._client is None:
            import docker

            try:
                # One pooled connection per worker, plus the event stream and log streams.
                self._client = docker.from_env(
                    timeout=30, max_pool_size=self._workers + MAX_LOG_STREAMS + 2
                )
                self._client.ping()
            except Exception as exc:
                self._client = None
                raise BackendUnavailable(
                    f"cannot reach the Docker engine ({exc}); start it (e.g. `systemctl start "
                    "docker`), check DOCKER_HOST, or run `legion doctor`"
                ) from None
        return self._client

    def _name(self, agent: str) -> str:
        return container_name(self.home_label, agent)

    def _find(self, agent: str) -> Any | None:
        import docker.errors

        try:
            return self._docker().containers.get(self._name(agent))
        except docker.errors.NotFound:
            return None

    # --- blocking work, run in threads ---------------------------------------------

    def _start(self, spec: AgentSpec) -> ContainerStatus:
        import docker.errors

        client = self._docker()
        api = client.api
        create = create_arguments(api, spec, self._name(spec.name), self.home_label)
        try:
            # The low-level API: create + start, without the inspect round trips of the
            # high-level one (cold start is measured, see bench/agent_container.py).
            try:
                container_id = api.create_container(**create)["Id"]
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: a container of that name is left over
                    raise
                with contextlib.suppress(docker.errors.NotFound):
                    api.remove_container(self._name(spec.name), force=True)
                container_id = api.create_container(**create)["Id"]
            api.start(container_id)
        except docker.errors.ImageNotFound:
            raise BackendUnavailable(
                f"image {spec.image} is not built; run `legion images build`"
            ) from None
        except docker.errors.APIError as exc:
            raise BackendUnavailable(f"docker refused to start {spec.name}: {exc}") from None
        # Started: the supervisor's next check reads its real state (no extra round trip here).
        return ContainerStatus("running", container_id=container_id)

    @staticmethod
    def _status_of(container: Any) -> ContainerStatus:
        state = container.attrs.get("State", {})
        status = state.get("Status", "unknown")
        mapped = (
            "running"
            if status in ("running", "restarting")
            else ("created" if status == "created" else "exited")
        )
        return ContainerStatus(
            mapped,  # type: ignore[arg-type]
            exit_code=state.get("ExitCode") if mapped == "exited" else None,
            started_at=state.get("StartedAt"),
            container_id=container.id,
            error=state.get("Error") or None,
        )

    def _stop(self, agent: str, timeout_s: float) -> None:
        import docker.errors

        api = self._docker().api
        name = self._name(agent)
        try:
            api.stop(name, timeout=max(1, int(timeout_s)))
        except docker.errors.NotFound:
            return
        except docker.errors.APIError:
            pass  # it may have exited meanwhile: remove it all the same
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_container(name, force=True)

    def _status(self, agent: str) -> ContainerStatus:
        container = self._find(agent)
        return ContainerStatus("missing") if container is None else self._status_of(container)

    def _logs(self, agent: str, tail: int) -> str:
        container = self._find(agent)
        if container is None:
            return ""
        data: bytes = container.logs(tail=tail)
        return data.decode(errors="replace")

    def _open_logs(self, agent: str, tail: int | None, since: float | None, follow: bool) -> Any:
        import docker.errors

        try:
            return self._docker().api.logs(
                self._name(agent),
                stream=True,
                follow=follow,
                tail="all" if tail is None else tail,
                since=since if since else None,
            )
        except docker.errors.NotFound:
            raise NoContainer(f"{agent} has no container") from None
        except docker.errors.APIError as exc:
            raise BackendUnavailable(f"docker refused the logs of {agent}: {exc}") from None

    def _exec(self, agent: str, command: list[str], timeout_s: float) -> ExecResult:
        container = self._find(agent)
        if container is None:
            return ExecResult(127, f"agent {agent} has no container")
        wrapped = ["timeout", "-s", "KILL", str(int(timeout_s)), *command]
        code, output = container.exec_run(wrapped, demux=False)
        return ExecResult(int(code), (output or b"").decode(errors="replace"))

    # --- the async interface ----------------------------------------------------------

    async def start(self, spec: AgentSpec) -> ContainerStatus:
        return await self._run(self._start, spec)

    async def stop(self, agent: str, timeout_s: float = 5.0) -> None:
        await self._run(self._stop, agent, timeout_s)

    async def status(self, agent: str) -> ContainerStatus:
        return await self._run(self._status, agent)

    async def logs(self, agent: str, tail: int = 200) -> str:
        return await self._run(self._logs, agent, tail)

    async def open_logs(
        self,
        agent: str,
        *,
        tail: int | None = None,
        since: float | None = None,
        follow: bool = False,
    ) -> DockerLogStream:
        with self._log_streams_lock:
            if self._log_streams >= MAX_LOG_STREAMS:
                raise TooManyLogStreams(
                    f"{MAX_LOG_STREAMS} log streams are open already; close one "
                    "(e.g. a `legion logs -f` left running) and try again"
                )
            self._log_streams += 1
        try:
            raw = await self._run(self._open_logs, agent, tail, since, follow)
        except BaseException:
            self._release_log_stream()
            raise
        return DockerLogStream(raw, agent, self._release_log_stream)

    def _release_log_stream(self) -> None:
        with self._log_streams_lock:
            self._log_streams -= 1

    async def exec(self, agent: str, command: list[str], timeout_s: float = 30.0) -> ExecResult:
        return await self._run(self._exec, agent, command, timeout_s)

    async def memory_bytes(self, agent: str) -> int | None:
        """The container's cgroup memory usage (for benchmarks and `legion agents ls`)."""

        def read() -> int | None:
            container = self._find(agent)
            if container is None:
                return None
            stats = container.stats(stream=False)
            usage = stats.get("memory_stats", {})
            value = usage.get("usage")
            cache = usage.get("stats", {}).get("cache", 0) or usage.get("stats", {}).get(
                "inactive_file", 0
            )
            return None if value is None else int(value) - int(cache or 0)

        return await self._run(read)

    def _listing(self) -> list[dict[str, Any]]:
        """This home's containers, in one call (the list endpoint: no inspect per container)."""
        rows: list[dict[str, Any]] = self._docker().api.containers(
            all=True, filters={"label": f"legion.home={self.home_label}"}
        )
        return rows

    async def remove_others(self, keep: set[str]) -> list[str]:
        def sweep() -> list[str]:
            try:
                found = self._listing()
            except BackendUnavailable:
                return []
            gone = []
            api = self._docker().api
            for row in found:
                agent = (row.get("Labels") or {}).get("legion.agent", "")
                if agent not in keep:
                    api.remove_container(row["Id"], force=True)
                    gone.append(agent)
            return sorted(gone)

        return await self._run(sweep)

    async def statuses(self) -> dict[str, ContainerStatus]:
        def listing() -> dict[str, ContainerStatus]:
            try:
                rows = self._listing()
            except BackendUnavailable:
                raise
            except Exception as exc:  # the engine's errors, and a timeout or a cut connection
                raise BackendUnavailable(f"cannot list the containers: {exc}") from None
            out = {}
            for row in rows:
                agent = (row.get("Labels") or {}).get("legion.agent")
                if agent:
                    out[agent] = status_of_listing(row)
            return out

        return await self._run(listing)

    async def watch(self) -> DockerStatusFeed:
        def subscribe() -> Any:
            try:
                # Returns once the engine has answered: what happens from here on is seen.
                return self._docker().api.events(
                    decode=True,
                    filters={
                        "type": "container",
                        "label": f"legion.home={self.home_label}",
                        "event": list(WATCHED_EVENTS),
                    },
                )
            except BackendUnavailable:
                raise
            except Exception as exc:  # the engine's errors, and a timeout or a cut connection
                raise BackendUnavailable(f"cannot follow the engine's events: {exc}") from None

        raw = await self._run(subscribe)
        return DockerStatusFeed(raw)

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await self._run(client.close)
        if self._executor is not None:
            executor, self._executor = self._executor, None
            executor.shutdown(wait=False, cancel_futures=True)


def change_of_event(event: dict[str, Any], oomed: OrderedDict[str, None]) -> StatusChange | None:
    """The status change one engine event says (None: not one the supervisor acts on).
    An `oom` event is remembered in `oomed` and named in the `die` that follows it."""
    actor = event.get("Actor") or {}
    attrs = actor.get("Attributes") or {}
    agent = attrs.get("legion.agent")
    cid = actor.get("ID") or event.get("id")
    action = str(event.get("Action") or event.get("status") or "")
    if not agent or not cid:
        return None
    if action == "oom":
        oomed[cid] = None
        while len(oomed) > OOM_MEMORY:
            oomed.popitem(last=False)
        return None
    if action == "start":
        return StatusChange(agent, ContainerStatus("running", container_id=cid))
    if action == "die":
        try:
            code: int | None = int(attrs.get("exitCode", ""))
        except ValueError:
            code = None
        error = None
        if cid in oomed:
            del oomed[cid]
            error = "out of memory"
        return StatusChange(agent, ContainerStatus("exited", code, container_id=cid, error=error))
    if action == "destroy":
        return StatusChange(agent, ContainerStatus("missing", container_id=cid))
    if action.startswith("health_status"):
        verdict = action.partition(":")[2].strip() or None
        return StatusChange(agent, ContainerStatus("running", container_id=cid, health=verdict))
    return None


class DockerStatusFeed:
    """The engine's event stream for this home's containers, read by a thread of its own
    (it blocks for as long as the engine is up) and handed to the loop as StatusChange.
    It ends when the engine ends the stream; `aclose()` shuts the connection."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw  # docker-py's CancellableStream
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[StatusChange | None] = asyncio.Queue()  # None: the end
        self._closed = threading.Event()
        self._oomed: OrderedDict[str, None] = OrderedDict()
        self._thread = threading.Thread(target=self._pump, name="docker-events", daemon=True)
        self._thread.start()

    def __aiter__(self) -> DockerStatusFeed:
        return self

    async def __anext__(self) -> StatusChange:
        if self._closed.is_set():
            raise StopAsyncIteration
        change = await self._queue.get()
        if change is None:
            self._closed.set()
            raise StopAsyncIteration
        return change

    def _pump(self) -> None:
        try:
            for event in self._raw:
                if self._closed.is_set():
                    return
                if isinstance(event, dict):
                    change = change_of_event(event, self._oomed)
                    if change is not None:
                        self._deliver(change)
        except Exception as exc:  # the engine went away mid-stream: the feed just ends
            if not self._closed.is_set():
                log.warning(
                    "the engine's event stream ended with an error",
                    extra={"fields": {"error": str(exc)}},
                )
        finally:
            self._deliver(None)

    def _deliver(self, change: StatusChange | None) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, change)
        except RuntimeError:  # the loop is closed: nobody reads any more
            self._closed.set()

    async def aclose(self) -> None:
        if self._closed.is_set() and not self._thread.is_alive():
            return
        self._closed.set()
        try:
            await asyncio.to_thread(self._raw.close)  # wakes the pump's blocking read
        except Exception as exc:
            log.warning(
                "could not close the engine's event stream", extra={"fields": {"error": str(exc)}}
            )


class DockerLogStream:
    """A container's output read by a thread of its own (never the loop's executor: a
    follow stream lasts as long as the container), handed to the loop in bounded chunks.

    The thread stops when Docker ends the stream (the container is gone, or all was read)
    or when `aclose()` shuts the connection; at most LOG_BUFFER_CHUNKS chunks wait for the
    reader, so a slow or stalled client holds Docker back instead of filling memory.
    """

    def __init__(self, raw: Any, agent: str, release: Callable[[], None]) -> None:
        self._raw = raw  # docker-py's CancellableStream: close() may be called from any thread
        self._agent = agent
        self._release: Callable[[], None] | None = release
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()  # None: the end
        self._slots = threading.Semaphore(LOG_BUFFER_CHUNKS)
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def __aiter__(self) -> DockerLogStream:
        return self

    async def __anext__(self) -> bytes:
        if self._closed.is_set():
            raise StopAsyncIteration
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._pump, name=f"logs-{self._agent}", daemon=True
            )
            self._thread.start()
        chunk = await self._queue.get()
        if chunk is None:
            await self.aclose()
            raise StopAsyncIteration
        self._slots.release()
        parts, size = [chunk], len(chunk)
        while size < LOG_COALESCE_BYTES and not self._queue.empty():
            more = self._queue.get_nowait()
            if more is None:
                self._queue.put_nowait(None)  # the end, seen on the next call
                break
            self._slots.release()
            parts.append(more)
            size += len(more)
        return b"".join(parts)

    def _pump(self) -> None:
        try:
            for chunk in self._raw:
                if not chunk:
                    continue
                while not self._slots.acquire(timeout=0.5):
                    if self._closed.is_set():
                        return
                if self._closed.is_set():
                    return
                self._deliver(bytes(chunk))
        except Exception as exc:  # the engine went away mid-stream: the stream just ends
            log.warning(
                "container log stream ended with an error",
                extra={"fields": {"agent": self._agent, "error": str(exc)}},
            )
        finally:
            self._deliver(None)

    def _deliver(self, chunk: bytes | None) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, chunk)
        except RuntimeError:  # the loop is closed: nobody reads any more
            self._closed.set()

    async def aclose(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        if self._release is not None:
            release, self._release = self._release, None
            release()
        try:
            await asyncio.to_thread(self._raw.close)  # wakes the pump's blocking read
        except Exception as exc:
            log.warning(
                "could not close a container log stream",
                extra={"fields": {"agent": self._agent, "error": str(exc)}},
            )
