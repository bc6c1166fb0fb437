"""issue 8: the README's quick start runs top to bottom on a fresh home without an error.

The commands are parsed from README.md (the `## Quick start` section's `sh` blocks), so the
test follows the README as it is written. `make run` starts the host (the test runs it with
`-o .venv/.installed-stamp`: the venv is installed already, and a reinstall would reach a
package index); `make test` is the suite itself and is not run from inside it. Then each
line of the command block runs in order against the fresh LEGION_HOME, and must exit 0:

* a line whose comment says "needs Docker" runs only in the docker variant; the other
  variant hides the engine from the host (DOCKER_HOST points nowhere) and skips it;
* `legion vault set` reads the provider key from stdin, as a script would give it;
* a line whose comment says "Ctrl-C" (`legion events`) is interrupted once it says it is
  connected;
* `legion` alone (the TUI) runs in tmux, attached to the daemon, and quits with Ctrl+Q.

The fake provider stands in for the cloud: after `make run` wrote the example config, the
test points the example's OpenAI models at it (`api_base`) and, with Docker, names the agent
image (with the example's `[images] mcp_packages`) and the browser image built for this
source (`[runtime] image`, `[browser] image`: `legion images build` then finds them
current), then reloads. The whole run is written as
a transcript (`README transcript` in the test output).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomlkit

from legion.paths import Paths
from tests.fakes.provider import FakeProvider
from tests.tui.test_terminal import Terminal

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
VENV_BIN = REPO / ".venv" / "bin"
PROVIDER_KEY = "sk-readme-test-4hQ9zLw2Xc7Vb3Nm"


@dataclass
class Step:
    line: str
    argv: list[str]
    comment: str

    @property
    def needs_docker(self) -> bool:
        return "needs docker" in self.comment.lower()


def quick_start() -> tuple[list[Step], list[Step]]:
    """The `sh` blocks of the README's quick start: (the make block, the command block)."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 2, "the quick start has a make block and a command block"
    parsed = []
    for block in blocks:
        steps = []
        for line in block.splitlines():
            if not line.strip():
                continue
            parts = re.split(r"\s{2,}#\s", line, maxsplit=1)
            command = parts[0]
            comment = parts[1] if len(parts) > 1 else ""
            steps.append(Step(line, shlex.split(command), comment))
        parsed.append(steps)
    return parsed[0], parsed[1]


def test_the_quick_start_parses() -> None:
    make, commands = quick_start()
    assert [s.argv for s in make] == [["make", "run"], ["make", "test"]]
    assert commands[0].argv == [".", ".venv/bin/activate"]
    assert commands[-1].argv == ["legion", "stop"]
    names = [" ".join(s.argv[:3]) for s in commands]
    for expected in ("legion vault set", "legion agents add", "legion chat scout", "legion"):
        assert any(n.startswith(expected) for n in names), expected
    assert {s.argv[1] for s in commands if s.needs_docker} >= {"images", "chat"}


