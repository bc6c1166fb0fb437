"""`legion daemon`, `legion status`, `legion stop`: run the host, look at it, stop it.

Exit codes of status and stop: 0 done; 3 no host is running for this home; 4 a host holds
the home's lock but its control socket is gone (status), or it could not be stopped (stop).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import typer

from legion.cli.common import State, echo, emit_json, fail, fmt_time, host_errors
from legion.paths import Paths

EXIT_NOT_RUNNING = 3
EXIT_UNREACHABLE = 4
STOP_TIMEOUT_S = 15.0


def daemon(
    systemd: Annotated[
        bool,
        typer.Option("--systemd", help="Send READY/RELOADING/STOPPING to systemd (NOTIFY_SOCKET)."),
    ] = False,
    log_format: Annotated[
        str,
        typer.Option(
            "--log-format",
            help="auto (text on a terminal, JSON lines otherwise), json or text.",
            metavar="auto|json|text",
        ),
    ] = "auto",
    control_socket_check: Annotated[
        float,
        typer.Option(
            "--control-socket-check",
            min=0,
            help="Seconds between checks that run/control.sock is still there (it is served "
            "again if deleted); 0: check only on SIGHUP.",
        ),
    ] = 2.0,
    print_unit: Annotated[
        bool, typer.Option("--print-unit", help="Print a systemd unit file for this home and exit.")
    ] = False,
    user: Annotated[
        bool,
        typer.Option("--user", help="With --print-unit: a user unit (rootless Docker)."),
    ] = False,
) -> None:
    """Run the host in the foreground. SIGTERM stops it; SIGHUP reloads legion.toml.

    Keep it running after you log out with systemd (`--print-unit`), or `setsid -f` /
    `nohup` (see docs/daemon.md).
    """
    from legion import daemon as daemon_mod
    from legion.logs import LOG_FORMATS

    paths = State.paths()
    if print_unit:
        from legion.systemd import UnitError

        try:
            typer.echo(daemon_mod.unit_file(paths, user=user), nl=False)
        except UnitError as exc:
            fail(str(exc), 2)
        return
    if user:
        fail("--user goes with --print-unit (it chooses the kind of unit printed)", 2)
    if log_format not in LOG_FORMATS:
        fail(f"--log-format {log_format!r}: use one of {', '.join(LOG_FORMATS)}", 2)
    chosen: Literal["auto", "json", "text"] = log_format
    raise typer.Exit(
        daemon_mod.run(
            paths,
            systemd=systemd,
            log_format=chosen,
            control_socket_check_s=control_socket_check,
        )
    )


def status(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Show the running host: pid, uptime, home, agents.

    Exit 0 with a host running, 3 when none runs for this home, 4 when a host holds the
    home's lock but its control socket is gone.
    """
    # The standard library only (no httpx, no pydantic): `legion status` starts fast.
    from legion.api.reach import ControlSocketGone, bad_response, get_json

    # Under --host the paths only name the remote daemon in messages.
    paths = (
        State.paths() if State.remote is None else Paths.resolve(f"/remote/{State.remote.target}")
    )
    with host_errors():
        try:
            if State.remote is not None:  # --host: through ssh (the full client)
                with State.client() as client:
                    st = client.status().model_dump(mode="json")
            else:
                st = get_json(paths, "/v1/status")
        except ControlSocketGone as exc:
            fail(str(exc), EXIT_UNREACHABLE)
        problem = _status_problem(st)
        if problem is not None:
            raise bad_response(paths, "/v1/status", f"JSON that is not a host's status ({problem})")
    if as_json:
        emit_json(st)
        return
    echo(f"legion {st['version']}  pid {st['pid']}  up {st['uptime_s']:.0f}s  home {st['home']}")
    if not st["agents"]:
        typer.echo("no agents yet: `legion agents add NAME --model ALIAS`")
    for a in st["agents"]:
        wake = a.get("wake")
        wake_text = (
            f" wake={wake.get('dispatched')}/{wake.get('checks')} (skipped {wake.get('skipped')})"
            if isinstance(wake, dict)
            else ""
        )
        failed = a.get("cron_failed", 0)
        cron = f" cron={a.get('cron_jobs', 0)}" + (f" ({failed} failed)" if failed else "")
        echo(
            f"  {a['name']:<20} team={a.get('team') or '-':<10} inbox={a['inbox_depth']:<6} "
            f"queue={a.get('queue_depth', 0)} busy={a.get('in_progress', 0)} "
            f"steers={a.get('steers_waiting', 0)}{cron}{wake_text} "
            f"last seen {fmt_time(a.get('last_heartbeat'))}"
        )


