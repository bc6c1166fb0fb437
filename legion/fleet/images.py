"""`legion images build`: the agent image, built without network inside the build.

1. The base: the configured `[runtime] base_image` (it must hold python3 >= 3.11), or
   legion's own Debian base `legion-base:bookworm`, built with debootstrap and
   `docker import` when it does not exist yet (an air-gapped host cannot pull images).
2. The agent's Python dependencies (httpx, pydantic, apsw, sqlite-vec and theirs) are
   fetched as wheels on the HOST, for the base's Python version, and unpacked into the
   build context; the image build itself only copies files and byte-compiles them
   (`--network none`).
3. The image: the base + those packages + `agent_container` + `legion.wire`, running as a
   non-root UID.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from legion import __version__

BASE_TAG = "legion-base:bookworm"
SUITE = "bookworm"
# apsw: a SQLite that loads extensions on any CPython; sqlite-vec: the vector functions of
# the agent's memory.db (agent_container.memory). Same ranges as the host's pyproject.
AGENT_REQUIREMENTS = [
    "httpx>=0.27,<1",
    "pydantic>=2.7,<3",
    "apsw>=3.45",
    "sqlite-vec>=0.1.6,<0.2",
    # The MCP client of the runtime (imported only when the agent has MCP servers).
    "mcp>=2.3,<3",
]
Progress = Callable[[str], None]


class ImageBuildError(Exception):
    pass


def debian_mirror(configured: str | None = None) -> str:
    """The Debian mirror: configured, else the first Debian one in the host's apt sources."""
    if configured:
        return configured
    candidates: list[str] = []
    sources = Path("/etc/apt/sources.list.d")
    for path in sorted(sources.glob("*.sources")) if sources.is_dir() else []:
        text = path.read_text(errors="replace")
        for block in text.split("\n\n"):
            if re.search(r"^Suites:.*\b(bookworm|trixie|stable)\b", block, re.M):
                m = re.search(r"^URIs:\s*(\S+)", block, re.M)
                if m and "security" not in m.group(1):
                    candidates.append(m.group(1))
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text(errors="replace").splitlines():
            m = re.match(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+\S+\s+main", line.strip())
            if m and "security" not in m.group(1):
                candidates.append(m.group(1))
    if not candidates:
        raise ImageBuildError(
            "no Debian mirror found in /etc/apt/sources.list(.d); set [runtime] debian_mirror "
            "or pass --mirror"
        )
    return candidates[0]


def _client() -> Any:
    import docker

    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as exc:
        raise ImageBuildError(
            f"cannot reach the Docker engine ({exc}); see `legion doctor`"
        ) from None
    return client


def image_exists(client: Any, tag: str) -> bool:
    import docker.errors

    try:
        client.images.get(tag)
        return True
    except docker.errors.ImageNotFound:
        return False


def build_debian_base(client: Any, mirror: str, progress: Progress, tag: str = BASE_TAG) -> str:
    """debootstrap a minimal Debian with python3 and `docker import` it as `tag`."""
    if shutil.which("debootstrap") is None:
        raise ImageBuildError(
            "debootstrap is not installed; install it (`apt-get install debootstrap`) or set "
            "[runtime] base_image to an image with python3 >= 3.11"
        )
    if os.geteuid() != 0:
        raise ImageBuildError("debootstrap needs root; run `legion images build` as root once")
    with tempfile.TemporaryDirectory(prefix="legion-rootfs-") as tmp:
        root = Path(tmp) / "rootfs"
        progress(f"debootstrap {SUITE} (minbase + python3) from {mirror} ...")
        cmd = ["debootstrap", "--variant=minbase", "--include=python3", SUITE, str(root), mirror]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(("I: Retrieving", "I: Validating")):
                continue
            progress("  " + line.rstrip())
        if proc.wait() != 0:
            raise ImageBuildError(f"debootstrap failed (exit {proc.returncode}); see above")
        for junk in (
            "var/cache/apt/archives",
            "var/lib/apt/lists",
            "usr/share/doc",
            "usr/share/man",
            "usr/share/locale",
        ):
            shutil.rmtree(root / junk, ignore_errors=True)
            (root / junk).mkdir(parents=True, exist_ok=True)
        progress(f"docker import -> {tag}")
        archive = Path(tmp) / "rootfs.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(root, arcname=".")
        repo, _, version = tag.partition(":")
        client.api.import_image_from_file(str(archive), repository=repo, tag=version or "latest")
    return tag


def python_version_of(client: Any, image: str) -> str:
    out = client.containers.run(
        image,
        ["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        network_mode="none",
        remove=True,
    )
    version = str(out.decode()).strip()
    if not re.fullmatch(r"3\.\d+", version) or int(version.split(".")[1]) < 11:
        raise ImageBuildError(f"{image} has python {version}; the agent needs python >= 3.11")
    return version


def fetch_site_packages(
    python: str, dest: Path, cache: Path, progress: Progress, extra: Sequence[str] = ()
) -> None:
    """Install the agent's dependencies for `python` into `dest`, from wheels fetched on
    the host (pip's cross-platform install: binary wheels only); `extra` are the
    operator's `[images] mcp_packages` (the MCP servers agents run over stdio)."""
    wanted = [*AGENT_REQUIREMENTS, *extra]
    cache.mkdir(parents=True, exist_ok=True)
    platform_args: list[str] = []
    for tag in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"):
        platform_args += ["--platform", tag]
    if os.uname().machine in ("aarch64", "arm64"):
        platform_args = [a.replace("x86_64", "aarch64") for a in platform_args]
    common = [
        "--only-binary=:all:",
        "--python-version",
        python,
        "--implementation",
        "cp",
        *platform_args,
    ]
    progress(f"fetching wheels for python {python}: {', '.join(wanted)}")
    download = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--dest",
        str(cache),
        *common,
        *wanted,
    ]
    result = subprocess.run(download, capture_output=True, text=True)
    if result.returncode != 0:
        progress("  download failed; trying the wheels already cached in " + str(cache))
    install = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-index",
        "--find-links",
        str(cache),
        "--target",
        str(dest),
        "--no-compile",
        *common,
        *wanted,
    ]
    result = subprocess.run(install, capture_output=True, text=True)
    if result.returncode != 0:
        raise ImageBuildError(
            "could not get the agent's Python wheels (httpx, pydantic, apsw, sqlite-vec, mcp"
            + (f", and [images] mcp_packages: {', '.join(extra)}" if extra else "")
            + f") for python {python}, as binary wheels: {result.stderr.strip()[-800:]}"
        )


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImageBuildError(f"cannot find the {name} package to put in the image")
    return Path(next(iter(spec.submodule_search_locations)))


