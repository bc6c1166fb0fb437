"""What runs in a browser container (`python -m browser_container`): one per agent that uses
the browser, with no network of its own.

* `display`: the Xvfb display Chromium renders in, and `x11vnc` on a Unix socket for the
  operator's hand-off (started only while one is open);
* `forwarder`: the HTTP proxy Chromium is told to use, on the container's loopback; every
  connection is relayed, byte for byte, to the host's proxy socket of this browser alone,
  where the egress policy is applied;
* `driver`: Playwright driving Chromium (`/usr/bin/chromium`; Camoufox where installed):
  the actions, refs from `aria_snapshot(mode="ai")`, masking of password fields and of
  fields a credential was typed into;
* `service`: the control connection to the host (it dials the host's socket; the host
  never connects into this container's files), one JSON command per line.

It imports only the standard library, `legion.wire` and playwright (an import-linter
contract checks it).
"""