def _status_problem(st: Any) -> str | None:
    """What in a /v1/status answer is not the shape `status` prints (None: it is)."""
    if not isinstance(st, dict):
        return f"a {type(st).__name__}, not an object"
    kinds: dict[str, type | tuple[type, ...]] = {
        "version": str,
        "pid": int,
        "uptime_s": (int, float),
        "home": str,
        "agents": list,
    }
    for key, kind in kinds.items():
        if not isinstance(st.get(key), kind) or isinstance(st.get(key), bool):
            return f"{key}: {st.get(key)!r:.60}"
    for agent in st["agents"]:
        if not isinstance(agent, dict) or not isinstance(agent.get("name"), str):
            return f"agents: {agent!r:.60}"
        for key in ("inbox_depth",):
            if not isinstance(agent.get(key), int):
                return f"agents[{agent['name']!r:.40}].{key}: {agent.get(key)!r:.40}"
    return None


def stop(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Stop the running host cleanly (over its control socket; by SIGTERM if that is gone)."""
    import time

    from legion.api.client import ControlClient, ControlSocketGone
    from legion.hostlock import CannotSignal, lock_holder, signal_host, wait_released

    if State.remote is not None:
        _stop_remote(as_json)
        return
    paths = State.paths()
    via = "control_socket"
    try:
        holder = lock_holder(paths)
    except OSError:
        holder = None
    with host_errors():
        try:
            with ControlClient(paths) as client:
                client.stop()
        except ControlSocketGone:
            try:
                signalled = signal_host(paths)
            except CannotSignal as exc:
                fail(
                    f"the host's control socket is gone and it could not be signalled: {exc}",
                    EXIT_UNREACHABLE,
                )
            typer.echo(
                f"legion: the control socket was gone; sent SIGTERM to the host (pid {signalled})",
                err=True,
            )
            via = "signal"
            holder = lock_holder(paths)
    pid = holder.pid if holder is not None else None
    if holder is not None:
        stopped = wait_released(paths, STOP_TIMEOUT_S)
    else:  # the lock could not be read: the socket's going is the best sign there is
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while paths.control_socket.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        stopped = not paths.control_socket.exists()
    if as_json:
        emit_json({"stopped": stopped, "pid": pid, "via": via})
    else:
        typer.echo("host stopped" if stopped else "host is stopping")
    if not stopped:
        raise typer.Exit(EXIT_UNREACHABLE)


def _stop_remote(as_json: bool) -> None:
    """`legion --host ssh://... stop`: ask the daemon to stop, then wait until nothing answers."""
    import time

    from legion.api.client import HostNotRunning

    with host_errors(), State.client() as client:
        pid = client.status().pid
        client.stop()
    deadline = time.monotonic() + STOP_TIMEOUT_S
    stopped = False
    while not stopped and time.monotonic() < deadline:
        try:
            with State.client(timeout=5) as client:
                client.status()
        except HostNotRunning:
            stopped = True
        else:
            time.sleep(0.2)
    if as_json:
        emit_json({"stopped": stopped, "pid": pid, "via": "ssh"})
    else:
        typer.echo("host stopped" if stopped else "host is stopping")
    if not stopped:
        raise typer.Exit(EXIT_UNREACHABLE)
