"""The operator's TUI: display lag while 16 agents stream, keypress to paint, first frame.

* Streaming: a host (a child process, as `legion daemon` would be) publishes a token event
  for each of 16 agents 50 times a second (800 tokens/s); the TUI, attached over the control
  socket and running in a real pseudo-terminal at 200x60 with all 16 panes open, paints them.
  Display lag = the wall time a frame with the token is written to the terminal minus the
  time the host emitted the token (the token's text carries it). A token counts as painted in
  the first frame written after its pane's live reply took it in. Target: p99 <= 100 ms.
  Also printed: the same lag read on the terminal (when the bench, on the pty's other side,
  first reads the token's text), where the lag goes (the socket and parsing, waiting for a
  batch, waiting in the pane, the frame), frames per second, the cost of a frame and the
  TUI's CPU per token. The stream starts once the screen has settled after the panes opened;
  the samples are written once, when it ends (encoding them every second stalled the loop
  being measured). `BENCH_TUI_SLOW=1` lists what held the TUI's loop (steps over 8 ms,
  garbage collections, layouts); `BENCH_TUI_PROFILE=file` profiles the steady state.
* Keypress to paint, while that stream runs: a key typed into the focused pane's input, from
  the moment the terminal driver reads it to the first frame written after the input shows
  it. Target: p99 <= 50 ms.
* First frame: `legion` launched in a pseudo-terminal until its first frame (the header) is
  on the terminal, attached to a running host and embedding one, against `python3 -c pass`
  in the same run. Target: <= 1.0 s.
* Other commands: `legion --help` and `legion status` start as before the TUI arrived: the
  time of each, and whether textual was imported (it must not be).

All traffic is on Unix sockets and a local pty; every loop is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import os
import pty
import re
import select
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._common import Report, heading, line, percentile, run_alone, short_home

AGENTS = 16
RATE = 50.0  # tokens per second per agent
LAG_TARGET_MS = 100.0
KEY_TARGET_MS = 50.0
FIRST_FRAME_TARGET_S = 1.0
SIZE = (200, 60)
PARAGRAPH = 60  # tokens per paragraph of the streamed text (a model's prose has paragraphs)


def config_text(agents: int) -> str:
    sections = "\n".join(f'[agents.a{i:02d}]\nrole = "bench"\n' for i in range(agents))
    return f'[runtime]\nbackend = "none"\n\n{sections}'


# --- the host: emits the tokens ---------------------------------------------------------------


def host_main(home: str, agents: int, rate: float, seconds: float) -> None:
    """`python -m bench.tui --host`: a host that streams tokens once the TUI subscribes."""

    async def main() -> None:
        from legion.config import parse_config
        from legion.host import Host
        from legion.paths import Paths
        from legion.wire.events import TokenDelta

        paths = Paths.resolve(home)
        async with Host.running(parse_config(config_text(agents)), paths) as host:
            print("ready", flush=True)
            while host.blackboard.get("bench/start") is None:  # the TUI opened its panes
                await asyncio.sleep(0.05)
            names = [f"a{i:02d}" for i in range(agents)]
            interval = 1.0 / rate
            start = time.monotonic()
            tick = 0
            while time.monotonic() - start < seconds:
                tick += 1
                # prose-like: a word per token, a paragraph every PARAGRAPH tokens
                end = "\n\n" if tick % PARAGRAPH == 0 else " "
                for name in names:
                    stamp = int(time.time() * 1e6)
                    host.bus.publish(
                        TokenDelta(
                            at=time.time(), agent=name, request_id="r", text=f"t{stamp}{end}"
                        )
                    )
                delay = start + tick * interval - time.monotonic()
                await asyncio.sleep(max(0.0, delay))
            print("done", flush=True)
            await host.wait_stopped()

    asyncio.run(main())


# --- the TUI, instrumented -----------------------------------------------------------------------


def probe_main(home: str, out: str, agents: int, keys: int) -> None:
    """`python -m bench.tui --probe`: the TUI with timing hooks; writes its samples to `out`."""
    from tui.launch import textual_settings

    textual_settings()  # as `legion` sets them, before Textual is imported
    from textual import events
    from textual.app import App
    from textual.driver import Driver
    from textual.screen import Screen
    from textual.widgets import Input

    from legion.api.hostclient import open_host
    from legion.paths import Paths
    from tui.app import LegionApp
    from tui.widgets.agent_pane import AgentPane
    from tui.widgets.live_reply import LiveReply
    from tui.widgets.markdown_live import MarkdownLive
    from tui.widgets.pane_input import PaneInput

    token_lag_ms: list[float] = []
    key_ms: list[float] = []
    key_arrivals: list[float] = []  # perf_counter when the driver read each key
    typed: list[int] = [0]  # characters the focused input shows
    painted_keys: list[int] = [0]
    key_shown: list[float] = []  # perf_counter when the input took each key
    key_stages: dict[str, list[float]] = {"to input": [], "to frame": []}
    in_document: list[tuple[int, float]] = []  # (token stamp in µs, wall time taken in), not
    # painted yet
    # where each token's lag went: stamp -> wall time it was parsed, handed to the app
    received: dict[int, float] = {}
    handed: dict[int, float] = {}
    stages: dict[str, list[float]] = {"transit": [], "batch": [], "pane": [], "frame": []}
    frames: list[tuple[float, float, int]] = []  # (perf_counter, ms to paint, tokens painted)
    painting: list[float] = []  # perf_counter when the screen's update began
    backlog_max = [0]
    cpu_start: list[float] = []  # process time and wall time when the stream started, then
    # (once it is over) the share of a core the TUI used meanwhile

    def streaming_now() -> bool:
        return len(cpu_start) == 2

    display = App._display

    def timed_display(self: App[Any], screen: Any, renderable: Any) -> None:
        began = time.perf_counter()
        display(self, screen, renderable)
        if renderable is None:
            return
        now_wall, now = time.time(), time.perf_counter()
        if streaming_now():
            start = painting[0] if painting else began
            frames.append((start, (now - start) * 1e3, len(in_document)))
        for stamp, took in in_document:
            token_lag_ms.append((now_wall - stamp / 1e6) * 1e3)
            stages["frame"].append((now_wall - took) * 1e3)
        in_document.clear()
        while painted_keys[0] < typed[0] and painted_keys[0] < len(key_arrivals):
            index = painted_keys[0]
            key_ms.append((now - key_arrivals[index]) * 1e3)
            if index < len(key_shown):
                key_stages["to input"].append((key_shown[index] - key_arrivals[index]) * 1e3)
                key_stages["to frame"].append((now - key_shown[index]) * 1e3)
            painted_keys[0] += 1

    App._display = timed_display  # type: ignore[method-assign]

    update = Screen._on_timer_update

    def timed_update(self: Screen[Any]) -> None:
        painting[:] = [time.perf_counter()]
        try:
            update(self)
        finally:
            painting.clear()

    Screen._on_timer_update = timed_update  # type: ignore[method-assign]

    process = Driver.process_message

    def timed_process(self: Driver, message: Any) -> None:
        if isinstance(message, events.Key) and message.character == "x":
            key_arrivals.append(time.perf_counter())
        process(self, message)

    Driver.process_message = timed_process  # type: ignore[method-assign]

    def stamps_of(text: str) -> list[int]:
        return [int(w[1:]) for w in text.split() if w.startswith("t") and w[1:].isdigit()]

    import legion.api.hostclient as hostclient

    parse = hostclient.parse_event

    def timed_parse(data: bytes | str) -> Any:
        event = parse(data)
        if getattr(event, "type", "") == "token_delta":
            for stamp in stamps_of(event.text):
                received[stamp] = time.time()
        return event

    hostclient.parse_event = timed_parse  # type: ignore[attr-defined]

    apply_events = LegionApp._apply_events

    async def timed_apply(self: LegionApp, events: list[Any]) -> None:
        now = time.time()
        for event in events:
            if getattr(event, "type", "") == "token_delta":
                for stamp in stamps_of(event.text):
                    handed[stamp] = now
        await apply_events(self, events)

    LegionApp._apply_events = timed_apply  # type: ignore[method-assign]

    def took_in(text: str) -> None:
        now = time.time()
        for stamp in stamps_of(text):
            got, gave = received.pop(stamp, None), handed.pop(stamp, None)
            if got is not None and gave is not None:
                stages["transit"].append((got - stamp / 1e6) * 1e3)
                stages["batch"].append((gave - got) * 1e3)
                stages["pane"].append((now - gave) * 1e3)
            in_document.append((stamp, now))

    # the live replies: plain text in the panes streaming, Markdown in the focused one
    append = LiveReply.append

    def timed_append(self: LiveReply, text: str) -> None:
        append(self, text)
        took_in(text)

    LiveReply.append = timed_append  # type: ignore[method-assign]
    markdown_append = MarkdownLive.append

    def timed_markdown_append(self: MarkdownLive, text: str) -> None:
        markdown_append(self, text)
        took_in(text)

    MarkdownLive.append = timed_markdown_append  # type: ignore[method-assign]

    flush = AgentPane.flush

    def timed_flush(self: AgentPane) -> None:
        backlog_max[0] = max(backlog_max[0], len(self._pending))
        flush(self)

    AgentPane.flush = timed_flush  # type: ignore[method-assign]

    on_changed = PaneInput._watch_value

    def timed_changed(self: Input, value: str) -> None:
        on_changed(self, value)
        count = value.count("x")
        while len(key_shown) < count:
            key_shown.append(time.perf_counter())
        typed[0] = max(typed[0], count)

    PaneInput._watch_value = timed_changed  # type: ignore[method-assign]

    paths = Paths.resolve(home)
    profiler = None
    if os.environ.get("BENCH_TUI_PROFILE"):
        import cProfile

        profiler = cProfile.Profile()

    slow: list[tuple[float, float, str]] = []  # (perf_counter, ms, what), BENCH_TUI_SLOW=1
    if os.environ.get("BENCH_TUI_SLOW"):
        watch_loop(slow, streaming_now)

    class ProbeApp(LegionApp):
        CSS_PATH = str(Path(sys.modules[LegionApp.__module__].__file__ or "").parent / "app.tcss")

        def on_ready(self) -> None:
            self.run_worker(driver(), exit_on_error=False)

    app = ProbeApp(lambda: open_host(paths), home=home, refresh_s=2.0, tune_collector=True)

    async def driver() -> None:
        async with asyncio.timeout(60):
            while not (app.loaded.is_set() and app.subscribed.is_set()):
                await asyncio.sleep(0.05)
        for name in sorted(app.state.agents):
            await app.fleet.open_agent(name)
        panes = list(app.fleet.query(AgentPane))
        panes[0].focus_input()
        # The stream starts once the screen has settled (the panes laid out, the footer
        # rebuilt for the new focus): an operator opens panes before the agents reply.
        for _ in range(3):
            painted = asyncio.Event()
            app.screen.call_after_refresh(painted.set)
            await painted.wait()
        assert app.client is not None
        await app.client.bb_put("bench/start", True)  # the host starts streaming
        Path(out + ".ready").write_text(str(len(panes)))  # the parent starts typing
        cpu_start[:] = [time.process_time(), time.monotonic()]
        if profiler is not None:  # the steady state only: not the start-up and the panes' mount
            profiler.enable()
        # The samples are written once, when the bench says the stream is over (and again on
        # quitting): writing them while it runs would stall the loop being measured (tens of
        # thousands of samples to encode every second cost the TUI up to 70 ms a time).
        stop = Path(out + ".stop")
        while not stop.exists():
            await asyncio.sleep(0.25)
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(os.environ["BENCH_TUI_PROFILE"])
        dump()

    def dump() -> None:
        if streaming_now():  # the stream's share of a core, fixed when it ended
            cpu_start.append(
                (time.process_time() - cpu_start[0]) / max(1e-9, time.monotonic() - cpu_start[1])
            )
        Path(out + ".tmp").write_text(
            json.dumps(
                {
                    "token_lag_ms": token_lag_ms,
                    "key_ms": key_ms,
                    "keys_sent": len(key_arrivals),
                    "key_stages": key_stages,
                    "backlog_max": backlog_max[0],
                    "stages": stages,
                    "frames": frames,
                    "slow": slow,
                    "objects": len(gc.get_objects()),
                    "frozen": gc.get_freeze_count(),
                    "gc": gc.get_stats(),
                    "cpu_share": cpu_start[2] if cpu_start else None,
                }
            )
        )
        os.replace(out + ".tmp", out)  # whole, or not there

    asyncio.run(app.run_async())
    dump()


def watch_loop(slow: list[tuple[float, float, str]], armed: Callable[[], bool]) -> None:
    """`BENCH_TUI_SLOW=1`: note, while `armed()`, what holds the TUI's loop: each step of the
    loop over 8 ms (by task), each garbage collection over 2 ms (by generation), each layout
    of the screen and who asked for it."""
    import traceback

    from textual.screen import Screen
    from textual.widget import Widget

    handle_run = asyncio.events.Handle._run

    def timed_run(self: asyncio.events.Handle) -> None:
        began = time.perf_counter()
        handle_run(self)
        took = time.perf_counter() - began
        if took > 0.008 and armed():
            task = getattr(self._callback, "__self__", None)
            if isinstance(task, asyncio.Task):
                coro = task.get_coro()
                what = f"task {getattr(coro, '__qualname__', coro)} {task.get_name()}"
            else:
                what = repr(self)[:160]
            slow.append((began, took * 1e3, what))

    asyncio.events.Handle._run = timed_run  # type: ignore[method-assign]
    gc_began: list[float] = []

    def gc_timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_began[:] = [time.perf_counter()]
        elif gc_began and armed():
            took = time.perf_counter() - gc_began[0]
            if took > 0.002:
                slow.append((gc_began[0], took * 1e3, f"gc generation {info['generation']}"))

    gc.callbacks.append(gc_timed)
    widget_refresh = Widget.refresh

    def traced_refresh(self: Widget, *regions: Any, **kwargs: Any) -> Any:
        if armed() and (kwargs.get("layout") or kwargs.get("recompose")):
            callers = traceback.extract_stack(limit=6)[:-1][::-1]
            where = " < ".join(frame.name for frame in callers)
            slow.append((time.perf_counter(), 0.0, f"asks for a layout: {type(self).__name__} "
                         f"({where})"))  # fmt: skip
        return widget_refresh(self, *regions, **kwargs)

    Widget.refresh = traced_refresh  # type: ignore[method-assign]
    refresh_layout = Screen._refresh_layout

    def timed_layout(self: Screen[Any], *args: Any, **kwargs: Any) -> None:
        began = time.perf_counter()
        refresh_layout(self, *args, **kwargs)
        if armed():
            slow.append((began, (time.perf_counter() - began) * 1e3, "screen layout"))

    Screen._refresh_layout = timed_layout  # type: ignore[method-assign]


def breakdown(result: dict[str, Any], on_terminal: list[float]) -> None:
    """Print where the lag goes: the terminal's view, the stages, the frames, the keys."""
    if on_terminal:
        line(f"display lag read on the terminal (the bench's side of the pty): p50 "
             f"{percentile(on_terminal, 50):.1f} ms  p99 {percentile(on_terminal, 99):.1f} ms  "
             f"(n={len(on_terminal)})")  # fmt: skip
    names = {
        "transit": "host to TUI (socket, parse)",
        "batch": "waiting for its batch",
        "pane": "batch to its pane's reply",
        "frame": "reply to frame written",
    }
    line("where the lag goes (p50 / p99 ms): " + "; ".join(
        f"{names[k]} {percentile(v, 50):.1f} / {percentile(v, 99):.1f}"
        for k, v in result["stages"].items()
    ))  # fmt: skip
    frames = result["frames"]
    first = next((i for i, f in enumerate(frames) if f[2]), len(frames))
    frames = frames[first:]  # from the first frame with a token: the stream's frames
    if len(frames) > 1:
        span = frames[-1][0] - frames[0][0]
        paint = [f[1] for f in frames]
        gaps = [(b[0] - a[0]) * 1e3 for a, b in itertools.pairwise(frames)]
        per_frame = [f[2] for f in frames if f[2]]
        line(f"frames: {len(frames) / max(span, 1e-9):.1f}/s; painting one p50 "
             f"{percentile(paint, 50):.1f} ms p99 {percentile(paint, 99):.1f} ms; gap between "
             f"frames p99 {percentile(gaps, 99):.1f} ms max {max(gaps):.1f} ms; tokens per "
             f"frame with tokens p50 {percentile(per_frame, 50):.0f}; the TUI's CPU per token "
             f"{result['cpu_share'] / (AGENTS * RATE) * 1e6:.0f} µs")  # fmt: skip
    if result["slow"]:
        kinds: dict[str, list[float]] = {}
        for _, ms, what in result["slow"]:
            kinds.setdefault(re.sub(r"0x[0-9a-f]+|\d{3,}", "#", what), []).append(ms)
        line("what held the TUI's loop (steps over 8 ms, collections over 2 ms, layouts):")
        for what, spent in sorted(kinds.items(), key=lambda kv: (-sum(kv[1]), -len(kv[1])))[:16]:
            if what.startswith("asks for a layout"):
                line(f"  {len(spent)} x {what}")
            else:
                line(f"  {len(spent)} x, max {max(spent):.0f} ms, {sum(spent):.0f} ms in all: "
                     f"{what}")  # fmt: skip
    stages = result["key_stages"]
    if stages["to input"]:
        line(f"where a key's wait goes (p50 / p99 ms): driver to the input "
             f"{percentile(stages['to input'], 50):.1f} / {percentile(stages['to input'], 99):.1f}"
             f"; input to frame written {percentile(stages['to frame'], 50):.1f} / "
             f"{percentile(stages['to frame'], 99):.1f}")  # fmt: skip


