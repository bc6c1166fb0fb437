"""The no-follow primitives of `legion.fsutil` (issue 7, item 1): what the host uses for
any file it opens, creates or reads in a folder an agent can write."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from legion.fsutil import (
    UnsafeEntry,
    check_owner,
    ensure_dir_nofollow,
    open_dir_nofollow,
    open_path_nofollow,
    read_regular_file_nofollow,
    remove_tree_nofollow,
)


@pytest.fixture
def root(home: Path) -> Iterator[int]:
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def test_read_regular_file(home: Path, root: int) -> None:
    (home / "SOUL.md").write_text("be kind")
    assert read_regular_file_nofollow(root, "SOUL.md", 100) == b"be kind"
    with pytest.raises(FileNotFoundError):
        read_regular_file_nofollow(root, "missing.md", 100)


def test_read_refuses_links_fifos_dirs_and_large_files(home: Path, root: int) -> None:
    """issue 7: none of these is opened through; the FIFO cannot stall the host."""
    secret = home / "secret"
    secret.write_text("host secret")
    os.symlink(secret, home / "link.md")
    os.mkfifo(home / "fifo.md")
    (home / "dir.md").mkdir()
    (home / "big.md").write_bytes(b"x" * 101)
    done = threading.Event()

    def attempt() -> None:
        for name, found in (
            ("link.md", "a symbolic link"),
            ("fifo.md", "a FIFO"),
            ("dir.md", "a directory"),
            ("big.md", "101 bytes"),
        ):
            with pytest.raises(UnsafeEntry, match=found):
                read_regular_file_nofollow(root, name, 100)
        done.set()

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(10)
    assert done.is_set(), "reading a FIFO blocked"
    with pytest.raises(ValueError):
        read_regular_file_nofollow(root, "../etc/passwd", 100)


def test_open_dir_refuses_links_even_to_directories(home: Path, root: int) -> None:
    (home / "real").mkdir()
    os.symlink(home / "real", home / "link")
    os.close(open_dir_nofollow(root, "real"))
    with pytest.raises(UnsafeEntry, match="a symbolic link, not a directory"):
        open_dir_nofollow(root, "link")
    with pytest.raises(FileNotFoundError):
        open_dir_nofollow(root, "nothing")


def test_ensure_dir_never_creates_through_a_dangling_link(home: Path, root: int) -> None:
    os.symlink(home / "elsewhere", home / "ws")
    with pytest.raises(UnsafeEntry, match="a symbolic link"):
        ensure_dir_nofollow(root, "ws", 0o700)
    assert not (home / "elsewhere").exists()
    fd = ensure_dir_nofollow(root, "fresh", 0o700)
    os.close(fd)
    assert (home / "fresh").is_dir()


def test_open_path_refuses_a_link_at_any_level(home: Path, root: int) -> None:
    (home / "a" / "b" / "c").mkdir(parents=True)
    os.close(open_path_nofollow(root, "a/b/c"))
    (home / "target").mkdir()
    (home / "a" / "b" / "c").rmdir()
    os.symlink(home / "target", home / "a" / "b" / "c")
    with pytest.raises(UnsafeEntry, match="a/b/c is a symbolic link"):
        open_path_nofollow(root, "a/b/c")
    for bad in ("/etc", "a/../b", "a//b", "."):
        with pytest.raises(ValueError):
            open_path_nofollow(root, bad)


def test_check_owner(home: Path, root: int) -> None:
    assert check_owner(root, {os.geteuid()}, shown=str(home)).st_uid == os.geteuid()
    with pytest.raises(UnsafeEntry, match="owned by uid"):
        check_owner(root, {os.geteuid() + 4242}, shown=str(home))


DEEP_REMOVE = r"""
import os, resource, sys
from legion.fsutil import remove_tree_nofollow
resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))  # far fewer than the levels
root = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
remove_tree_nofollow(root, "vol")
print("ok")
"""


def test_remove_tree_of_any_depth_with_few_descriptors_never_follows(home: Path) -> None:
    """issue 7: an agent can nest folders thousands deep (the recursive shutil.rmtree then
    dies of RecursionError, and each level holds a descriptor); links at every level are
    unlinked, their targets untouched."""
    import subprocess
    import sys

    target = home / "target"
    target.mkdir()
    (target / "keep").write_text("keep")
    vol = home / "vol"
    vol.mkdir()
    fd = os.open(vol, os.O_RDONLY | os.O_DIRECTORY)
    for level in range(3000):
        if level % 500 == 0:
            os.symlink(target, "link", dir_fd=fd)
            os.mkfifo("fifo", dir_fd=fd)
        os.mkdir("d", dir_fd=fd)
        (Path(f"/proc/self/fd/{fd}") / "file").write_text("x")
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(fd)
    run = subprocess.run(
        [sys.executable, "-c", DEEP_REMOVE, str(home)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]
    assert not vol.exists()
    assert (target / "keep").read_text() == "keep"


def test_remove_tree_refuses_a_link_at_the_top(home: Path, root: int) -> None:
    (home / "target").mkdir()
    (home / "target" / "keep").write_text("keep")
    os.symlink(home / "target", home / "vol")
    with pytest.raises(UnsafeEntry, match="a symbolic link"):
        remove_tree_nofollow(root, "vol")
    assert (home / "target" / "keep").exists()