def source_digest(packages: Sequence[str] = ()) -> str:
    """A hash of the code that goes into the agent image, and of the extra packages (to
    spot a stale image)."""
    import hashlib

    digest = hashlib.sha256()
    for package in sorted(packages):
        digest.update(b"package:" + package.encode())
    roots = [_package_dir("agent_container"), _package_dir("legion") / "wire"]
    files = [_package_dir("legion") / "__init__.py"]
    for root in roots:
        files += sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def stage_app(dest: Path, package: str, site: Path) -> None:
    """A build context's `app/` (the container's `package` and `legion.wire`, nothing else of
    the host's code) and `site/` (its wheels, moved from `site`)."""
    app = dest / "app"
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(_package_dir(package), app / package, ignore=skip)
    legion_dir = _package_dir("legion")
    (app / "legion").mkdir(parents=True)
    shutil.copy(legion_dir / "__init__.py", app / "legion" / "__init__.py")
    shutil.copytree(legion_dir / "wire", app / "legion" / "wire", ignore=skip)
    shutil.move(str(site), dest / "site")


def image_is_current(client: Any, tag: str, packages: Sequence[str] = ()) -> bool:
    import docker.errors

    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    labels = (image.attrs.get("Config") or {}).get("Labels") or {}
    return bool(labels.get("org.legion.source") == source_digest(packages))


def build_context(
    dest: Path, site: Path, base: str, uid: int, packages: Sequence[str] = ()
) -> None:
    stage_app(dest, "agent_container", site)
    (dest / "Dockerfile").write_text(f"""FROM {base}
COPY site /opt/legion/site
COPY app /opt/legion/app
RUN python3 -m compileall -q /opt/legion && mkdir -p /data /run/legion /etc/legion/identity \\
    /etc/legion/skills/fleet /etc/legion/skills/agent
ENV PYTHONPATH=/opt/legion/site:/opt/legion/app PYTHONDONTWRITEBYTECODE=1 \\
    PYTHONUNBUFFERED=1 HOME=/data
WORKDIR /data
USER {uid}:{uid}
LABEL org.legion.version="{__version__}" org.legion.role="agent" \
    org.legion.source="{source_digest(packages)}"
ENTRYPOINT ["python3", "-m", "agent_container"]
""")


def build_agent_image(
    *,
    tag: str,
    base: str | None,
    mirror: str | None,
    uid: int,
    cache: Path,
    progress: Progress,
    rebuild_base: bool = False,
    mcp_packages: Sequence[str] = (),
) -> dict[str, Any]:
    """Build the agent image (with `mcp_packages` installed beside the runtime); returns
    {"image", "base", "python", "base_built", "mcp_packages"}."""
    client = _client()
    base_built = False
    if base:
        if not image_exists(client, base):
            progress(f"pulling {base} ...")
            try:
                client.images.pull(base)
            except Exception as exc:
                raise ImageBuildError(
                    f"base image {base} is not here and cannot be pulled ({exc}); on an "
                    "air-gapped host leave [runtime] base_image empty: legion then builds a "
                    "Debian base with debootstrap"
                ) from None
    else:
        base = BASE_TAG
        if rebuild_base or not image_exists(client, base):
            progress(
                f"{base} not found: building a Debian base with debootstrap (no registry needed)"
            )
            build_debian_base(client, debian_mirror(mirror), progress, base)
            base_built = True
        else:
            progress(f"using the existing base {base}")
    python = python_version_of(client, base)
    with tempfile.TemporaryDirectory(prefix="legion-image-") as tmp:
        ctx = Path(tmp)
        site = ctx / "site-staging"
        fetch_site_packages(python, site, cache, progress, mcp_packages)
        context = ctx / "context"
        context.mkdir()
        build_context(context, site, base, uid, mcp_packages)
        progress(f"docker build {tag} (--network none)")
        for chunk in client.api.build(
            path=str(context), tag=tag, rm=True, forcerm=True, network_mode="none", decode=True
        ):
            if "stream" in chunk and chunk["stream"].strip():
                progress("  " + chunk["stream"].rstrip())
            if "error" in chunk:
                raise ImageBuildError(f"docker build failed: {chunk['error']}")
    return {
        "image": tag,
        "base": base,
        "python": python,
        "base_built": base_built,
        "mcp_packages": list(mcp_packages),
    }


def describe_images(tags: list[str]) -> list[dict[str, Any]]:
    client = _client()
    out = []
    for tag in tags:
        try:
            image = client.images.get(tag)
        except Exception:
            out.append({"image": tag, "present": False})
            continue
        out.append(
            {
                "image": tag,
                "present": True,
                "id": image.short_id,
                "created": image.attrs.get("Created"),
                "size_mb": round(image.attrs.get("Size", 0) / 1e6, 1),
            }
        )
    return out
