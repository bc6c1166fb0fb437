"""The operator's TUI: a Textual app that is a client of the host through `HostClient`.

Nothing here talks to host internals: `legion.api.hostclient` carries every call and every
event (in-process when the TUI embeds the host, over the control socket when it attaches).
"""
