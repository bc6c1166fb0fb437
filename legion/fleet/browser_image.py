"""`legion images build` (browser part): the `legion-browser` image, as air-gapped as the
agent image.

1. The base: `[browser] base_image` when set, else legion's own Debian base
   `legion-browser-base:bookworm`, built with debootstrap from the host's apt mirror with
   Debian's `chromium`, `xvfb` and `x11vnc` included (no registry, no apt in the build).
2. Python wheels (pydantic, Playwright: its driver ships inside the wheel; the browser
   download Playwright offers is never used) fetched on the HOST for the base's Python.
3. The image: the base + those packages + `browser_container` + `legion.wire`, running as
   a non-root UID; Chromium is launched from `/usr/bin/chromium` (Camoufox from where the
   operator installed it in a base of their own).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from legion import __version__
from legion.fleet.images import (
    SUITE,
    ImageBuildError,
    Progress,
    _client,
    _package_dir,
    debian_mirror,
    image_exists,
    python_version_of,
    stage_app,
)

BROWSER_BASE_TAG = "legion-browser-base:bookworm"
# Debian packages of the browser base (dependencies come with them).
BROWSER_PACKAGES = (
    "python3",
    "libatomic1",  # the Playwright driver's node binary needs it
    "chromium",
    "xvfb",
    "x11vnc",
    "fonts-liberation",
    "fonts-dejavu-core",
    "ca-certificates",
)
# Pinned: the Playwright driver speaks to the browser over its protocol; this version was
# tested against Debian bookworm's chromium (docs/browser.md says how to move it).
PLAYWRIGHT = "playwright==1.65.2"
BROWSER_REQUIREMENTS = ["pydantic>=2.7,<3", PLAYWRIGHT]
_PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)


def browser_source_digest() -> str:
    """A hash of what goes into the browser image (to spot a stale one)."""
    digest = hashlib.sha256()
    roots = [_package_dir("browser_container"), _package_dir("legion") / "wire"]
    files = [_package_dir("legion") / "__init__.py", Path(__file__)]
    for root in roots:
        files += sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def browser_image_is_current(client: Any, tag: str) -> bool:
    import docker.errors

    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    labels = (image.attrs.get("Config") or {}).get("Labels") or {}
    return bool(labels.get("org.legion.source") == browser_source_digest())


def _run(cmd: list[str], progress: Progress, what: str, env: dict[str, str] | None = None) -> None:
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert proc.stdout is not None
    tail: list[str] = []
    for line in proc.stdout:
        if line.startswith(("I: Retrieving", "I: Validating", "I: Extracting", "I: Unpacking")):
            continue
        if line.startswith(("Get:", "Selecting", "Preparing", "Unpacking", "(Reading")):
            continue
        progress("  " + line.rstrip())
        tail = [*tail[-20:], line.rstrip()]
    if proc.wait() != 0:
        raise ImageBuildError(f"{what} failed (exit {proc.returncode}): " + " | ".join(tail[-5:]))


def build_browser_base(client: Any, mirror: str, progress: Progress, tag: str) -> str:
    """debootstrap a minimal Debian with python3, then install chromium, xvfb and x11vnc in
    it with apt (in a chroot, from the host's network: the image build has none); `docker
    import` the result as `tag`."""
    if shutil.which("debootstrap") is None:
        raise ImageBuildError(
            "debootstrap is not installed; install it (`apt-get install debootstrap`) or set "
            "[browser] base_image to an image with python3 >= 3.11 and chromium, xvfb, x11vnc"
        )
    if os.geteuid() != 0:
        raise ImageBuildError("debootstrap needs root; run `legion images build` as root once")
    with tempfile.TemporaryDirectory(prefix="legion-browser-rootfs-") as tmp:
        root = Path(tmp) / "rootfs"
        progress(f"debootstrap {SUITE} (minbase + python3) from {mirror} ...")
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,ca-certificates",
                SUITE,
                str(root),
                mirror,
            ],
            progress,
            "debootstrap",
        )
        packages = [p for p in BROWSER_PACKAGES if p not in ("python3", "ca-certificates")]
        progress(f"apt-get install {' '.join(packages)} (in the new root) ...")
        (root / "etc/apt/sources.list").write_text(
            f"deb {mirror} {SUITE} main\ndeb {mirror} {SUITE}-updates main\n"
        )
        shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
        policy = root / "usr/sbin/policy-rc.d"  # no service starts in the chroot
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        chroot = ["chroot", str(root)]
        _run([*chroot, "apt-get", "update", "-qq"], progress, "apt-get update", env)
        _run(
            [*chroot, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
            progress,
            "apt-get install",
            env,
        )
        _run([*chroot, "apt-get", "clean"], progress, "apt-get clean", env)
        policy.unlink()
        (root / "etc/resolv.conf").unlink()
        for junk in (
            "var/cache/apt/archives",
            "var/lib/apt/lists",
            "usr/share/doc",
            "usr/share/man",
            "usr/share/locale",
            "usr/share/info",
        ):
            shutil.rmtree(root / junk, ignore_errors=True)
            (root / junk).mkdir(parents=True, exist_ok=True)
        progress(f"docker import -> {tag}")
        archive = Path(tmp) / "rootfs.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(root, arcname=".")
        repo, _, version = tag.partition(":")
        client.api.import_image_from_file(
            str(archive),
            repository=repo,
            tag=version or "latest",
            changes=[f'LABEL org.legion.packages="{packages_digest()}"'],
        )
    return tag


def packages_digest() -> str:
    """Which package list a browser base was built with (a changed list rebuilds it)."""
    return hashlib.sha256(" ".join(BROWSER_PACKAGES).encode()).hexdigest()[:16]


def _base_is_current(client: Any, tag: str) -> bool:
    labels = (client.images.get(tag).attrs.get("Config") or {}).get("Labels") or {}
    return bool(labels.get("org.legion.packages") == packages_digest())


def fetch_wheels(
    python: str, dest: Path, cache: Path, progress: Progress, requirements: list[str]
) -> None:
    """Install `requirements` for `python` into `dest` from binary wheels fetched on the host."""
    cache.mkdir(parents=True, exist_ok=True)
    machine = "aarch64" if os.uname().machine in ("aarch64", "arm64") else "x86_64"
    platform_args: list[str] = []
    for tag in _PLATFORMS:
        platform_args += ["--platform", tag.replace("x86_64", machine)]
    common = [
        "--only-binary=:all:",
        "--python-version",
        python,
        "--implementation",
        "cp",
        *platform_args,
    ]
    pip = [sys.executable, "-m", "pip"]
    progress(f"fetching wheels for python {python}: {', '.join(requirements)}")
    download = [*pip, "download", "--quiet", "--dest", str(cache), *common, *requirements]
    if subprocess.run(download, capture_output=True, text=True).returncode != 0:
        progress("  download failed; trying the wheels already cached in " + str(cache))
    install = [
        *pip,
        "install",
        "--quiet",
        "--no-index",
        "--find-links",
        str(cache),
        "--target",
        str(dest),
        "--no-compile",
        *common,
        *requirements,
    ]
    result = subprocess.run(install, capture_output=True, text=True)
    if result.returncode != 0:
        raise ImageBuildError(
            f"could not get the browser's Python wheels ({', '.join(requirements)}) for "
            f"python {python}: {result.stderr.strip()[-800:]}"
        )


def browser_context(dest: Path, site: Path, base: str, uid: int) -> None:
    stage_app(dest, "browser_container", site)
    (dest / "Dockerfile").write_text(f"""FROM {base}
COPY site /opt/legion/site
COPY app /opt/legion/app
RUN python3 -m compileall -q /opt/legion/app && mkdir -p /profile /run/legion-browser \\
    && test -x /opt/legion/site/playwright/driver/node
ENV PYTHONPATH=/opt/legion/site:/opt/legion/app PYTHONDONTWRITEBYTECODE=1 \\
    PYTHONUNBUFFERED=1 HOME=/tmp/home PLAYWRIGHT_BROWSERS_PATH=/nonexistent \\
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
WORKDIR /tmp
USER {uid}:{uid}
LABEL org.legion.version="{__version__}" org.legion.role="browser" \\
    org.legion.source="{browser_source_digest()}"
ENTRYPOINT ["python3", "-m", "browser_container"]
""")


def build_browser_image(
    *,
    tag: str,
    base: str | None,
    mirror: str | None,
    uid: int,
    cache: Path,
    progress: Progress,
    rebuild_base: bool = False,
) -> dict[str, Any]:
    """Build the browser image; returns {"image", "base", "python", "base_built"}."""
    client = _client()
    base_built = False
    if base:
        if not image_exists(client, base):
            raise ImageBuildError(
                f"browser base image {base} is not here; build it (it needs python3 >= 3.11 "
                "and chromium, xvfb, x11vnc), or leave [browser] base_image empty: legion "
                "then builds one with debootstrap"
            )
    else:
        base = BROWSER_BASE_TAG
        if rebuild_base or not image_exists(client, base) or not _base_is_current(client, base):
            progress(f"{base} missing or outdated: building it with debootstrap (no registry)")
            build_browser_base(client, debian_mirror(mirror), progress, base)
            base_built = True
        else:
            progress(f"using the existing base {base}")
    python = python_version_of(client, base)
    with tempfile.TemporaryDirectory(prefix="legion-browser-image-") as tmp:
        ctx = Path(tmp)
        site = ctx / "site-staging"
        fetch_wheels(python, site, cache, progress, BROWSER_REQUIREMENTS)
        context = ctx / "context"
        context.mkdir()
        browser_context(context, site, base, uid)
        progress(f"docker build {tag} (--network none)")
        for chunk in client.api.build(
            path=str(context), tag=tag, rm=True, forcerm=True, network_mode="none", decode=True
        ):
            if "stream" in chunk and chunk["stream"].strip():
                progress("  " + chunk["stream"].rstrip())
            if "error" in chunk:
                raise ImageBuildError(f"docker build failed: {chunk['error']}")
    return {"image": tag, "base": base, "python": python, "base_built": base_built}
