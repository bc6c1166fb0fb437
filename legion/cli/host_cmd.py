"""`legion daemon`, `legion status`, `legion stop`: run the host, look at it, stop it.

Exit codes of status and stop: 0 done; 3 no host is running for this home; 4 a host holds
the home's lock but its control socket is gone (status), or it could not be stopped (stop).
"""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from legion.cli.common import State, echo, emit_json, fail, fmt_time, host_errors

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
    """Show the running host: pid, uptime, home, agents."""
    from legion.api.client import ControlSocketGone

    with host_errors():
        try:
            with State.client() as client:
                st = client.status()
        except ControlSocketGone as exc:
            fail(str(exc), EXIT_UNREACHABLE)
    if as_json:
        emit_json(st.model_dump())
        return
    echo(f"legion {st.version}  pid {st.pid}  up {st.uptime_s:.0f}s  home {st.home}")
    if not st.agents:
        typer.echo("no agents configured (add [agents.<name>] to legion.toml)")
    for a in st.agents:
        wake = (
            f" wake={a.wake.dispatched}/{a.wake.checks} (skipped {a.wake.skipped})"
            if a.wake
            else ""
        )
        cron = f" cron={a.cron_jobs}" + (f" ({a.cron_failed} failed)" if a.cron_failed else "")
        echo(
            f"  {a.name:<20} team={a.team or '-':<10} inbox={a.inbox_depth:<6} "
            f"queue={a.queue_depth} busy={a.in_progress} steers={a.steers_waiting}{cron}{wake} "
            f"last seen {fmt_time(a.last_heartbeat)}"
        )


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
