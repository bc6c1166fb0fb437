"""One agent's pane: this session's conversation, the live reply as it streams, tool calls as
expandable lines, and an input to chat with the agent (Enter) or steer its running turn.

The reply being streamed sits in a fixed box between the history and the input. In the
pane the operator is reading (the focus is in it) it is a `MarkdownLive`: Markdown as it
arrives (its tail rendered at each append, never a layout). In the others it is a
`LiveReply` (plain text, appended in place, never a layout), so a wall of streaming panes
stays cheap; the pane swaps one for the other as the focus comes and goes. Tokens wait in
the pane until the fleet screen's clock flushes every pane at once (`flush`, `FLUSH_S`
apart: however many tokens arrived, one append), so one frame paints all the panes. When
the reply ends it joins the history as a `Reply`, rendered as Markdown once."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.message import Message
from textual.widget import AwaitMount, Widget
from textual.widgets import Input, Markdown, Static

from tui.keys import bindings
from tui.state import AgentView, Item
from tui.text import plain, safe
from tui.widgets.agent_row import LABEL, STATE_STYLE
from tui.widgets.live_reply import LiveReply
from tui.widgets.markdown_live import MarkdownLive
from tui.widgets.pane_input import PaneInput
from tui.widgets.tool_line import ToolLine

MAX_WIDGETS = 200  # mounted history items per pane; older ones stay in the session transcript
MAX_REPLY_CHARS = 100_000  # of one reply shown in a pane; the rest is not shown
CUT_NOTE = "\n\n*(the rest of this reply is not shown here)*"


class Reply(Markdown):
    """An agent's reply, rendered as Markdown once it is complete; links are shown, never
    opened."""

    DEFAULT_CSS = """
    Reply { margin: 0 0 1 0; padding: 0 1; background: $surface; }
    """

    def __init__(self, item: Item) -> None:
        shown = item.text
        if len(shown) > MAX_REPLY_CHARS:
            shown = shown[:MAX_REPLY_CHARS] + CUT_NOTE
        super().__init__(safe(shown), open_links=False)
        self.item = item


class AgentPane(Vertical, can_focus=False):
    BINDINGS = bindings("pane")
    DEFAULT_CSS = """
    AgentPane {
        border: round $foreground 30%; height: 1fr; min-height: 8;
        border-title-align: left; border-title-color: $foreground;
    }
    AgentPane:focus-within { border: round $primary; }
    AgentPane > #history { height: 1fr; padding: 0 1; }
    AgentPane > Input {
        dock: bottom; margin: 0; border: none; height: 1; width: 1fr; padding: 0 1;
    }
    AgentPane > Input:focus { border: none; background: $boost; }
    AgentPane .-user { color: $accent; margin: 0 0 1 0; }
    AgentPane .-steer { color: $warning; margin: 0 0 1 0; }
    AgentPane .-note { color: $text-muted; }
    AgentPane .-note.-warning { color: $warning; }
    AgentPane .-note.-error { color: $error; text-style: bold; }
    """

    class Send(Message):
        def __init__(self, agent: str, text: str, *, steer: bool = False) -> None:
            super().__init__()
            self.agent = agent
            self.text = text
            self.steer = steer

    def __init__(self, view: AgentView) -> None:
        super().__init__(id=f"pane-{view.name}")
        self.agent = view.name
        self.view = view
        self._widgets: dict[int, Widget] = {}
        self.live: LiveReply | MarkdownLive | None = None  # the reply streaming now, if any
        self._pending: list[str] = []  # tokens for `live`, not taken in yet
        self._live_mount: AwaitMount | None = None  # `live`'s mount, until it is awaited
        self._title: Content | None = None

    def compose(self) -> ComposeResult:
        live: LiveReply | MarkdownLive | None = None
        with VerticalScroll(id="history"):
            for item in self.view.transcript:
                widget = self._make(item)
                if isinstance(widget, LiveReply | MarkdownLive):
                    live = widget  # a reply streaming when the pane opened
                else:
                    yield widget
        if live is not None:
            self.live = live
            yield live
        yield PaneInput(
            placeholder=f"message {self.agent} (Enter sends; Ctrl+S steers its running turn)",
            id="say",
        )

    def on_mount(self) -> None:
        if self.app.is_headless:
            self.query_one(Input).cursor_blink = False  # snapshots: the same frame every run
        self.query_one("#history", VerticalScroll).anchor()
        self.show_title()

    def show_title(self) -> None:
        """The pane's border title: name, model, state, queue (repainted only when it
        changed; a border title never needs a layout)."""
        view = self.view
        activity = view.shown_activity
        title = Content.assemble(
            (safe(view.name), "bold"),
            f" · {safe(view.model or '-')} · ",
            (LABEL.get(activity, activity), STATE_STYLE.get(activity, "")),
            (f" · q{view.queue}" if view.queue else ""),
            (f" · {view.steers} steer{'s' if view.steers > 1 else ''}" if view.steers else ""),
        )
        if title != self._title:
            self._title = title
            self.border_title = title

    def focus_input(self) -> None:
        self.query_one(Input).focus()

    def _make(self, item: Item, fresh: bool = False) -> Widget:
        """The widget of `item`; a `fresh` streaming reply starts empty (its tokens follow)."""
        widget: Widget
        if item.kind == "user":
            widget = Static(plain("> " + item.text), classes="-user")
        elif item.kind == "steer":
            widget = Static(plain("» steer: " + item.text), classes="-steer")
        elif item.kind == "reply" and not item.done:
            text = "" if fresh else item.text
            kind = MarkdownLive if self.has_focus_within else LiveReply
            widget = kind(item, text, limit=MAX_REPLY_CHARS, cut_note=CUT_NOTE)
        elif item.kind == "reply":
            widget = Reply(item)
        elif item.kind == "tool":
            widget = ToolLine(item)
        else:
            widget = Static(plain(item.text), classes=f"-note -{item.level}")
        self._widgets[id(item)] = widget
        return widget

    async def show_item(self, op: str, item: Item) -> None:
        """Apply one transcript change (from FleetState.apply) to the pane."""
        widget = self._widgets.get(id(item))
        if op.startswith("token:"):
            if widget is not None and widget is self.live:
                self._pending.append(op[6:])  # the fleet screen's next frame takes them in
            return
        if op == "new" and widget is None:
            widget = self._make(item, fresh=True)
            if isinstance(widget, LiveReply | MarkdownLive):
                await self._start_live(widget)
                return
            history = self.query_one("#history", VerticalScroll)
            # Room first, then the new one: the pane never holds more than MAX_WIDGETS, even
            # while a removal is still being processed (an agent flooding notices).
            excess = len(history.children) + 1 - MAX_WIDGETS
            if excess > 0:
                old = list(history.children)[:excess]
                for gone in old:
                    self._widgets = {k: w for k, w in self._widgets.items() if w is not gone}
                await history.remove_children(old)
            await history.mount(widget)
            return
        if isinstance(widget, LiveReply | MarkdownLive) and op == "done":
            await self._finish(widget)
        elif isinstance(widget, ToolLine):
            widget.refresh_item()

    async def _start_live(self, live: LiveReply | MarkdownLive) -> None:
        if self.live is not None:  # a reply that never said it ended: it has now
            await self._finish(self.live)
        self.live = live
        live.smooth = self.has_focus_within
        # Not awaited: the batch goes on at once, so the replies of many agents starting in
        # one batch cost one layout of the screen (awaiting each mount let a frame, and a
        # layout, in between each; sixteen at once held their tokens back 250 ms). Tokens
        # for a box not laid out yet are kept until its first resize wraps them.
        self._live_mount = self.mount(live, before=self.query_one(Input))

    def flush(self) -> None:
        """Take the tokens that arrived into the live reply (one append, however many)."""
        if self._pending and self.live is not None:
            text = "".join(self._pending)
            self._pending.clear()
            self.live.smooth = self.has_focus_within
            self.live.append(text)

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def on_descendant_focus(self) -> None:
        self.call_after_refresh(self.restyle_live)

    def on_descendant_blur(self) -> None:
        self.call_after_refresh(self.restyle_live)  # once the focus has landed

    async def restyle_live(self) -> None:
        """The live reply as the focus wants it: Markdown where the operator reads, plain
        text elsewhere (the text so far carried over)."""
        live = self.live
        if live is None or not self.is_attached:
            return
        kind = MarkdownLive if self.has_focus_within else LiveReply
        if isinstance(live, kind):
            return
        self.flush()
        if self._live_mount is not None:
            mounting, self._live_mount = self._live_mount, None
            await mounting
        if self.live is not live:  # it ended meanwhile
            return
        new = kind(
            live.item, limit=MAX_REPLY_CHARS, cut_note=CUT_NOTE, carried=(live.text, live.written)
        )
        self._widgets[id(live.item)] = new
        self.live = new
        await self.mount(new, before=live)
        await live.remove()

    async def _finish(self, live: LiveReply | MarkdownLive) -> None:
        """The reply ended: it joins the history as Markdown, rendered once."""
        self.flush()
        self._pending.clear()
        reply = Reply(live.item)
        self._widgets[id(live.item)] = reply
        if self.live is live:
            self.live = None
        if self._live_mount is not None:  # it started in this batch: mounted before it goes
            mounting, self._live_mount = self._live_mount, None
            await mounting
        await self.query_one("#history", VerticalScroll).mount(reply)
        await live.remove()

    def _submit(self, steer: bool) -> None:
        field = self.query_one(Input)
        text = field.value.strip()
        if text:
            field.clear()
            self.post_message(self.Send(self.agent, text, steer=steer))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._submit(steer=False)

    def action_steer(self) -> None:
        self._submit(steer=True)
