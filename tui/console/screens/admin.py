"""The admin screen: approve pending operators, change roles, issue tokens, revoke nodes, audit trail."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Static, TabbedContent, TabPane

from dvic_core.constants import ROLES
from tui import fmt
from tui.api.errors import ApiError
from tui.console.screens.base import DvicScreen
from tui.console.screens.dialogs import ChoiceDialog, ConfirmDialog, InputDialog, SecretDialog
from tui.console.widgets.tables import data_table
from tui.textsafe import literal

STATUS_STYLE = {"pending": "bold yellow", "active": "green", "disabled": "dim"}
OPERATOR_COLUMNS = (("name", "Name"), ("role", "Role"), ("status", "Status"), ("created", "Created"))
NODE_COLUMNS = (("name", "Name"), ("kind", "Kind"), ("group", "Group"), ("state", "State"), ("revoked", "Revoked"))
AUDIT_COLUMNS = (("time", "Time"), ("who", "Operator"), ("action", "Action"), ("target", "Target"))
SESSION_COLUMNS = (("started", "Started"), ("node", "Node"), ("who", "Operator"), ("length", "Length"),
                   ("exit", "Exit"), ("output", "Output"))


def audit_entries(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The audit page's list, whatever its key (the protocol names only cursor and limit)."""
    for key in ("entries", "audit", "items", "records"):
        if isinstance(doc.get(key), list):
            return [x for x in doc[key] if isinstance(x, dict)]
    return []


