"""Tracked actions (reboot, demo start/stop/restart, daemon updates) with their states, live.

States come from `GET /api/v1/actions`, re-read when an `action_*` event arrives on the live
stream and, while any action is unfinished, every few seconds (a lost action has no event until
its deadline). Each row also shows the node's daemon version, so an update can be watched landing.
"""

from __future__ import annotations

import time
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Static

from tui import fmt
from tui.api.errors import ApiError
from tui.api.follow_command import ACTION_POLL_S, ActionTracker, action_final
from tui.console.act import ACTION_STYLE
from tui.console.screens.base import DvicScreen
from tui.console.widgets.tables import data_table
from tui.textsafe import literal

COLUMNS = (("when", "Updated", 9), ("node", "Node", 18), ("action", "Action", 14), ("demo", "Demo", 14),
           ("state", "State", 12), ("version", "Daemon", 9), ("message", "Message", None))


def fill_actions_table(table: DataTable[Any], actions: list[dict[str, Any]], versions: dict[str, str]) -> None:
    """(Re)fills a table made with `COLUMNS`: newest first, literal node text, the cursor kept on its action."""
    current = None
    if table.row_count:
        current = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
    table.clear()
    for act in sorted(actions, key=lambda a: -float(a.get("requested_at") or 0)):
        state = str(act.get("state", "?"))
        table.add_row(
            Text(fmt.clock(act.get("updated_at")), style="dim"),
            literal(act.get("node_name") or act.get("node") or "?", style="bold"),
            literal(act.get("action", "?")),
            literal(act.get("demo") or "-"),
            literal(state, style=ACTION_STYLE.get(state, "")),
            literal(versions.get(str(act.get("node")), "-")),
            literal(act.get("message") or ""),
            key=str(act.get("id")),
        )
    if current is not None and current in {str(a.get("id")) for a in actions}:
        table.move_cursor(row=table.get_row_index(str(current)), scroll=False)


class ActionsScreen(DvicScreen):
    BINDINGS = [Binding("escape", "back", "Back"), Binding("r", "reload", "Reload")]

    def __init__(self, node_id: str | None = None, highlight: list[str] | None = None) -> None:
        super().__init__(classes="actions-screen")
        self.node_id = node_id
        self.requested = ActionTracker({"id": aid} for aid in highlight or [])  # just requested: the title counts them
        self.actions: list[dict[str, Any]] = []
        self._last = 0.0
        self._shown_versions: dict[str, str] = {}  # the daemon versions the table shows

    def body(self) -> ComposeResult:
        yield Static(id="actions-title")
        yield data_table("actions-table", COLUMNS)

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one(DataTable).focus()
        self.reload()
        self.set_interval(ACTION_POLL_S, self._tick)

    def _versions(self) -> dict[str, str]:
        return {nid: str(n.get("daemon_version") or "-") for nid, n in self.dvic.fleet.nodes.items()}

    @work(exclusive=True, group="actions")
    async def reload(self) -> None:
        self._last = time.monotonic()
        try:
            self.actions = await self.dvic.api.actions(node=self.node_id)
        except ApiError as exc:
            self.notify(f"actions: {exc.message}", severity="error", markup=False)
            return
        self.requested.on_rows(self.actions)
        self._shown_versions = self._versions()
        fill_actions_table(self.query_one(DataTable), self.actions, self._shown_versions)
        self._title()

    def _title(self) -> None:
        where = "all nodes"
        if self.node_id:
            where = str(self.dvic.fleet.nodes.get(self.node_id, {}).get("name", self.node_id))
        text = Text("Actions on ", style="bold")
        text.append_text(literal(where))
        done, final, total = self.requested.progress()
        if total:
            text.append(f"  │ requested now: {done}/{total} done, {final}/{total} finished",
                        style="green" if final == total else "yellow")
        open_ = sum(1 for a in self.actions if not action_final(a))
        if open_:
            text.append(f"  │ {open_} in progress", style="yellow")
        self.query_one("#actions-title", Static).update(text)

    def _tick(self) -> None:
        if any(not action_final(a) for a in self.actions) and time.monotonic() - self._last >= ACTION_POLL_S:
            self.reload()

    def live_event(self, event: dict[str, Any]) -> None:
        if str(event.get("kind", "")).startswith("action_") and (
                self.node_id is None or event.get("node") == self.node_id):
            self.reload()

    def live_nodes(self, nodes: list[dict[str, Any]], gone: list[str]) -> None:
        # A daemon version changes when an update lands: show it (only then: metrics change constantly).
        versions = self._versions()
        mentioned = {str(a.get("node")) for a in self.actions}
        if self.is_mounted and any(self._shown_versions.get(n) != versions.get(n) for n in mentioned):
            fill_actions_table(self.query_one(DataTable), self.actions, versions)
            self._shown_versions = versions

    def action_back(self) -> None:
        self.dismiss()

    def action_reload(self) -> None:
        self.reload()
