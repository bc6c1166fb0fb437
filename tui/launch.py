"""`legion` with no subcommand: open the TUI, attached to this home's daemon or embedding a host.

The CLI imports this module lazily (inside its callback), so no other command imports textual.
"""

from __future__ import annotations

import asyncio
import sys

from legion.api.hostclient import open_host
from legion.config import load_config
from legion.errors import ConfigError
from legion.paths import Paths


def run(paths: Paths) -> int:
    try:
        config = load_config(paths.config)
    except ConfigError as exc:
        print(exc.render(), file=sys.stderr)
        print(f"legion: fix {exc.path} (check it with `legion config check`)", file=sys.stderr)
        return 2
    from tui.app import LegionApp

    log_file = paths.home / "logs" / "tui-host.log"
    app = LegionApp(
        lambda: open_host(paths, log_file=log_file),
        home=str(paths.home),
        keys=config.tui.keys,
        first_run=not paths.config.exists(),
    )

    async def main() -> None:
        try:
            await app.run_async()
        finally:
            await app.shutdown_host()  # whatever ended the app, an embedded fleet stops cleanly

    asyncio.run(main())
    return app.return_code or 0
