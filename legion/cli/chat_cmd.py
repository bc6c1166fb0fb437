"""`legion chat`: talk to an agent from the terminal, streaming its reply.

Exit codes (also in `legion chat --help` and docs/cli.md): 0 the agent answered; 1 no
answer (no reply in time, the event stream lost, the agent failed, an unknown agent);
2 a usage error; 3 no host runs for this home; 5 the turn failed (the model, the provider
or the agent's runtime: the reply says why); 6 the host refused the turn (a budget cap or
a permission, HTTP 402 or 403). With `--json` the reply's `error` is null when the agent
answered and `{code, message, status}` when it did not; when no reply comes at all,
stdout stays empty (the reason is on stderr, exit 1).
"""

from __future__ import annotations

import sys
import threading
from typing import Annotated, Any, NoReturn

import typer

from legion.cli.common import (
    State,
    echo,
    emit_json,
    fail,
    host_errors,
    safe_text,
    seconds_parser,
)

EXIT_NO_ANSWER = 1
EXIT_TURN_FAILED = 5
EXIT_TURN_REFUSED = 6
REFUSED_STATUSES = (402, 403)  # a budget cap or a permission: the host said no

EXIT_CODES_HELP = (
    "Exit codes: 0 answered; 1 no answer (timeout, lost stream, the agent failed, unknown "
    "agent); 2 usage; 3 no host running; 5 the turn failed (model, provider or runtime "
    "error); 6 the host refused the turn (budget cap or permission). With --json a failed "
    "turn's reply carries error: {code, message, status}."
)


def exit_code_of(error: Any) -> int:
    """The exit code of a reply's `error` (a TurnError, or None: answered)."""
    if error is None:
        return 0
    return EXIT_TURN_REFUSED if error.status in REFUSED_STATUSES else EXIT_TURN_FAILED


def _no_answer(message: str) -> NoReturn:
    """No reply came (stdout stays empty, `--json` or not): exit 1."""
    fail(message, EXIT_NO_ANSWER)


def _turn(agent: str, text: str, timeout_s: float, as_json: bool) -> int:
    """Send one message and stream the reply; returns an exit code."""
    done = threading.Event()
    outcome: dict[str, Any] = {}
    ready = threading.Event()
    sent_id: list[int] = []
    streamed: list[str] = []

    def follow() -> None:
        try:
            with State.client(timeout_s) as events:
                for event in events.events(on_open=ready.set):
                    etype = getattr(event, "type", "")
                    if getattr(event, "agent", None) != agent:
                        continue
                    if etype == "token_delta" and sent_id:
                        streamed.append(event.text)
                        if not as_json:
                            sys.stdout.write(safe_text(event.text, multiline=True))
                            sys.stdout.flush()
                    elif etype == "agent_notification" and not as_json:
                        note = safe_text(f"[{agent} {event.level}] {event.text}", multiline=True)
                        sys.stderr.write(f"\n{note}\n")
                    elif etype == "agent_reply" and sent_id and event.in_reply_to == sent_id[0]:
                        outcome["reply"] = event
                        return
                    elif etype == "agent_state" and event.state == "failed":
                        outcome["failed"] = event.reason
                        return
        except Exception as exc:  # the stream ends with the host: report, don't trace
            outcome["error"] = str(exc)
        finally:
            ready.set()
            done.set()

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    with host_errors(), State.client() as client:
        client.status()  # fail fast (exit 3) when no host runs
        if not ready.wait(timeout=30) or "error" in outcome:
            _no_answer(f"could not follow the host's events: {outcome.get('error', 'timeout')}")
        queued = client.send(agent, {"text": text})
        sent_id.append(queued.item_id)
    if not done.wait(timeout_s):
        _no_answer(
            f"no reply from {agent} within {timeout_s:.0f}s (is it running? `legion agents ls`)"
        )
    if "error" in outcome:
        _no_answer(f"lost the host's event stream: {outcome['error']}")
    if "failed" in outcome:
        _no_answer(f"{agent} failed: {outcome['failed']}")
    reply = outcome["reply"]
    if as_json:
        emit_json(reply.model_dump())
    elif reply.error is None:
        if not streamed:
            sys.stdout.write(safe_text(reply.text, multiline=True))
        elif "".join(streamed).strip() != reply.text.strip():
            sys.stdout.write("\n" + safe_text(reply.text, multiline=True))
        sys.stdout.write("\n")
    else:
        if streamed:  # what streamed before the failure stays on stdout, ended
            sys.stdout.write("\n")
        sys.stdout.flush()
        refused = exit_code_of(reply.error) == EXIT_TURN_REFUSED
        what = "was refused" if refused else "failed"
        status = f", HTTP {reply.error.status}" if reply.error.status else ""
        echo(
            f"legion: {agent}'s turn {what}: {reply.error.message or reply.text} "
            f"[{reply.error.code}{status}]",
            err=True,
            multiline=True,
        )
    return exit_code_of(reply.error)