# --- running things in a pseudo-terminal ----------------------------------------------------------


class Pty:
    """A child process on a pseudo-terminal of `size`; the parent drains and writes it."""

    def __init__(self, argv: list[str], size: tuple[int, int], env: dict[str, str]) -> None:
        import fcntl
        import struct
        import termios

        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", size[1], size[0], 0, 0))
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
        )
        os.close(slave)
        self.seen = b""
        self.tokens: dict[int, float] = {}  # token stamp (µs) -> wall time first on the terminal
        self._tail = b""

    def read(self, timeout: float) -> bytes:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return b""
        try:
            data = os.read(self.master, 65536)
        except OSError:
            return b""
        now = time.time()
        self.seen = (self.seen + data)[-200_000:]
        scan = self._tail + data
        for found in STAMP.finditer(scan):
            self.tokens.setdefault(int(found.group(1)), now)
        self._tail = scan[-24:]
        return data

    def wait_for(self, needle: bytes, timeout: float) -> float | None:
        """perf_counter when `needle` appeared, or None."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            self.read(0.02)
            if needle in self.seen:
                return time.perf_counter()
        return None

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        os.close(self.master)


STAMP = re.compile(rb"t(\d{16})(?=\D)")  # a token as the host wrote it, whole on the terminal


def tui_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
    env["TERM"] = "xterm-256color"
    return env


# --- the measurements --------------------------------------------------------------------------


def streaming(report: Report, quick: bool) -> None:
    seconds = 8.0 if quick else 20.0
    keys = 40 if quick else 120
    heading(f"tui: {AGENTS} agents x {RATE:.0f} tokens/s into 16 panes at {SIZE[0]}x{SIZE[1]}")
    with short_home("lgt-") as home:
        (home / "legion.toml").write_text(config_text(AGENTS))
        host = subprocess.Popen(
            [sys.executable, "-m", "bench.tui", "--host", str(home), str(AGENTS), str(RATE),
             str(seconds)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert host.stdout is not None
        assert host.stdout.readline().strip() == "ready"
        out = home / "probe.json"
        probe = Pty(
            [sys.executable, "-m", "bench.tui", "--probe", str(home), str(out), str(AGENTS),
             str(keys)],
            SIZE, tui_env(),
        )  # fmt: skip
        try:
            ready = Path(str(out) + ".ready")
            deadline = time.monotonic() + 90
            while not ready.exists() and time.monotonic() < deadline:
                probe.read(0.05)
            assert ready.exists() and ready.read_text() == str(AGENTS), probe.seen[-2000:]
            # type while the host streams: one key every 100 ms (by the clock: a read returns
            # as soon as the TUI writes a frame, so it cannot pace the keys)
            settle = time.monotonic() + 4.0
            while time.monotonic() < settle:
                probe.read(0.05)
            next_key = time.monotonic()
            for _ in range(keys):
                probe.write(b"x")
                next_key += 0.1
                while (left := next_key - time.monotonic()) > 0:
                    probe.read(left)
            while host.poll() is None and not _done(host):
                probe.read(0.1)
            Path(str(out) + ".stop").touch()  # the TUI writes its samples
            deadline = time.monotonic() + 20
            while not out.exists() and time.monotonic() < deadline:
                probe.read(0.1)
            probe.write(b"\x11")  # ctrl+q
            deadline = time.monotonic() + 20
            while probe.proc.poll() is None and time.monotonic() < deadline:
                probe.read(0.1)
            if probe.proc.poll() is None:
                line("the TUI did not quit; its last output: " + repr(probe.seen[-600:]))
        finally:
            probe.close()
            host.send_signal(signal.SIGTERM)
            host.wait(20)
        result = json.loads(out.read_text())
        if os.environ.get("BENCH_TUI_KEEP"):  # the samples, for a closer look
            Path(os.environ["BENCH_TUI_KEEP"]).write_text(out.read_text())
    lags, key_ms = result["token_lag_ms"], result["key_ms"]
    if not lags:
        report.check("display lag", False, "no token was painted")
        return
    if not key_ms:
        key_ms = [float("inf")]  # no key was painted before the TUI was stopped
    expected = int(AGENTS * RATE * seconds)
    line(f"tokens painted: {len(lags)} of {expected} emitted; most tokens waiting in a pane "
         f"{result['backlog_max']}; the TUI used {result['cpu_share']:.2f} of a core "
         f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")  # fmt: skip
    line(f"display lag: p50 {percentile(lags, 50):.1f} ms  p90 {percentile(lags, 90):.1f} ms  "
         f"p99 {percentile(lags, 99):.1f} ms  max {max(lags):.1f} ms")  # fmt: skip
    steady = lags[len(lags) // 10 :]  # without the first tenth: the panes' live boxes mount
    line(f"display lag after the first {len(lags) // 10} tokens: p50 "
         f"{percentile(steady, 50):.1f} ms  p99 {percentile(steady, 99):.1f} ms")  # fmt: skip
    k50, k99 = percentile(key_ms, 50), percentile(key_ms, 99)
    line(f"keypress to paint: p50 {k50:.1f} ms  p99 {k99:.1f} ms  "
         f"(n={len(key_ms)} of {result['keys_sent']} typed)")  # fmt: skip
    breakdown(result, [(seen - stamp / 1e6) * 1e3 for stamp, seen in probe.tokens.items()])
    p99 = percentile(lags, 99)
    report.check(
        "display lag p99", p99 <= LAG_TARGET_MS, f"{p99:.1f} ms (target <= {LAG_TARGET_MS:.0f} ms)"
    )
    k99 = percentile(key_ms, 99)
    report.check(
        "keypress to paint p99 while streaming",
        k99 <= KEY_TARGET_MS,
        f"{k99:.1f} ms (target <= {KEY_TARGET_MS:.0f} ms)",
    )


def _done(host: subprocess.Popen[str]) -> bool:
    assert host.stdout is not None
    ready, _, _ = select.select([host.stdout], [], [], 0)
    return bool(ready) and host.stdout.readline().strip() == "done"


def first_frame(report: Report, quick: bool) -> None:
    runs = 3 if quick else 7
    heading("tui: first frame from launch")
    legion = [sys.executable, "-m", "legion"]
    base = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(["python3", "-c", "pass"], check=True)
        base.append(time.perf_counter() - started)
    results: dict[str, list[float]] = {"attached": [], "embedded": []}
    for mode in ("attached", "embedded"):
        with short_home("lgf-") as home:
            (home / "legion.toml").write_text(config_text(4))
            daemon = None
            if mode == "attached":
                daemon = subprocess.Popen(
                    [*legion, "--home", str(home), "daemon"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                deadline = time.monotonic() + 30
                while not (home / "run" / "control.sock").exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
            try:
                for _ in range(runs):
                    started = time.perf_counter()
                    term = Pty([*legion, "--home", str(home)], (120, 40), tui_env())
                    try:
                        # the header is the first thing painted
                        seen = term.wait_for(b"legion \xc2\xb7", 20)
                        if seen is not None:
                            results[mode].append(seen - started)
                        term.wait_for(b"a03", 20)  # fully up before quitting
                        term.write(b"\x11")
                        deadline = time.monotonic() + 20
                        while term.proc.poll() is None and time.monotonic() < deadline:
                            term.read(0.05)
                    finally:
                        term.close()
            finally:
                if daemon is not None:
                    daemon.send_signal(signal.SIGTERM)
                    daemon.wait(20)
    b50 = statistics.median(base)
    line(f"python3 -c pass: median {b50 * 1e3:.0f} ms (n={runs})")
    for mode, samples in results.items():
        if not samples:
            report.check(f"first frame, {mode}", False, "never painted")
            continue
        med = statistics.median(samples)
        line(f"first frame, {mode}: median {med * 1e3:.0f} ms, max {max(samples) * 1e3:.0f} ms "
             f"({med / b50:.1f}x python3 -c pass)")  # fmt: skip
        report.check(
            f"first frame, {mode}",
            med <= FIRST_FRAME_TARGET_S,
            f"{med:.2f} s (target <= {FIRST_FRAME_TARGET_S:.1f} s)",
        )


def other_commands(report: Report, quick: bool) -> None:
    runs = 3 if quick else 7
    heading("tui: other commands start without textual")
    probe = (
        "import sys, runpy; sys.argv = ['legion'] + sys.argv[1:]\n"
        "try:\n    runpy.run_module('legion', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "print('TEXTUAL' if 'textual' in sys.modules else 'HEADLESS', file=sys.stderr)"
    )
    with short_home("lgc-") as home:
        for argv in (["--help"], ["--home", str(home), "status"]):
            samples, imported = [], set()
            for _ in range(runs):
                started = time.perf_counter()
                run = subprocess.run(
                    [sys.executable, "-c", probe, *argv], capture_output=True, text=True
                )
                samples.append(time.perf_counter() - started)
                imported.add(run.stderr.strip().splitlines()[-1])
            med = statistics.median(samples)
            name = "legion " + " ".join(a for a in argv if not a.startswith("/"))
            line(f"{name}: median {med * 1e3:.0f} ms; {', '.join(sorted(imported))}")
            report.check(f"{name} never imports textual", imported == {"HEADLESS"}, str(imported))


def run(quick: bool = False, profile: str | None = None) -> Report:
    report = Report("tui")
    streaming(report, quick)
    first_frame(report, quick)
    other_commands(report, quick)
    return report


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--host":
        host_main(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--probe":
        probe_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        sys.exit(run_alone(run, __doc__, "tui"))
