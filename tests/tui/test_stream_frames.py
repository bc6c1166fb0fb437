"""What a flood of tokens costs the screen (issue 9: display lag while 16 agents stream).

Timing-free guards of the mechanisms `bench/tui.py` measures: tokens wait in their pane and
go into its live reply on the fleet screen's clock, one append per pane however many arrived,
repainting the lines they touched and never asking for a layout; replies of several agents
starting in one batch are mounted in that batch; the garbage collector is tuned only in the
TUI's own process and put back when the app ends."""

from __future__ import annotations

import gc
import time
from typing import Any

import pytest
from textual.widget import Widget

from legion.wire.events import TokenDelta
from tui.collector import YOUNG
from tui.messages import HostEvents
from tui.widgets import markdown_live
from tui.widgets.agent_pane import AgentPane
from tui.widgets.live_reply import LiveReply
from tui.widgets.markdown_live import (
    MIN_TAIL_CHARS,
    TAIL_CHARS,
    MarkdownLive,
    tail_chars,
    tail_of,
)

from .conftest import Run, Starter

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def tokens(agent: str, texts: list[str]) -> list[Any]:
    return [TokenDelta(at=time.time(), agent=agent, request_id="r", text=t) for t in texts]


async def apply(run: Run, events: list[Any], then: Any = None) -> None:
    """Post one batch, as the bridge does, and wait until the app has applied it; `then` runs
    the moment it has (before anything else in the loop can)."""
    done: list[bool] = []

    def applied() -> None:
        if then is not None:
            then()
        done.append(True)

    run.app.post_message(HostEvents(events, applied=applied))
    await run.until(lambda: bool(done))


class Refreshes:
    """Every `Widget.refresh` call (Textual's), with whether it asked for a layout."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[Widget, bool]] = []
        original = Widget.refresh

        def refresh(widget: Widget, *regions: Any, **kwargs: Any) -> Any:
            self.calls.append((widget, bool(kwargs.get("layout") or kwargs.get("recompose"))))
            return original(widget, *regions, **kwargs)

        monkeypatch.setattr(Widget, "refresh", refresh)

    def of(self, widget: Widget) -> int:
        return sum(1 for w, _ in self.calls if w is widget)

    def layouts_under(self, root: Widget) -> list[Widget]:
        return [w for w, layout in self.calls if layout and (w is root or root in w.ancestors)]


async def test_a_burst_of_tokens_is_one_append_one_repaint_and_no_layout(
    tui: Starter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """issue 9: forty tokens for one pane, in one batch, change nothing on the screen until
    the fleet screen's next frame, which takes them all into the live reply with one append:
    one repaint of the box, and no layout of the pane or the screen (a layout of 16 panes
    cost 40-60 ms a time)."""
    async with tui(runtimes=()) as run:
        pane = await run.app.fleet.open_agent("alice")
        assert isinstance(pane, AgentPane)
        await run.until(lambda: pane.has_focus_within)  # opening it focuses it (after a frame)
        await run.pilot.pause()
        run.app.fleet.query_one("#sidebar", Widget).focus()  # a pane streaming, not read
        await run.until(lambda: not pane.has_focus_within)
        await apply(run, tokens("alice", ["first "]))  # the reply starts: its box mounts
        await run.until(lambda: pane.live is not None and pane.live.size.width > 0)
        live = pane.live
        assert isinstance(live, LiveReply)
        await run.until(lambda: live.text == "first ")
        seen = Refreshes(monkeypatch)
        burst = [f"w{i} " for i in range(40)]
        at_apply: dict[str, Any] = {}

        def look() -> None:
            at_apply.update(text=live.text, pending=pane.has_pending, repaints=seen.of(live))

        await apply(run, tokens("alice", burst), then=look)
        # applied: the tokens wait in the pane, the box has not been touched
        assert at_apply == {"text": "first ", "pending": True, "repaints": 0}
        await run.until(lambda: live.text == "first " + "".join(burst))
        assert not pane.has_pending
        assert seen.of(live) == 1  # one append, one repaint, for the forty
        assert seen.layouts_under(run.app.fleet.query_one("#grid", Widget)) == []


async def test_replies_starting_together_are_mounted_in_their_batch(tui: Starter) -> None:
    """issue 9: when several agents start replying in one batch, the batch does not wait for
    their live boxes to mount (awaiting one mount after another let a frame and a layout of
    the screen in between each: sixteen replies starting together held their tokens back
    250 ms): at its end every box is in its pane and still mounting, so they are laid out
    together; their tokens wait for the box's first size, then show."""
    agents = ("alice", "bob", "carol")
    async with tui(agents=agents, runtimes=()) as run:
        panes = [await run.app.fleet.open_agent(name) for name in agents]
        at_apply: list[tuple[bool, bool]] = []

        def look() -> None:
            for p in panes:
                live = p.live if isinstance(p, AgentPane) else None
                at_apply.append(
                    (live is not None and live.parent is p, bool(live and live.is_mounted))
                )

        await apply(run, [e for name in agents for e in tokens(name, [f"hi from {name}"])], look)
        assert at_apply == [(True, False)] * 3
        for pane, name in zip(panes, agents, strict=True):
            assert isinstance(pane, AgentPane)
            await run.until(lambda p=pane: p.live is not None and p.live.size.width > 0)
            live = pane.live
            assert live is not None
            await run.until(lambda lv=live, n=name: lv.text == f"hi from {n}")


