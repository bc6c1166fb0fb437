"""The key bar at the bottom of each screen: Textual's Footer, rebuilt once per burst.

Textual's Footer rebuilds itself (removes and mounts a widget per key, then a layout of the
whole screen) each time the screen's bindings change, and they change on every focus move.
Opening sixteen panes moves the focus sixteen times: sixteen rebuilds, each a full layout of
a screen of panes. This one rebuilds once for a burst of changes, after the next refresh."""

from __future__ import annotations

from textual.screen import Screen
from textual.widgets import Footer


class LegionFooter(Footer):
    _rebuild_queued = False

    def bindings_changed(self, screen: Screen[object]) -> None:
        self._bindings_ready = True
        if not screen.app.app_focus:
            return
        if self.is_attached and screen is self.screen and not self._rebuild_queued:
            self._rebuild_queued = True
            self.call_after_refresh(self._rebuild)

    async def _rebuild(self) -> None:
        self._rebuild_queued = False
        await self.recompose()