def _steer(agent: str, text: str, timeout_s: float, as_json: bool) -> int:
    """Steer the agent's running turn (or its next one); print the answer of that turn."""
    ready, done = threading.Event(), threading.Event()
    steer_id: list[int] = []
    outcome: dict[str, Any] = {}

    def follow() -> None:
        taken = False
        try:
            with State.client(timeout_s) as events:
                for event in events.events(on_open=ready.set):
                    if getattr(event, "agent", None) != agent or not steer_id:
                        continue
                    if event.type == "steer_taken" and event.item_id == steer_id[0]:
                        taken = True
                        outcome["into"] = "running turn"
                    elif event.type == "agent_reply" and (
                        taken or event.in_reply_to == steer_id[0]
                    ):
                        outcome["reply"] = event
                        return
        except Exception as exc:
            outcome["error"] = str(exc)
        finally:
            ready.set()
            done.set()

    threading.Thread(target=follow, daemon=True).start()
    with host_errors(), State.client() as client:
        client.status()
        if not ready.wait(timeout=30) or "error" in outcome:
            fail(f"could not follow the host's events: {outcome.get('error', 'timeout')}", 1)
        steer_id.append(client.steer(agent, text).item_id)
    if not as_json:
        sys.stderr.write(f"[steer queued for {agent}: item {steer_id[0]}]\n")
    if not done.wait(timeout_s) or "reply" not in outcome:
        fail(outcome.get("error") or f"no answer from {agent} within {timeout_s:.0f}s", 1)
    reply = outcome["reply"]
    if as_json:
        emit_json({"steer_item": steer_id[0], "reply": reply.model_dump()})
    elif reply.error is None:
        sys.stdout.write(safe_text(reply.text, multiline=True) + "\n")
    else:
        echo(
            f"legion: {agent}'s turn failed: {reply.error.message or reply.text} "
            f"[{reply.error.code}]",
            err=True,
            multiline=True,
        )
    return exit_code_of(reply.error)


def _require_agent(agent: str) -> None:
    """Exit 3 when no host runs, 1 when `agent` is not one of its agents."""
    with host_errors(), State.client() as client:
        names = [a.name for a in client.agents().agents]
    if agent not in names:
        known = ", ".join(sorted(names)) or "none"
        fail(f"no agent named {agent!r} (configured: {known}); `legion agents ls` lists them")


def chat(
    agent: Annotated[str, typer.Argument(metavar="AGENT", help="The agent to talk to.")],
    message: Annotated[
        str | None,
        typer.Argument(
            metavar="MESSAGE",
            help="Send this and print the reply; omit for a line-by-line conversation.",
        ),
    ] = None,
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout",
            parser=seconds_parser("--timeout", 1, 86400),
            metavar="SECONDS",
            help="Seconds to wait per reply (1 to 86400).",
        ),
    ] = 300.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the reply event as JSON.")] = False,
    steer: Annotated[
        str | None,
        typer.Option(
            "--steer",
            help="Steer the agent: the text reaches its running turn between two tool rounds "
            "(or is its next turn when idle), ahead of its queue; prints that turn's answer.",
        ),
    ] = None,
) -> None:
    """Chat with an agent: its reply streams to stdout as it is generated.

    Exit codes: 0 answered; 1 no answer (no reply in time, the event stream lost, the agent
    failed, an unknown agent); 2 usage; 3 no host running; 5 the turn failed (the model,
    the provider or the agent's runtime; the reason goes to stderr); 6 the host refused the
    turn (a budget cap or a permission). With --json a failed turn's reply carries
    `error: {code, message, status}` (null when answered). Line by line (no MESSAGE), a
    failed turn is reported and the conversation goes on; the exit code is the first
    failure's.
    """
    if steer is not None:
        if message is not None:
            fail("--steer takes the text itself; give no MESSAGE with it", 2)
        raise typer.Exit(_steer(agent, steer, timeout, as_json))
    if message is not None:
        raise typer.Exit(_turn(agent, message, timeout, as_json))
    _require_agent(agent)  # before reading a line: a typo is said at once
    interactive = sys.stdin.isatty()
    worst = 0
    while True:
        if interactive:
            sys.stderr.write("you> ")
            sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            break
        if not line.strip():
            continue
        if interactive:
            sys.stdout.write(f"{safe_text(agent)}> ")
        code = _turn(agent, line.rstrip("\n"), timeout, as_json)
        worst = worst or code
    raise typer.Exit(worst)