async def test_the_collector_is_tuned_for_legion_only_and_put_back(tui: Starter) -> None:
    """issue 9: the TUI's own process collects young objects less often and freezes its
    start-up heap after the first frame (full collections held a streaming screen 50-100 ms);
    an app in someone else's process (a test's) leaves the thresholds alone, and the tuned
    one puts them back when it ends. Attached, so no host in this process freezes anything."""
    before = gc.get_threshold()
    async with tui(runtimes=()) as run:
        assert gc.get_threshold() == before
        assert run.app.collector is None
    frozen = gc.get_freeze_count()
    async with tui("attached", runtimes=(), tune_collector=True) as run:
        assert gc.get_threshold() == (YOUNG, *before[1:])
        await run.until(lambda: gc.get_freeze_count() > frozen)  # after the first frame
    assert gc.get_threshold() == before


async def test_the_pane_being_read_streams_markdown_and_the_others_text(
    tui: Starter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """issue 9: the reply in the pane the operator reads (the focus is in it) is rendered as
    Markdown as it arrives, in a fixed box that never asks for a layout; the other panes
    stream plain text (a wall of Markdown widgets could not keep up). When the focus moves,
    the two swap, the text so far carried over, and what follows goes on in the new box.
    Links in agent text are shown, never made clickable."""
    async with tui(agents=("alice", "bob"), runtimes=()) as run:
        alice = await run.app.fleet.open_agent("alice")
        bob = await run.app.fleet.open_agent("bob")
        assert isinstance(alice, AgentPane) and isinstance(bob, AgentPane)
        await run.until(lambda: bob.has_focus_within)  # opening it focuses it (after a frame)
        await run.pilot.pause()
        alice.focus_input()
        await run.until(lambda: alice.has_focus_within)
        first = "# Plan\n\nsome **bold** and `code` and [a link](http://127.0.0.1:9/x)\n\n"
        await apply(run, tokens("alice", [first]) + tokens("bob", [first]))
        await run.until(lambda: isinstance(alice.live, MarkdownLive) and alice.live.size.width > 0)
        shown = alice.live
        assert isinstance(shown, MarkdownLive)
        await run.until(lambda: shown.text == first)
        text = "\n".join(shown.lines)
        assert "Plan" in text and "some bold and code" in text  # rendered, not the source
        assert "# Plan" not in text and "**" not in text
        links = [s for strip in shown._strips for s in strip if s.style and s.style.link]
        assert links == []
        assert isinstance(bob.live, LiveReply)
        await run.until(lambda: bob.live is not None and bob.live.text == first)
        seen = Refreshes(monkeypatch)
        more = "- one\n- two\n"
        await apply(run, tokens("alice", [more]))
        await run.until(lambda: shown.text == first + more)
        assert any("one" in line for line in shown.lines)
        assert seen.layouts_under(run.app.fleet.query_one("#grid", Widget)) == []
        bob.focus_input()  # the focus moves: bob's reply becomes Markdown, alice's text
        await run.until(lambda: isinstance(bob.live, MarkdownLive) and bob.live.is_mounted)
        await run.until(lambda: isinstance(alice.live, LiveReply))
        assert alice.live is not None and alice.live.text == first + more
        await apply(run, tokens("bob", [more]))
        moved = bob.live
        assert isinstance(moved, MarkdownLive)
        await run.until(lambda: moved.text == first + more)
        assert moved.written == len(first + more)
        assert len(bob.query(MarkdownLive)) == 1 and len(bob.query(LiveReply)) == 0


def test_the_markdown_tail_starts_at_a_block() -> None:
    """issue 9: a long reply renders only its tail, sized to the box, from a paragraph
    boundary unless that would leave too little to fill the box."""
    text = "intro\n\n" + "x" * 1000 + "\n\n" + "y" * 3000
    assert tail_of(text, 3500) == "y" * 3000  # from the boundary
    assert tail_of(text, 6000) == text
    late = "a" * 5000 + "\n\n" + "b" * 100
    assert tail_of(late, 1000) == late[-1000:]  # the boundary would leave 100 of 1000
    assert tail_of("short") == "short"
    assert tail_chars(46, 5) == MIN_TAIL_CHARS and tail_chars(196, 27) == TAIL_CHARS
    assert tail_chars(80, 10) == 1600


async def test_markdown_the_renderer_cannot_take_is_shown_as_text(
    tui: Starter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """issue 9 (attack): agent text is rendered as Markdown in the focused pane; should the
    renderer fail on what an agent wrote, the box shows it as text and the screen goes on."""
    async with tui(runtimes=()) as run:
        pane = await run.app.fleet.open_agent("alice")
        assert isinstance(pane, AgentPane)
        await run.until(lambda: pane.has_focus_within)

        def broken(self: Any, *args: Any, **kwargs: Any) -> Any:
            raise RecursionError("nested too deep")

        monkeypatch.setattr(markdown_live.Markdown, "__rich_console__", broken)
        await apply(run, tokens("alice", ["> " * 50 + "deep"]))
        await run.until(lambda: isinstance(pane.live, MarkdownLive) and pane.live.size.width > 0)
        live = pane.live
        assert isinstance(live, MarkdownLive)
        await run.until(lambda: any("deep" in line for line in live.lines))
        assert run.app.is_running


async def test_a_costly_render_is_not_made_again_at_once(
    tui: Starter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """issue 9 (attack): text an agent shaped to be slow to render (a render over 5 ms) is
    rendered again only after ten times that cost, however fast its tokens come: the box
    lags a little and the rest of the screen does not. The last of it still shows."""
    async with tui(runtimes=()) as run:
        pane = await run.app.fleet.open_agent("alice")
        assert isinstance(pane, AgentPane)
        await run.until(lambda: pane.has_focus_within)
        slow = markdown_live.Markdown.__rich_console__

        def costly(self: Any, *args: Any, **kwargs: Any) -> Any:
            time.sleep(0.03)
            return slow(self, *args, **kwargs)

        monkeypatch.setattr(markdown_live.Markdown, "__rich_console__", costly)
        await apply(run, tokens("alice", ["start "]))
        await run.until(lambda: isinstance(pane.live, MarkdownLive) and pane.live.renders > 0)
        live = pane.live
        assert isinstance(live, MarkdownLive)
        began, renders = time.monotonic(), live.renders
        for i in range(20):  # 20 flushes' worth in ~0.2 s
            live.append(f"w{i} ")
            await run.pilot.pause(0.01)
        spent = time.monotonic() - began
        assert live.renders - renders <= spent / 0.3 + 1  # at most one per 10 x 30 ms
        await run.until(lambda: any("w19" in line for line in live.lines))