class Run:
    """The quick start against one fresh home, with a transcript."""

    def __init__(self, home: Path, docker: bool) -> None:
        self.home = home
        self.paths = Paths.resolve(home)
        self.docker = docker
        self.transcript: list[str] = []
        self.env = {
            **os.environ,
            "LEGION_HOME": str(home),
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "COLUMNS": "120",
        }
        if not docker:
            self.env["DOCKER_HOST"] = f"unix://{home}/no-docker-here.sock"
        self.make: subprocess.Popen[str] | None = None

    def note(self, text: str) -> None:
        self.transcript.append(text)

    def record(self, line: str, proc: subprocess.CompletedProcess[str]) -> None:
        self.note(f"$ {line}")
        for out in (proc.stdout, proc.stderr):
            if out.strip():
                self.note(out.rstrip("\n"))
        self.note(f"[exit {proc.returncode}]")

    def start_make(self) -> None:
        self.note("$ make run    # as `make -o .venv/.installed-stamp run`: the venv is installed")
        self.make = subprocess.Popen(
            ["make", "--no-print-directory", "-o", ".venv/.installed-stamp", "run"],
            cwd=REPO,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 60
        while not self.paths.control_socket.exists():
            if self.make.poll() is not None:
                raise AssertionError(f"make run exited {self.make.returncode}: {self.output()}")
            assert time.monotonic() < deadline, "make run never started the host"
            time.sleep(0.05)
        status = self.legion("status", "--json")
        assert status.returncode == 0, status.stderr

    def output(self) -> str:
        assert self.make is not None and self.make.stdout is not None
        return self.make.stdout.read()

    def legion(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(VENV_BIN / "legion"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
            input=stdin,
        )

    def stand_in(self, fake_url: str, image: str | None, browser: str | None) -> None:
        """The test's own edit: the example's OpenAI models go to the fake provider."""
        doc = tomlkit.parse(self.paths.config.read_text(encoding="utf-8"))
        models = doc["llm"]["models"]  # type: ignore[index]
        for alias in ("gpt-4o-mini", "embed-small"):
            models[alias]["api_base"] = fake_url  # type: ignore[index]
        if image is not None:
            doc["runtime"]["image"] = image  # type: ignore[index]
        if browser is not None:
            doc["browser"]["image"] = browser  # type: ignore[index]
        self.paths.config.write_text(tomlkit.dumps(doc), encoding="utf-8")
        reload = self.legion("config", "reload")
        assert reload.returncode == 0, reload.stderr
        self.note(
            "# (test) the example's gpt-4o-mini and embed-small now call the fake provider"
            + (f"; [runtime] image = {image}" if image else "")
            + (f"; [browser] image = {browser}" if browser else "")
        )

    def step(self, step: Step) -> None:
        argv = step.argv
        if argv[:1] == ["."]:
            self.note(f"$ {step.line}\n# (test) .venv/bin is first on PATH")
            return
        assert argv[0] == "legion", step.line
        argv = [str(VENV_BIN / "legion"), *argv[1:]]
        if len(argv) == 1:
            self.tui(step)
        elif "ctrl-c" in step.comment.lower():
            self.interrupted(step, argv)
        else:
            stdin = PROVIDER_KEY + "\n" if step.argv[1:3] == ["vault", "set"] else None
            proc = subprocess.run(
                argv, env=self.env, capture_output=True, text=True, timeout=600, input=stdin
            )
            self.record(step.line, proc)
            assert proc.returncode == 0, "\n".join(self.transcript)

    def interrupted(self, step: Step, argv: list[str]) -> None:
        proc = subprocess.Popen(
            argv, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert "connected" in first, first
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        self.record(
            step.line + "    # (test) Ctrl-C once connected",
            subprocess.CompletedProcess(argv, proc.returncode, out, first + err),
        )
        assert proc.returncode == 0, "\n".join(self.transcript)

    def tui(self, step: Step) -> None:
        socket = Path("/tmp") / f"lg-readme-tmux-{os.getpid()}-{time.monotonic_ns()}"
        term = Terminal(socket)
        home = shlex.quote(str(self.home))
        command = (
            f"env -u COLUMNS -u LINES TERM=screen-256color LEGION_HOME={home}"
            f" {shlex.quote(str(VENV_BIN / 'legion'))}; echo LEGION-EXIT=$?; sleep 600"
        )
        try:
            term.start(command)
            screen = term.wait_for("attached to daemon pid", timeout_s=60)
            term.keys("C-q")
            term.wait_for("LEGION-EXIT=0", timeout_s=30)
        finally:
            subprocess.run(
                [shutil.which("tmux") or "tmux", "-S", str(socket), "kill-server"],
                capture_output=True,
            )
            socket.unlink(missing_ok=True)
        header = next(line for line in screen.splitlines() if "attached to daemon" in line)
        self.note(f"$ {step.line}\n# (test) in tmux; Ctrl+Q\n{header.strip()}\n[exit 0]")

    def finish(self) -> None:
        assert self.make is not None
        code = self.make.wait(60)
        self.note("# make run (the host's log, as `make run` printed it):")
        self.note(self.output().rstrip("\n"))
        self.note(f"[make run exit {code}]")
        assert code == 0, "\n".join(self.transcript)

    def kill(self) -> None:
        if self.make is None:
            return
        if self.make.poll() is None:
            self.make.send_signal(signal.SIGTERM)
            try:
                self.make.wait(20)
            except subprocess.TimeoutExpired:
                self.make.kill()
                self.make.wait(10)
        if self.make.stdout is not None:
            self.make.stdout.close()


@pytest.fixture(scope="session")
def example_agent_image() -> str:
    """The agent image the example config asks for: this source with its `[images]
    mcp_packages`, built once (a tag named after both, as `legion images build` would
    label it), so the README's `legion images build` finds it current."""
    import sys
    import tempfile

    import docker

    from legion.config import parse_config
    from legion.fleet.images import build_agent_image, image_exists, source_digest

    example = parse_config((REPO / "config.example.toml").read_text(encoding="utf-8"))
    packages = list(example.images.mcp_packages)
    tag = f"legion-agent:mcp-{source_digest(packages)}"
    client = docker.from_env()
    try:
        if image_exists(client, tag):
            return tag
    finally:
        client.close()
    build_agent_image(
        tag=tag,
        base=None,
        mirror=None,
        uid=example.runtime.agent_uid,
        cache=Path(tempfile.gettempdir()) / "legion-test-wheels",
        progress=lambda line: print(line, file=sys.stderr),
        mcp_packages=packages,
    )
    return tag


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider(chunk_chars=4) as provider:
        yield provider


def _run(home: Path, fake: FakeProvider, image: str | None, browser: str | None = None) -> None:
    make, commands = quick_start()
    run = Run(home / "legion-home", docker=image is not None)
    try:
        assert make[0].argv == ["make", "run"]
        run.start_make()
        run.stand_in(fake.base_url, image, browser)
        run.note("$ make test    # (test) not run: it is this suite")
        for step in commands:
            if step.needs_docker and image is None:
                run.note(
                    f"$ {step.line}\n# (test) skipped: needs Docker (the docker variant runs it)"
                )
                continue
            run.step(step)
        run.finish()
    finally:
        run.kill()
        print("\n--- README transcript ---\n" + "\n".join(run.transcript))
    if image is not None:
        assert any(r.path.endswith("/chat/completions") for r in fake.requests)


def test_the_quick_start_runs_top_to_bottom_without_docker(home: Path, fake: FakeProvider) -> None:
    """issue 8: every line that does not need Docker, against a fresh home, exits 0."""
    _run(home, fake, None)


@pytest.mark.docker
def test_the_quick_start_runs_top_to_bottom(
    home: Path, fake: FakeProvider, example_agent_image: str, browser_image: str
) -> None:
    """issue 8: every line, with real containers, against a fresh home, exits 0."""
    _run(home, fake, example_agent_image, browser_image)
