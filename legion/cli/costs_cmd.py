"""`legion costs`: LLM spend per agent and model, today and this month, against caps."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from legion.cli.common import (
    SINCE_HELP,
    WIDE_HELP,
    State,
    cell,
    emit_json,
    fail,
    print_table,
    since_parser,
)
from legion.cli.common import table as table_of


def _is_day(value: object) -> bool:
    from legion.gateway.llm.budget import day_start

    try:
        day_start(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True


def costs(
    agent: Annotated[
        str | None,
        typer.Option(
            "--agent",
            metavar="NAME",
            help="Only this agent (a configured one, or a removed one with spend this month).",
        ),
    ] = None,
    since: Annotated[
        float | None,
        typer.Option(
            "--since",
            parser=since_parser,
            metavar="TIME",
            help=f"Also total spend since: {SINCE_HELP}.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
    wide: Annotated[bool, typer.Option("--wide", help=WIDE_HELP)] = False,
) -> None:
    """Spend per agent and model (UTC day and month), with each agent's caps."""
    from legion.config import load_config
    from legion.errors import ConfigError
    from legion.gateway.llm.budget import day_key, day_start, window_start
    from legion.store import connect

    if agent is not None:
        from legion.cli.agents_cmd import require_valid_name

        require_valid_name(agent)  # an empty --agent '' is no filter-less listing
    paths = State.paths()
    try:
        config = load_config(paths.config)
    except ConfigError as exc:
        fail(exc.render(), 2)
    if not paths.host_db.exists():
        fail(f"no host database at {paths.host_db}; start the host once with `legion daemon`")
    now = time.time()
    day, month = window_start(now, "day"), window_start(now, "month")
    since_ts = since
    db = connect(paths.host_db, readonly=True)
    try:
        conn = db.connection()  # type: ignore[no-untyped-call]
        where, args = "", []
        if agent is not None:
            where, args = " AND agent = ?", [agent]
        low = min(month, since_ts) if since_ts is not None else month
        rows = list(
            conn.execute(
                "SELECT agent, model, ts, cost_usd, prompt_tokens, completion_tokens FROM ledger "
                "WHERE ts >= ?" + where,
                (low, *args),
            )
        )
        open_rows = list(
            conn.execute("SELECT agent, SUM(amount_usd) FROM reservations GROUP BY agent")
        )
        # Older days are rolled up (legion/retention.py): one row per day, exact per day.
        has_rollups = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'ledger_daily'"
        ).fetchall()
        rolled = (
            [
                row
                for row in conn.execute(
                    "SELECT agent, model, day, CAST(cost_usd AS REAL), CAST(calls AS INTEGER),"
                    " CAST(prompt_tokens AS INTEGER), CAST(completion_tokens AS INTEGER)"
                    " FROM ledger_daily WHERE day >= ?" + where,
                    (day_key(low), *args),
                )
                if _is_day(row[2])  # a damaged row is skipped, not a traceback
            ]
            if has_rollups
            else []
        )
    finally:
        db.close()
    # A --since inside a rolled-up day counts that whole day: say so.
    since_from = since_ts
    for *_, rolled_day, _cost, _calls, _p, _c in rolled:
        start = day_start(rolled_day)
        if since_ts is not None and start < since_ts < start + 86400:
            since_from = min(since_from or start, start)
    rows += [
        (name, model, day_start(rolled_day), cost, p, c, calls)
        for name, model, rolled_day, cost, calls, p, c in rolled
    ]
    reserved = {a: float(v) for a, v in open_rows}
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for name, model, ts, cost, p, c, *calls in rows:
        row = table.setdefault(
            (name, model),
            {
                "agent": name,
                "model": model,
                "today_usd": 0.0,
                "month_usd": 0.0,
                "since_usd": 0.0 if since_ts is not None else None,
                "calls_today": 0,
                "tokens_today": 0,
            },
        )
        if ts >= month:
            row["month_usd"] += cost
        if ts >= day:
            row["today_usd"] += cost
            row["calls_today"] += calls[0] if calls else 1
            row["tokens_today"] += p + c
        if since_from is not None and ts >= since_from:
            row["since_usd"] += cost
    if agent and agent not in config.agents and not any(a == agent for a, _ in table):
        known = ", ".join(sorted(config.agents)) or "none"
        fail(
            f"no agent named {agent!r} in {paths.config} (agents: {known}), and no spend "
            "recorded for it this month",
            1,
        )
    agents_out = []
    names = sorted({a for a, _ in table} | ({agent} if agent is not None else set(config.agents)))
    for name in names:
        cfg = config.agents.get(name)
        models = [v for (a, _), v in sorted(table.items()) if a == name]
        agents_out.append(
            {
                "agent": name,
                "today_usd": sum(m["today_usd"] for m in models),
                "month_usd": sum(m["month_usd"] for m in models),
                "reserved_usd": reserved.get(name, 0.0),
                "daily_cap_usd": cfg.budget.daily_usd if cfg else None,
                "monthly_cap_usd": cfg.budget.monthly_usd if cfg else None,
                "models": models,
            }
        )
    fleet_today = sum(a["today_usd"] for a in agents_out)
    result = {
        "fleet_today_usd": fleet_today,
        "since_from": since_from,
        "fleet_daily_cap_usd": config.llm.fleet_daily_usd,
        "agents": agents_out,
    }
    if as_json:
        emit_json(result)
        return

    def cap(value: float | None) -> str:
        return "-" if value is None else f"${value:.2f}"

    out = table_of("agent", "model", "today", "daily cap", "month", "monthly cap", "calls today")
    for a in agents_out:
        out.add_row(
            cell(a["agent"]),
            "(all)",
            f"${a['today_usd']:.4f}",
            cap(a["daily_cap_usd"]),
            f"${a['month_usd']:.4f}",
            cap(a["monthly_cap_usd"]),
            str(sum(m["calls_today"] for m in a["models"])),
            style="bold",
        )
        for m in a["models"]:
            out.add_row(
                "",
                cell(m["model"]),
                f"${m['today_usd']:.4f}",
                "",
                f"${m['month_usd']:.4f}",
                "",
                str(m["calls_today"]),
            )
    print_table(out, wide)
    typer.echo(f"fleet today: ${fleet_today:.4f} of {cap(config.llm.fleet_daily_usd)} (UTC day)")