class AdminScreen(DvicScreen):
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("a", "approve", "Approve"),
        Binding("o", "role", "Role"),
        Binding("t", "token", "Token"),
        Binding("x", "disable", "Disable"),
        Binding("D", "revoke", "Revoke node"),
        Binding("r", "reload", "Reload"),
        Binding("s", "sessions", "Recordings", show=False),
        Binding("p", "replay", "Replay"),
    ]

    def __init__(self) -> None:
        super().__init__(id="admin")
        self.operators: list[dict[str, Any]] = []

    def body(self) -> ComposeResult:
        yield Static(id="admin-status")
        with TabbedContent(initial="ops"):
            with TabPane("Operators", id="ops"):
                yield data_table("op-table", OPERATOR_COLUMNS)
            with TabPane("Nodes", id="admin-nodes"):
                yield data_table("revoke-table", NODE_COLUMNS)
            with TabPane("Audit", id="audit"):
                yield data_table("audit-table", AUDIT_COLUMNS, zebra=False)
            with TabPane("Recordings", id="recordings"):
                yield data_table("session-table", SESSION_COLUMNS)

    def on_mount(self) -> None:
        super().on_mount()
        self.reload()

    @work(exclusive=True, group="admin")
    async def reload(self) -> None:
        status = self.query_one("#admin-status", Static)
        try:
            self.operators = await self.dvic.api.operators()
            audit = audit_entries(await self.dvic.api.audit(limit=200))
        except ApiError as exc:
            msg = "Admin role required." if exc.status == 403 else exc.message
            status.update(Text(f"⚠ {msg}", style="bold red"))
            return
        pending = sum(1 for o in self.operators if o.get("status") == "pending")
        status.update(Text(f"{len(self.operators)} operators, {pending} pending approval",
                           style="bold yellow" if pending else ""))
        table = self.query_one("#op-table", DataTable)
        table.clear()
        # Pending accounts first: they are what an admin comes here for.
        for op in sorted(self.operators, key=lambda o: (o.get("status") != "pending", str(o.get("name")))):
            st = str(op.get("status", "?"))
            table.add_row(literal(op.get("name", "?")), literal(op.get("role", "-")),
                          literal(st, style=STATUS_STYLE.get(st, "")),
                          Text(fmt.stamp(op.get("created_at")), style="dim"), key=str(op.get("name")))
        audit_table = self.query_one("#audit-table", DataTable)
        audit_table.clear()
        for entry in audit:
            audit_table.add_row(
                Text(fmt.stamp(entry.get("ts")), style="dim"),
                literal(entry.get("operator") or entry.get("actor") or "-"),
                literal(entry.get("action", "")),
                literal(entry.get("target") or ""),
            )
        self._show_nodes()
        self.load_sessions()

    @work(exclusive=True, group="admin-sessions")
    async def load_sessions(self) -> None:
        """Recorded shell sessions, newest first (operators and admins may list them)."""
        try:
            sessions = await self.dvic.api.sessions()
        except ApiError as exc:
            self.notify(f"recordings: {exc.message}", severity="error", markup=False)
            return
        table = self.query_one("#session-table", DataTable)
        table.clear()
        now = time.time()
        for rec in sorted(sessions, key=lambda r: -float(r.get("started_at") or 0)):
            started, ended = rec.get("started_at"), rec.get("ended_at")
            length = fmt.duration((ended or now) - started) if isinstance(started, int | float) else "-"
            code = rec.get("exit_code")
            table.add_row(Text(fmt.stamp(started), style="dim"),
                          literal(rec.get("node_name") or rec.get("node_id") or "?", style="bold"),
                          literal(rec.get("operator", "")), Text(length + ("" if ended else " (open)")),
                          literal("-" if code is None else code), Text(fmt.size(rec.get("bytes_out")), style="dim"),
                          key=str(rec.get("id")))

    def action_sessions(self) -> None:
        self.query_one(TabbedContent).active = "recordings"

    def action_replay(self) -> None:
        if self._active_tab() != "recordings":
            self.query_one(TabbedContent).active = "recordings"
            return
        sid = self._selected("#session-table")
        if sid:
            self.dvic.replay_session(sid)

    def _show_nodes(self) -> None:
        table = self.query_one("#revoke-table", DataTable)
        table.clear()
        for node in sorted(self.dvic.fleet.nodes.values(), key=lambda n: str(n.get("name"))):
            table.add_row(literal(node.get("name", "?")), literal(node.get("kind", "")),
                          literal(node.get("group") or "-"), literal(node.get("state", "?")),
                          Text("yes", style="red") if node.get("revoked") else Text("no", style="dim"),
                          key=str(node["id"]))

    def _selected(self, table_id: str) -> str | None:
        table = self.query_one(table_id, DataTable)
        if table.row_count == 0:
            return None
        return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    def _active_tab(self) -> str:
        return str(self.query_one(TabbedContent).active)

    def _selected_operator(self) -> str | None:
        """The operator under the cursor, when the Operators tab is the one shown."""
        return self._selected("#op-table") if self._active_tab() == "ops" else None

    # -- actions -------------------------------------------------------------------------------
    def action_back(self) -> None:
        self.dismiss()

    def action_reload(self) -> None:
        self.reload()

    async def _call(self, what: str, coro: Awaitable[dict[str, Any]]) -> dict[str, Any] | None:
        try:
            result = await coro
        except ApiError as exc:
            self.notify(f"{what}: {exc.message} ({exc.code})", severity="error", markup=False)
            return None
        self.notify(what, markup=False)
        self.reload()
        return result

    @work(group="admin-act")
    async def action_approve(self) -> None:
        name = self._selected_operator()
        if not name:
            return
        account = next((o for o in self.operators if o.get("name") == name), {})
        code = None
        if account.get("needs_code"):
            # The code its requester was shown ties the account to a person: ask them for it.
            code = await self.app.push_screen_wait(InputDialog(
                f"One-time code {name} was shown when registering (ask them):", "XXXX-XXXX"))
            if not code:
                return
        role = await self.app.push_screen_wait(ChoiceDialog(f"Approve {name} with role:", list(ROLES), "viewer"))
        if role:
            await self._call(f"approved {name} as {role}", self.dvic.api.approve_operator(name, role, code))

    @work(group="admin-act")
    async def action_role(self) -> None:
        name = self._selected_operator()
        if not name:
            return
        current = next((o.get("role") for o in self.operators if o.get("name") == name), None)
        role = await self.app.push_screen_wait(ChoiceDialog(f"Role for {name}:", list(ROLES), current))
        if role and role != current:
            await self._call(f"{name} is now {role}", self.dvic.api.set_role(name, role))

    @work(group="admin-act")
    async def action_token(self) -> None:
        name = self._selected_operator()
        if not name:
            return
        if not await self.app.push_screen_wait(ConfirmDialog(f"Issue a new API token for {name}?", "Issue")):
            return
        doc = await self._call(f"new token for {name}", self.dvic.api.new_token(name))
        if doc and doc.get("token"):
            await self.app.push_screen_wait(SecretDialog(f"New token for {name}", str(doc["token"])))

    @work(group="admin-act")
    async def action_disable(self) -> None:
        name = self._selected_operator()
        if not name:
            return
        if await self.app.push_screen_wait(
            ConfirmDialog(f"Disable operator {name} and all its tokens?", "Disable")
        ):
            await self._call(f"disabled {name}", self.dvic.api.disable_operator(name))

    @work(group="admin-act")
    async def action_revoke(self) -> None:
        if self._active_tab() != "admin-nodes":
            self.query_one(TabbedContent).active = "admin-nodes"
            return
        nid = self._selected("#revoke-table")
        node = self.dvic.fleet.nodes.get(nid or "")
        if not node:
            return
        question = (f"Revoke node {node.get('name')}? Its certificate is refused from now on and a live "
                    "connection is closed. It must be enrolled again to come back.")
        if await self.app.push_screen_wait(ConfirmDialog(question, "Revoke")):
            await self._call(f"revoked {node.get('name')}", self.dvic.api.revoke_node(nid or ""))

    def live_nodes(self, nodes: list[dict[str, Any]], gone: list[str]) -> None:
        if self.is_mounted and (gone or any(n.get("revoked") for n in nodes)):
            self._show_nodes()
