"""Command palette entries (ctrl+p): screens, quick filters, and every node by name."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from textual.command import DiscoveryHit, Hit, Hits, Provider

from dvic_core.constants import NODE_STATES
from tui.textsafe import clean

if TYPE_CHECKING:
    from tui.console.host import ConsoleHost


class DvicCommands(Provider):
    def _commands(self) -> list[tuple[str, Callable[[], object], str]]:
        app: ConsoleHost = self.app  # type: ignore[assignment]
        cmds: list[tuple[str, Callable[[], object], str]] = [
            ("Fleet view", app.show_fleet, "the table of every node"),
            ("Alerts", app.open_alerts, "the server's alerts, firing first: acknowledge, silence"),
            ("Demos", app.open_demos, "every supervised demo on every node: deploy, roll back"),
            ("Silences", partial(app.open_alerts, "silences"), "silences of alerts: add, remove"),
            ("Today", app.open_today, "per group: opening hours, runbooks and their outcome, bookings"),
            ("Logs: all nodes", partial(app.open_logs, None), "follow every node's logs"),
            ("Admin", app.open_admin, "operators, node revocation, audit trail"),
            ("Add node", app.open_add_node, "enroll a machine and install its daemon over SSH"),
            ("Help: keys", app.action_help, "every key of this screen"),
            ("Reconnect now", app.action_reconnect, "skip the retry wait"),
            ("Actions: all nodes", app.open_actions, "reboots, demo actions and daemon updates, live"),
            ("Run a command on all nodes", partial(app.open_run, {"all": True}), "fleet-wide: confirmed first"),
            ("Update daemon: all nodes", partial(app.update_daemon, {"all": True}), "confirmed first"),
            ("Book machines", partial(app.book_machines, []), "by name, or a group and a count"),
        ]
        for state in NODE_STATES:
            cmds.append((f"Filter fleet: state {state}", partial(app.filter_fleet, state=state), ""))
        for group in app.fleet.groups():
            label = clean(group or "(none)", single_line=True)
            cmds.append((f"Filter fleet: group {label}", partial(app.filter_fleet, group=group), ""))
            cmds.append((f"Logs: group {label}", partial(app.open_logs, None, group=group), ""))
            cmds.append((f"Run on group {label}", partial(app.open_run, {"group": group}), "confirmed first"))
        for nid, node in app.fleet.nodes.items():
            name = clean(node.get("name", nid), single_line=True)
            cmds.append((f"Open node {name}", partial(app.open_node, nid), ""))
            cmds.append((f"Logs: node {name}", partial(app.open_logs, nid), ""))
            cmds.append((f"Run on node {name}", partial(app.open_run, {"nodes": [nid]}), ""))
            cmds.append((f"Shell on node {name}", partial(app.open_shell, nid), "the console comes back after"))
            cmds.append((f"Reboot node {name}", partial(app.request_action, [nid], "reboot"), "confirmed first"))
            cmds.append((f"Update daemon on {name}", partial(app.update_daemon, {"nodes": [nid]}), "confirmed"))
            cmds.append((f"Actions of node {name}", partial(app.open_actions, nid), ""))
            cmds.append((f"Book node {name}", partial(app.book_machines, [nid]), "from, to, note"))
        return cmds

    async def discover(self) -> Hits:
        for title, action, help_text in self._commands()[:8]:
            yield DiscoveryHit(title, action, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, action, help_text in self._commands():
            score = matcher.match(title)
            if score > 0:
                # Titles are plain strings built from cleaned node text; highlight() returns Content.
                yield Hit(score, matcher.highlight(title), action, text=title, help=help_text)
