"""`legion setup`: first run without the TUI, interactive or from flags (for scripts).

    legion setup                                   # asks: provider, model, key, starter
    legion setup --provider openai --model gpt-4o-mini --key-stdin --starter assistant --json
    legion setup --provider compatible --api-base http://127.0.0.1:11434/v1 --model llama3.1

The logic is `legion.setup` (shared with the TUI's setup screen). The key is read from a
masked prompt or stdin, never from argv, and never printed. When a host runs on this home
it applies the new legion.toml at once (the starter's agents start); otherwise the next step
is printed. Exit codes: 0 done; 1 refused (every problem printed); 2 usage.
"""

from __future__ import annotations

import getpass
import sys
from typing import Annotated, Any

import typer

from legion.cli.common import State, emit_json, fail, usd_parser


def _ask(prompt: str, default: str | None = None) -> str:
    shown = f"{prompt} [{default}]: " if default else f"{prompt}: "
    sys.stderr.write(shown)
    sys.stderr.flush()
    answer = sys.stdin.readline()
    if not answer:
        fail("setup cancelled (end of input)", 1)
    return answer.strip() or (default or "")


def _pick_provider() -> str:
    from legion.setup import PROVIDERS

    ids = list(PROVIDERS)
    for n, pid in enumerate(ids, 1):
        sys.stderr.write(f"  {n}. {pid:<11} {PROVIDERS[pid].label}\n")
    while True:
        answer = _ask("provider (number or name)", "openai")
        if answer.isdigit() and 1 <= int(answer) <= len(ids):
            return ids[int(answer) - 1]
        if answer in PROVIDERS:
            return answer
        sys.stderr.write(f"  no provider {answer!r}; pick one of the list\n")


def _read_key_stdin() -> str:
    value = sys.stdin.read()
    for end in ("\r\n", "\n"):  # one line ending, as `echo` adds
        if value.endswith(end):
            return value[: -len(end)]
    return value


def _apply_to_running_host(paths: Any) -> tuple[bool, list[str], str]:
    """(applied, agents started, why not) by a config reload of the host on this home."""
    from legion.api.client import ApiError, ControlClient, HostNotRunning

    try:
        with ControlClient(paths, timeout=120) as client:
            result = client.reload()
    except HostNotRunning:
        return False, [], "no host runs on this home"
    except ApiError as exc:
        return False, [], f"the running host refused the new file: {exc}"
    return True, result.added, ""


