"""Spend against a cap as a one-line gauge; `-warn` near the cap, `-over` at or past it."""

from __future__ import annotations

from textual.widgets import Static

WARN_AT = 0.8


def bar(share: float | None, width: int) -> str:
    if share is None:
        return "·" * width
    filled = min(width, round(max(0.0, share) * width))
    return "█" * filled + "░" * (width - filled)


def level(share: float | None) -> str:
    """`over`, `warn`, `ok`, or `none` (no cap)."""
    if share is None:
        return "none"
    if share >= 1.0:
        return "over"
    return "warn" if share >= WARN_AT else "ok"


def money(value: float | None) -> str:
    if value is None:
        return "no cap"
    return f"${value:.2f}" if value >= 0.01 or value == 0 else f"${value:.4f}"


class SpendGauge(Static):
    DEFAULT_CSS = """
    SpendGauge { height: 1; color: $success; }
    SpendGauge.-warn { color: $warning; }
    SpendGauge.-over { color: $error; text-style: bold; }
    SpendGauge.-none { color: $text-muted; }
    """

    def __init__(self, label: str, *, id: str | None = None, width: int = 20) -> None:
        super().__init__(id=id)
        self.label = label
        self.bar_width = width

    def show(self, spent: float, cap: float | None) -> None:
        share = None if not cap else spent / cap
        state = level(share)
        for name in ("ok", "warn", "over", "none"):
            self.set_class(state == name, f"-{name}")
        pct = "" if share is None else f" {share * 100:3.0f}%"
        self.update(
            f"{self.label:<14} {bar(share, self.bar_width)} {money(spent)} of {money(cap)}{pct}"
        )
