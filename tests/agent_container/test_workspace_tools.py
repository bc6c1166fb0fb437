"""Workspace tools and the registry, on a temporary workspace (no host needed)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from agent_container.client import HostUnavailable, MeshError, MeshTimeout
from agent_container.registry import Registry, Tool, obj, text
from agent_container.tools_workspace import OUTPUT_CAP, run_command, workspace_tools
from agent_container.workspace import READ_LIMIT, Workspace, WorkspaceError

pytestmark = pytest.mark.anyio


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "secret.txt").write_text("top secret")
    return folder


@pytest.fixture
def ws(tmp_path: Path, outside: Path) -> Workspace:
    workspace = Workspace(tmp_path / "ws")
    (workspace.root / "docs").mkdir()
    (workspace.root / "docs" / "a.md").write_text("hello")
    (workspace.root / "out-dir").symlink_to(outside)
    (workspace.root / "out-file").symlink_to(outside / "secret.txt")
    (workspace.root / "in-link").symlink_to(workspace.root / "docs" / "a.md")
    return workspace


@pytest.fixture
def tools(ws: Workspace) -> Registry:
    registry = Registry()
    for tool in workspace_tools(ws):
        registry.add(tool)
    return registry


ESCAPES = [
    "../outside/secret.txt",
    "docs/../../outside/secret.txt",
    "/etc/passwd",
    "out-dir/secret.txt",  # a symlinked folder leading out
    "out-file",  # a symlink to a file outside
    "",
]


@pytest.mark.parametrize("path", ESCAPES)
def test_reads_never_leave_the_workspace(ws: Workspace, outside: Path, path: str) -> None:
    with pytest.raises(WorkspaceError):
        ws.read(path)
    with pytest.raises(WorkspaceError):
        ws.read(str(outside / "secret.txt"))


@pytest.mark.parametrize("path", ESCAPES)
def test_writes_never_leave_the_workspace(ws: Workspace, outside: Path, path: str) -> None:
    with pytest.raises(WorkspaceError):
        ws.write(path, "pwned")
    with pytest.raises(WorkspaceError):
        ws.write("out-dir/new.txt", "pwned")
    assert (outside / "secret.txt").read_text() == "top secret"
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


def test_paths_inside_work_relative_absolute_and_through_inner_links(ws: Workspace) -> None:
    assert ws.read("docs/a.md") == "hello"
    assert ws.read(str(ws.root / "docs" / "a.md")) == "hello"
    assert ws.read("docs/../docs/./a.md") == "hello"
    assert ws.read("in-link") == "hello"  # a symlink that stays inside is fine
    assert ws.write("new/deep/b.txt", "x") == "wrote 1 bytes to new/deep/b.txt"
    assert ws.write("new/deep/b.txt", "yz", append=True) == "appended 2 bytes to new/deep/b.txt"
    assert (ws.root / "new" / "deep" / "b.txt").read_text() == "xyz"
    with pytest.raises(WorkspaceError, match="is a directory"):
        ws.write("docs", "x")
    with pytest.raises(WorkspaceError, match="no such file"):
        ws.read("docs/missing.md")
    with pytest.raises(WorkspaceError, match="a directory"):
        ws.read("docs")


def test_a_write_replaces_atomically_and_leaves_no_temp_files(ws: Workspace) -> None:
    ws.write("docs/a.md", "new")
    assert ws.read("docs/a.md") == "new"
    assert sorted(os.listdir(ws.root / "docs")) == ["a.md"]


def test_long_files_are_read_in_pieces(ws: Workspace) -> None:
    (ws.root / "big.txt").write_text("x" * (READ_LIMIT + 10))
    first = ws.read("big.txt")
    assert first.startswith("x" * READ_LIMIT)
    assert f"read on with offset={READ_LIMIT}" in first
    assert ws.read("big.txt", offset=READ_LIMIT) == "x" * 10


def test_listing_marks_folders_links_and_sizes(ws: Workspace) -> None:
    assert ws.list() == ["docs/", "out-dir@", "in-link@", "out-file@"]
    assert ws.list(recursive=True)[-1] == "docs/a.md (5 bytes)"
    with pytest.raises(WorkspaceError):
        ws.list("out-dir")


async def test_file_tools_return_errors_as_results(tools: Registry) -> None:
    assert await tools.run("read_file", {"path": "docs/a.md"}) == "hello"
    refused = await tools.run("read_file", {"path": "../outside/secret.txt"})
    assert refused.startswith("error:") and "outside the workspace" in refused
    assert await tools.run("read_file", {}) == "error: read_file needs path"
    assert (await tools.run("read_file", {"path": 3})).startswith("error: read_file: path must")
    assert (await tools.run("write_file", '{"path": "a"')).startswith("error: the arguments")
    assert await tools.run("write_file", "[1]") == (
        "error: the arguments of write_file must be a JSON object"
    )
    assert await tools.run("list_files", None) == "docs/\nout-dir@\nin-link@\nout-file@"
    assert (await tools.run("nope", {})).startswith("error: no tool named 'nope'; available:")


async def test_run_command_runs_in_the_workspace(tools: Registry, ws: Workspace) -> None:
    result = await tools.run("run_command", {"command": "pwd; echo oops >&2; exit 3"})
    assert result == f"exit code 3\n{ws.real_root}\noops\n"


async def test_run_command_timeout_kills_the_process_group(tmp_path: Path) -> None:
    marker = tmp_path / "survived"
    started = time.monotonic()
    result = await run_command(f"(sleep 2; touch {marker}) & sleep 30", str(tmp_path), 0.3)
    assert time.monotonic() - started < 5
    assert result.startswith("error: timed out after 0.3s")
    await asyncio.sleep(2.5)
    assert not marker.exists()  # the background child died with its group


async def test_run_command_output_is_capped(tmp_path: Path) -> None:
    result = await run_command("head -c 200000 /dev/zero | tr '\\0' x", str(tmp_path), 10)
    assert result.endswith(f"[output truncated: showing the first {OUTPUT_CAP} of 200000 bytes]")
    assert len(result) < OUTPUT_CAP + 200


async def test_run_command_does_not_wait_for_background_processes(tmp_path: Path) -> None:
    started = time.monotonic()
    result = await run_command("sleep 20 & echo started", str(tmp_path), 10)
    assert time.monotonic() - started < 5
    assert result.startswith("exit code 0\nstarted\n")
    assert "background process" in result


async def test_a_cancelled_command_is_killed(tmp_path: Path) -> None:
    marker = tmp_path / "survived"
    task = asyncio.create_task(run_command(f"sleep 1; touch {marker}", str(tmp_path), 30))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(1.3)
    assert not marker.exists()


async def test_the_timeout_is_bounded(tools: Registry) -> None:
    result = await tools.run("run_command", {"command": "echo ok", "timeout_s": 10_000})
    assert result == "exit code 0\nok\n"


async def test_failures_of_any_kind_become_results_but_a_lost_host_stops_the_turn() -> None:
    async def boom(args: dict[str, object]) -> str:
        raise {
            "mesh": MeshError(403, "permission_denied", "no"),
            "timeout": MeshTimeout("slow host"),
            "os": FileNotFoundError(2, "No such file or directory", "x.txt"),
            "bug": ZeroDivisionError("division by zero"),
            "gone": HostUnavailable("socket missing"),
        }[str(args["kind"])]

    registry = Registry()
    registry.add(Tool("boom", "fails", obj(["kind"], kind=text("")), boom))
    assert await registry.run("boom", {"kind": "mesh"}) == (
        "error: the host refused: permission_denied (403): no"
    )
    assert await registry.run("boom", {"kind": "timeout"}) == "error: boom timed out: slow host"
    assert await registry.run("boom", {"kind": "os"}) == "error: No such file or directory: x.txt"
    assert (await registry.run("boom", {"kind": "bug"})).startswith(
        "error: boom failed unexpectedly: ZeroDivisionError"
    )
    with pytest.raises(HostUnavailable):
        await registry.run("boom", {"kind": "gone"})


async def test_long_results_are_capped() -> None:
    async def big(args: dict[str, object]) -> str:
        return "y" * (OUTPUT_CAP * 2)

    registry = Registry()
    registry.add(Tool("big", "big", obj(), big))
    result = await registry.run("big", {})
    assert result.endswith("[result truncated at 65536 characters]")