def setup(
    provider: Annotated[
        str | None,
        typer.Option(
            "--provider",
            help="openai, anthropic, gemini, mistral, groq, deepseek, openrouter, or "
            "compatible (any OpenAI-compatible endpoint: give --api-base).",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option("--model", help="The provider's model name, e.g. gpt-4o-mini."),
    ] = None,
    api_base: Annotated[
        str | None,
        typer.Option(
            "--api-base",
            help="URL of an OpenAI-compatible endpoint (Ollama, vLLM, llama.cpp, a proxy), "
            "e.g. http://127.0.0.1:11434/v1.",
        ),
    ] = None,
    key_stdin: Annotated[
        bool,
        typer.Option(
            "--key-stdin", help="Read the API key from stdin (it goes into the vault only)."
        ),
    ] = False,
    no_key: Annotated[
        bool,
        typer.Option("--no-key", help="The endpoint needs no key (a local server)."),
    ] = False,
    starter: Annotated[
        str | None,
        typer.Option(
            "--starter",
            help="assistant (one agent) or research-team (a researcher and a writer sharing "
            "the blackboard space research/).",
        ),
    ] = None,
    daily_usd: Annotated[
        float,
        typer.Option(
            "--daily-usd", parser=usd_parser("--daily-usd"), help="Each agent's daily budget, USD."
        ),
    ] = 1.0,
    fleet_daily_usd: Annotated[
        float,
        typer.Option(
            "--fleet-daily-usd",
            parser=usd_parser("--fleet-daily-usd"),
            help="The fleet's daily cap, USD.",
        ),
    ] = 5.0,
    input_price: Annotated[
        float | None,
        typer.Option(
            "--input-price",
            parser=usd_parser("--input-price"),
            help="USD per million prompt tokens (needed for a model LiteLLM has no price "
            "for; an OpenAI-compatible endpoint defaults to 0).",
        ),
    ] = None,
    output_price: Annotated[
        float | None,
        typer.Option(
            "--output-price",
            parser=usd_parser("--output-price"),
            help="USD per million completion tokens.",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace an existing legion.toml (kept as legion.toml.bak)."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Set up legion: a provider and model, its key in the vault, a starter fleet.

    Without flags (on a terminal) it asks; with flags it asks nothing (for scripts).
    """
    from legion.setup import PROVIDERS, STARTERS, Choice, SetupError, apply

    paths = State.paths()
    interactive = sys.stdin.isatty() and not key_stdin
    if paths.config.exists() and not force:
        fail(
            f"{paths.config} exists: legion is set up already; edit it (`legion config "
            "check`), or pass --force to replace it (the old file is kept as legion.toml.bak)",
            1,
        )
    missing = [
        flag for flag, value in (("--provider", provider), ("--model", model)) if value is None
    ]
    if missing and not interactive:
        fail(
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} needed without a "
            "terminal, e.g. `legion setup --provider openai --model gpt-4o-mini --key-stdin "
            "--starter assistant`",
            2,
        )
    if provider is None:
        provider = _pick_provider()
    spec = PROVIDERS.get(provider)
    if spec is not None and spec.compatible and api_base is None and interactive:
        api_base = _ask("endpoint URL", "http://127.0.0.1:11434/v1")
    if model is None:
        model = _ask("model", spec.models[0] if spec else None)
    if starter is None:
        if interactive:
            for name, what in STARTERS.items():
                sys.stderr.write(f"  {name:<14} {what}\n")
            starter = _ask("starter", "assistant")
        else:
            starter = "assistant"
    key: str | None = None
    if key_stdin:
        key = _read_key_stdin()
    elif not no_key and interactive and spec is not None:
        optional = "" if spec.key_required else " (Enter for none)"
        # getpass: no echo, and nothing of it reaches a log or the screen
        key = getpass.getpass(f"{spec.label} API key{optional}: ", stream=sys.stderr) or None
    choice = Choice(
        provider=provider,
        model=model,
        starter=starter,
        api_base=api_base,
        key=key,
        daily_usd=daily_usd,
        fleet_daily_usd=fleet_daily_usd,
        input_cost_per_mtok=input_price,
        output_cost_per_mtok=output_price,
    )
    try:
        applied = apply(paths, choice, force=force)
    except SetupError as exc:
        if as_json:
            emit_json({"ok": False, "problems": exc.problems})
            raise typer.Exit(1) from None
        for problem in exc.problems:
            typer.echo(f"legion: {problem}", err=True)
        raise typer.Exit(1) from None
    started, added, why = _apply_to_running_host(paths)
    next_step = (
        ""
        if started
        else "start the fleet: `legion` (the TUI) or `legion daemon`; then "
        f"`legion chat {applied.agents[0]}`"
    )
    if as_json:
        emit_json(
            {
                "ok": True,
                "config": applied.config,
                "backup": applied.backup,
                "credential": applied.credential,
                "model": applied.model,
                "agents": applied.agents,
                "applied": started,
                "started": added,
                "next": next_step,
            }
        )
        return
    agents = ", ".join(applied.agents)
    typer.echo(f"wrote {applied.config} (model {applied.model}; agents {agents})")
    if applied.backup:
        typer.echo(f"the old file is {applied.backup}")
    if applied.credential:
        typer.echo(f"stored the key in the vault as {applied.credential} (system tier)")
    if started:
        typer.echo(
            "the running host applied it"
            + (f"; started {', '.join(added)}" if added else "")
            + f". Talk to it: `legion chat {applied.agents[0]}` or `legion`"
        )
    else:
        typer.echo(f"{why}: {next_step}")
