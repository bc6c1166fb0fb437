"""The browser wing: one browser container per agent with `can_use_browser`, on demand.

* `manager`: `Browsers`, owned by the host: starts a browser on first use, stops it after
  `[browser] idle_timeout_s`, caps how many run (`max_running`), runs the agents' actions
  (with `$CRED{}` substitution toward bound hosts only) and the human hand-off;
* `channel`: the host's end of a browser's control socket (the container dials in);
* `runtime`: the browser containers on Docker (the agent containers' hardening, with the
  exceptions a browser needs, see docs/browser.md);
* `files`: the per-agent profile and socket folders, made without following anything;
* `vnc`: noVNC through websockify on 127.0.0.1, per-session expiring tokens, and the relay
  to the container's x11vnc socket.

The browser's traffic leaves through `legion.gateway.connect_proxy` on a socket of its own.
"""
