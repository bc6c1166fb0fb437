"""Key bindings (issue 9): every binding has an id and a tooltip, comes from the one table in
legion/tuikeys.py, is on the help screen, and [tui.keys] remaps are validated like the rest
of the config (an unknown id or a malformed key is an error naming the key)."""

from __future__ import annotations

import pytest
from textual.binding import Binding

from legion.config import parse_config
from legion.errors import ConfigError
from legion.tuikeys import BINDINGS, BY_ID, key_problem
from tui.app import LegionApp
from tui.screens.audit import AuditScreen
from tui.screens.blackboard import BlackboardScreen
from tui.screens.browser import BrowserScreen
from tui.screens.dialogs import ConfirmScreen, FormScreen, TextScreen
from tui.screens.fleet import FleetScreen
from tui.screens.help import HelpScreen
from tui.screens.setup import SetupScreen
from tui.widgets.agent_pane import AgentPane
from tui.widgets.sidebar import FleetSidebar

OURS = [
    LegionApp,
    FleetScreen,
    FleetSidebar,
    AgentPane,
    BlackboardScreen,
    AuditScreen,
    BrowserScreen,
    FormScreen,
    ConfirmScreen,
    TextScreen,
    HelpScreen,
    SetupScreen,
]


def ours() -> list[Binding]:
    found = []
    for cls in OURS:
        for binding in cls.__dict__.get("BINDINGS", []):
            assert isinstance(binding, Binding), (cls, binding)
            found.append(binding)
    return found


def test_every_binding_has_an_id_a_tooltip_and_comes_from_the_table() -> None:
    bindings = ours()
    assert bindings
    for binding in bindings:
        assert binding.id in BY_ID, binding
        assert binding.tooltip and binding.description, binding
        spec = BY_ID[binding.id]
        assert (binding.key, binding.action) == (spec.key, spec.action)
    # and every id of the table is bound somewhere (the help screen lists no ghost)
    assert {b.id for b in bindings} == set(BY_ID)


def test_default_keys_are_valid_and_textual_reads_them() -> None:
    for spec in BINDINGS:
        assert key_problem(spec.key) is None, spec
    keymap = LegionApp._normalize_keymap({s.id: s.key for s in BINDINGS})
    assert keymap["help"] == "f1,question_mark"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[tui.keys]\nhlp = "f1"', 'tui.keys.hlp: `hlp` is not a binding id; did you mean "help"?'),
        ('[tui.keys]\nhelp = "ctrl+"', 'tui.keys.help: "ctrl+": `ctrl+` has no key after its'),
        ('[tui.keys]\nhelp = "hyperdrive+x"', "`hyperdrive` in `hyperdrive+x` is not a modifier"),
        ('[tui.keys]\nhelp = "f99"', "`f99` in `f99` is not a key"),
        ('[tui.keys]\nhelp = ""', 'tui.keys.help: "": empty key'),
        ('[tui.keys]\nzoom-pane = "f5"', "tui.keys.zoom-pane: `f5` is also the key of show-costs"),
        ("[tui.keys]\nhelp = 5", "tui.keys.help: input should be a valid string"),
    ],
)
def test_bad_remaps_are_config_errors_naming_the_key(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(text)
    assert any(expected in problem for problem in error.value.problems), error.value.problems


def test_good_remaps_are_accepted() -> None:
    config = parse_config('[tui.keys]\nhelp = "f12,ctrl+h"\nzoom-pane = "question_mark"\n')
    assert config.tui.keys == {"help": "f12,ctrl+h", "zoom-pane": "question_mark"}
