"""The garbage collector of the TUI's own process, tuned for a screen that repaints 24 times a
second (issue 9: display lag while 16 agents stream).

Painting allocates: each line Textual renders is a `Strip` holding seven small caches, so a
wall of streaming panes makes some 20,000 container objects a second, most of them short-lived
cyclic garbage. With CPython's default thresholds (a young collection every 700 objects) many
live just long enough to be promoted, and a full collection, which walks every object the app
holds (about 200,000: Textual, its CSS, pydantic's models, the screens), ran every two seconds
or so and held the loop for 50 to 100 ms on a 2-core machine: the tokens and keys that arrived
meanwhile waited behind it (`bench/tui.py`, `BENCH_TUI_SLOW=1`, lists the pauses).

`Collector.tune` (called by the app only when it runs as `legion`, never in a test's process):

* a young collection every `YOUNG` new objects instead of 700: most of a frame's garbage dies
  before it is looked at, so far fewer objects reach the old generation and full collections
  become rare;
* after the first frame, what the start-up built is frozen (`gc.freeze`, as the host does once
  it has started: `legion/host.py`): the full collections that remain no longer walk it.

`Collector.restore` puts the previous thresholds back when the app ends (what was frozen
stays so: it lives as long as the process).
"""

from __future__ import annotations

import gc

YOUNG = 5000  # new container objects between two young collections (CPython's default: 700)


class Collector:
    def __init__(self) -> None:
        self.previous: tuple[int, int, int] | None = None

    def tune(self) -> None:
        if self.previous is None:
            self.previous = gc.get_threshold()
            gc.set_threshold(YOUNG, *self.previous[1:])

    def freeze_start(self) -> None:
        """Freeze what exists now (the app as started), once its young garbage is gone."""
        if self.previous is not None:
            gc.collect(1)
            gc.freeze()

    def restore(self) -> None:
        if self.previous is not None:
            gc.set_threshold(*self.previous)
            self.previous = None
