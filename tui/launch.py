"""`legion` with no subcommand: open the TUI, attached to this home's daemon or embedding a host.

The CLI imports this module lazily (inside its callback), so no other command imports textual.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import TYPE_CHECKING

from legion.api.hostclient import open_host, open_remote
from legion.config import load_config
from legion.errors import ConfigError
from legion.paths import Paths
from legion.textsafe import safe_text

if TYPE_CHECKING:
    from legion.api.remote import Remote
    from tui.app import LegionApp


# Textual paints at most this many frames a second (its own default: 60). What streams is held
# to 24 frames a second by the fleet screen's clock (tui/screens/fleet.py) whatever this says;
# this cap is what a key, the clock or a row changing waits for after the last frame: up to
# 1/60 s at 60, half that here (keypress to paint while 16 agents stream, bench/tui.py: p99
# 36-43 ms at 60, 20-29 ms at 120). An operator's own TEXTUAL_FPS wins.
FPS = "120"


def textual_settings() -> None:
    """Before Textual is imported (it reads them once)."""
    os.environ.setdefault("TEXTUAL_FPS", FPS)


def run(paths: Paths) -> int:
    try:
        config = load_config(paths.config)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        print(f"legion: fix {exc.path} (check it with `legion config check`)", file=sys.stderr)
        return 2
    textual_settings()
    from tui.app import LegionApp

    log_file = paths.home / "logs" / "tui-host.log"
    app = LegionApp(
        lambda: open_host(paths, log_file=log_file),
        home=str(paths.home),
        keys=config.tui.keys,
        first_run=not paths.config.exists(),
        tune_collector=True,
    )

    return _run_app(app)


def run_remote(remote: Remote, home: str | None) -> int:
    """`legion --host ssh://...`: the TUI attached to that daemon through ssh. The keys come
    from this machine's legion.toml (`--home`) when there is one: they are the operator's."""
    paths = Paths.resolve(home)
    keys: dict[str, str] = {}
    if paths.config.exists():
        try:
            keys = load_config(paths.config).tui.keys
        except ConfigError as exc:
            print(exc.render(), file=sys.stderr)
            print(f"legion: fix {exc.path} (its [tui.keys] are read)", file=sys.stderr)
            return 2
    from legion.api.hostclient import HostNotRunning

    async def reachable() -> None:
        async with open_remote(remote):
            pass

    try:  # on the terminal, before the full screen: ssh's failure is read where it was typed
        asyncio.run(reachable())
    except HostNotRunning as exc:
        # what ssh or the server said may hold terminal controls: shown, never interpreted
        print(f"legion: {safe_text(str(exc), multiline=True)}", file=sys.stderr)
        return 3
    textual_settings()
    from tui.app import LegionApp

    app = LegionApp(lambda: open_remote(remote), home=remote.url, keys=keys, tune_collector=True)
    return _run_app(app)


def _run_app(app: LegionApp) -> int:
    async def main() -> None:
        try:
            await app.run_async()
        finally:
            await app.shutdown_host()  # whatever ended the app, an embedded fleet stops cleanly

    asyncio.run(main())
    return app.return_code or 0
