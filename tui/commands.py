"""The command palette (Ctrl+P): one provider per domain, every title `area: Verb`.

A command acts through the app (`LegionApp.act`), which runs the host call in a worker and
posts the outcome as an `ActionDone` message.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from textual.command import DiscoveryHit, Hit, Hits, Provider

from legion.api.hostclient import AgentDraft
from tui.screens.dialogs import Field

if TYPE_CHECKING:
    from tui.app import LegionApp

Command = tuple[str, str, Callable[[], Any]]  # title, help, callback


class _Domain(Provider):
    """A provider built from a list of (title, help, callback)."""

    @property
    def legion(self) -> LegionApp:
        return self.app  # type: ignore[return-value]

    @abstractmethod
    def commands(self) -> list[Command]:
        """This domain's commands, built from the app's current state."""

    async def discover(self) -> Hits:
        for title, help_text, callback in self.commands():
            yield DiscoveryHit(title, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, callback in self.commands():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), callback, text=title, help=help_text)


class AgentCommands(_Domain):
    def commands(self) -> list[Command]:
        app = self.legion
        out: list[Command] = [
            ("agent: Add", "add an agent to legion.toml and start it", app.add_agent_form)
        ]
        for name in sorted(app.state.agents):
            out += self._for(name)
        return out

    def _for(self, name: str) -> list[Command]:
        app = self.legion

        def action(verb: str) -> Callable[[], None]:
            return lambda: app.agent_action(name, verb)

        async def chat() -> None:
            await app.open_pane(name)

        return [
            (f"agent: Chat with {name}", "open its pane", chat),
            (
                f"agent: Start {name}",
                "start its container (resets a failed agent)",
                action("start"),
            ),
            (f"agent: Stop {name}", "stop its container", action("stop")),
            (f"agent: Restart {name}", "stop then start its container", action("restart")),
            (
                f"agent: Pause {name}",
                "cut its LLM calls in flight, refuse new ones until resumed",
                lambda: app.pause(name),
            ),
            (f"agent: Resume {name}", "let its LLM calls through again", lambda: app.resume(name)),
            (
                f"agent: Remove {name}",
                "remove it from legion.toml (asks first)",
                lambda: app.remove_agent(name),
            ),
        ]


class FleetCommands(_Domain):
    def commands(self) -> list[Command]:
        app = self.legion
        return [
            (
                "fleet: Pause all",
                "the kill switch: cut every LLM call in flight, refuse new ones until resumed",
                lambda: app.pause(None),
            ),
            (
                "fleet: Resume all",
                "lift every pause: LLM calls go through again",
                lambda: app.resume(None),
            ),
        ]


class BlackboardCommands(_Domain):
    def commands(self) -> list[Command]:
        app = self.legion
        return [
            (
                "blackboard: Browse",
                "keys, values, writers, TTLs, claims",
                lambda: app.action_show("blackboard"),
            ),
            ("blackboard: Get", "read one key", app.bb_get_form),
            ("blackboard: Set", "write one key (JSON or text), with a TTL", app.bb_set_form),
            ("blackboard: Delete", "delete one key (asks first)", app.bb_delete_form),
        ]


class AuditCommands(_Domain):
    def commands(self) -> list[Command]:
        app = self.legion
        return [
            (
                "audit: Show",
                "the audit log, by agent and decision",
                lambda: app.action_show("audit"),
            ),
            ("audit: Verify", "check the hash chain now", app.audit_verify),
        ]


class ConfigCommands(_Domain):
    def commands(self) -> list[Command]:
        app = self.legion
        return [
            ("config: Check", "validate legion.toml as it is on disk", app.config_check),
            ("config: Reload", "apply legion.toml to the running host", app.config_reload),
        ]


class BudgetCommands(_Domain):
    def commands(self) -> list[Command]:
        app = self.legion
        return [
            (
                "budget: Show spend",
                "today and this month against the caps",
                lambda: app.action_show("costs"),
            )
        ]


class VaultCommands(_Domain):
    def commands(self) -> list[Command]:
        app = self.legion
        return [
            ("vault: List", "credential names, tiers, bound hosts (never values)", app.vault_list)
        ]


class BrowserCommands(_Domain):
    """The agents' browsers and the VNC hand-off (tui/browser.py does the work)."""

    def commands(self) -> list[Command]:
        app = self.legion
        desk = app.browser
        out: list[Command] = [
            (
                "browser: Show",
                "every agent's browser: page, last action, who waits for a human",
                lambda: app.action_show("browser"),
            )
        ]
        waiting = {v.agent for v in desk.board.waiting()}
        for name in sorted(set(desk.board.views) | set(app.state.agents)):
            view = desk.board.views.get(name)
            if view is not None and not view.enabled:
                continue
            asks = " (it waits for you)" if name in waiting else ""

            def bind(act: Callable[[str], None], agent: str = name) -> Callable[[], None]:
                return lambda: act(agent)

            out += [
                (
                    f"browser: Hand off {name}",
                    f"a VNC link to its browser, with the ssh -L hint{asks}",
                    bind(desk.handoff),
                ),
                (
                    f"browser: Resume {name}",
                    f"end the hand-off; the agent goes on (with your note){asks}",
                    bind(desk.resume),
                ),
                (
                    f"browser: Stop {name}",
                    "stop its browser container (asks first)",
                    bind(desk.stop),
                ),
            ]
        return out


PROVIDERS = {
    BrowserCommands,
    AgentCommands,
    FleetCommands,
    BlackboardCommands,
    AuditCommands,
    ConfigCommands,
    BudgetCommands,
    VaultCommands,
}


def parse_value(text: str) -> Any:
    """A blackboard value typed by the operator: JSON when it parses, else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def agent_fields() -> list[Field]:
    return [
        Field("name", "name", "lowercase letters, digits and -"),
        Field("model", "model alias (empty: the default model)"),
        Field("role", "role (what it is for)"),
        Field("budget_daily", "daily budget, USD (empty: none)"),
    ]


def draft_of(values: dict[str, str]) -> AgentDraft:
    daily = values.get("budget_daily", "").strip()
    return AgentDraft(
        name=values["name"].strip(),
        model=values.get("model", "").strip() or None,
        role=values.get("role", "").strip() or None,
        budget_daily=float(daily) if daily else None,
    )
