"""Textual `Binding`s built from `legion.tuikeys` (one table: ids, keys, tooltips, scopes)."""

from __future__ import annotations

from textual.binding import Binding, BindingType

from legion.tuikeys import BINDINGS, BY_ID


def bindings(scope: str) -> list[BindingType]:
    """Every binding of `scope`, each with its id (remappable) and tooltip."""
    return [
        Binding(
            spec.key,
            spec.action,
            spec.description,
            show=spec.show,
            id=spec.id,
            tooltip=spec.tooltip,
        )
        for spec in BINDINGS
        if spec.scope == scope
    ]


def keymap(overrides: dict[str, str]) -> dict[str, str]:
    """`[tui.keys]` as a Textual keymap (ids were validated with the config)."""
    return {binding_id: keys for binding_id, keys in overrides.items() if binding_id in BY_ID}


def effective(overrides: dict[str, str]) -> list[tuple[str, str, str, str]]:
    """(scope, id, keys, tooltip) of every binding after remapping, for the help screen."""
    return [
        (spec.scope, spec.id, overrides.get(spec.id, spec.key), spec.tooltip) for spec in BINDINGS
    ]
