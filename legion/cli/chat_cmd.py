"""`legion chat`: talk to an agent from the terminal, streaming its reply."""

from __future__ import annotations

import sys
import threading
from typing import Annotated, Any

import typer

from legion.cli.common import (
    State,
    emit_json,
    fail,
    host_errors,
    safe_text,
    seconds_parser,
)


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
            fail(f"could not follow the host's events: {outcome.get('error', 'timeout')}", 1)
        queued = client.send(agent, {"text": text})
        sent_id.append(queued.item_id)
    if not done.wait(timeout_s):
        fail(
            f"no reply from {agent} within {timeout_s:.0f}s (is it running? `legion agents ls`)", 1
        )
    if "error" in outcome:
        fail(f"lost the host's event stream: {outcome['error']}", 1)
    if "failed" in outcome:
        fail(f"{agent} failed: {outcome['failed']}", 1)
    reply = outcome["reply"]
    if as_json:
        emit_json(reply.model_dump())
    else:
        if not streamed:
            sys.stdout.write(safe_text(reply.text, multiline=True))
        elif "".join(streamed).strip() != reply.text.strip():
            sys.stdout.write("\n" + safe_text(reply.text, multiline=True))
        sys.stdout.write("\n")
    return 0


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
    else:
        sys.stdout.write(reply.text + "\n")
    return 0


def chat(
    agent: Annotated[str, typer.Argument(help="The agent to talk to.")],
    message: Annotated[
        str | None,
        typer.Argument(help="Send this and print the reply; omit for a line-by-line conversation."),
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
    """Chat with an agent: its reply streams to stdout as it is generated."""
    if steer is not None:
        if message is not None:
            fail("--steer takes the text itself; give no MESSAGE with it", 2)
        raise typer.Exit(_steer(agent, steer, timeout, as_json))
    if message is not None:
        raise typer.Exit(_turn(agent, message, timeout, as_json))
    interactive = sys.stdin.isatty()
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
        _turn(agent, line.rstrip("\n"), timeout, as_json)
