"""One agent's pane: this session's conversation, the live reply streaming as Markdown, tool
calls as expandable lines, and an input to chat with the agent."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Input, Markdown, Static
from textual.widgets.markdown import MarkdownStream

from tui.state import AgentView, Item
from tui.text import plain, safe
from tui.widgets.agent_row import LABEL, STATE_STYLE
from tui.widgets.tool_line import ToolLine

MAX_WIDGETS = 200  # mounted history items per pane; older ones stay in the session transcript
MAX_REPLY_CHARS = 100_000  # streamed into one reply's Markdown; the rest is not shown
CUT_NOTE = "\n\n*(the rest of this reply is not shown here)*"


class Reply(Markdown):
    """An agent's reply, rendered as Markdown; links are shown, never opened."""

    DEFAULT_CSS = """
    Reply { margin: 0 0 1 0; padding: 0 1; background: $surface; }
    Reply.-streaming { border-left: thick $primary; }
    """

    def __init__(self, item: Item, text: str | None = None) -> None:
        shown = item.text if text is None else text
        if len(shown) > MAX_REPLY_CHARS:
            shown = shown[:MAX_REPLY_CHARS] + CUT_NOTE
        super().__init__(safe(shown), open_links=False)
        self.item = item
        self.stream: MarkdownStream | None = None
        self.written = min(len(shown), MAX_REPLY_CHARS)


class AgentPane(Vertical, can_focus=False):
    DEFAULT_CSS = """
    AgentPane { border: round $foreground 30%; height: 1fr; min-height: 8; }
    AgentPane:focus-within { border: round $primary; }
    AgentPane > #title { height: 1; padding: 0 1; background: $panel; }
    AgentPane > #history { height: 1fr; padding: 0 1; }
    AgentPane > Input { dock: bottom; margin: 0; border: none; height: 1; padding: 0 1; }
    AgentPane > Input:focus { border: none; background: $boost; }
    AgentPane .-user { color: $accent; margin: 0 0 1 0; }
    AgentPane .-note { color: $text-muted; }
    AgentPane .-note.-warning { color: $warning; }
    AgentPane .-note.-error { color: $error; text-style: bold; }
    """

    class Send(Message):
        def __init__(self, agent: str, text: str) -> None:
            super().__init__()
            self.agent = agent
            self.text = text

    def __init__(self, view: AgentView) -> None:
        super().__init__(id=f"pane-{view.name}")
        self.agent = view.name
        self.view = view
        self._widgets: dict[int, Widget] = {}
        self._tokens: dict[int, list[str]] = {}  # per streaming reply: text not yet written

    def compose(self) -> ComposeResult:
        yield Static(id="title")
        with VerticalScroll(id="history"):
            for item in self.view.transcript:
                yield self._make(item)
        yield Input(placeholder=f"message {self.agent} (Enter to send)", id="say")

    def on_mount(self) -> None:
        if self.app.is_headless:
            self.query_one(Input).cursor_blink = False  # snapshots: the same frame every run
        self.query_one("#history", VerticalScroll).anchor()
        self.show_title()
        for reply in self.query(Reply):
            if not reply.item.done:  # a reply already streaming when the pane opened
                reply.add_class("-streaming")
                reply.stream = Markdown.get_stream(reply)

    def show_title(self) -> None:
        view = self.view
        activity = LABEL.get(view.activity, view.activity)
        title = next(self.query("#title").results(Static), None)
        if title is None:
            return  # not composed yet: on_mount shows it
        title.update(
            Content.assemble(
                (safe(view.name), "bold"),
                f" · {safe(view.model or '-')} · ",
                (activity, STATE_STYLE.get(view.activity, "")),
                (f" · q{view.queue}" if view.queue else ""),
            )
        )

    def focus_input(self) -> None:
        self.query_one(Input).focus()

    def _make(self, item: Item, fresh: bool = False) -> Widget:
        """The widget of `item`; a `fresh` streaming reply starts empty (its tokens follow)."""
        widget: Widget
        if item.kind == "user":
            widget = Static(plain("> " + item.text), classes="-user")
        elif item.kind == "reply":
            widget = Reply(item, "" if fresh and not item.done else None)
        elif item.kind == "tool":
            widget = ToolLine(item)
        else:
            widget = Static(plain(item.text), classes=f"-note -{item.level}")
        self._widgets[id(item)] = widget
        return widget

    async def show_item(self, op: str, item: Item) -> None:
        """Apply one transcript change (from FleetState.apply) to the pane."""
        widget = self._widgets.get(id(item))
        if op == "new" and widget is None:
            widget = self._make(item, fresh=True)
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
            if isinstance(widget, Reply) and not item.done:
                widget.add_class("-streaming")
                widget.stream = Markdown.get_stream(widget)
            return
        if isinstance(widget, Reply):
            if op.startswith("token:") and widget.stream is not None:
                self._tokens.setdefault(id(widget), []).append(op[6:])  # `flush` writes them
            elif op == "done":
                await self.flush()
                if widget.stream is not None:
                    await widget.stream.stop()
                    widget.stream = None
                widget.remove_class("-streaming")
        elif isinstance(widget, ToolLine):
            widget.refresh_item()

    async def flush(self) -> None:
        """Write the tokens that arrived since the last flush: one Markdown append per reply
        per frame, however many tokens came (the fleet screen calls this on a timer)."""
        if not self._tokens:
            return
        pending, self._tokens = self._tokens, {}
        for reply in self.query(Reply):
            texts = pending.get(id(reply))
            if texts and reply.stream is not None:
                text = "".join(texts)
                room = MAX_REPLY_CHARS - reply.written
                if room <= 0:
                    continue
                if len(text) > room:  # past the cap: say so once, keep the TUI responsive
                    text = text[:room] + CUT_NOTE
                reply.written += len(text)
                await reply.stream.write(safe(text))

    @property
    def has_tokens(self) -> bool:
        return bool(self._tokens)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        text = event.value.strip()
        if text:
            event.input.clear()
            self.post_message(self.Send(self.agent, text))
