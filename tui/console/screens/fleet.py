"""The fleet view (home): every node, live, with sorting, filters and a summary bar.

Live updates change table cells in place; rows are only added or removed when a node appears,
disappears or crosses the current filter. Rows out of sight are not touched when their node
changes: they are marked stale and brought up to date when they scroll into view or before a
sort needs their values. The table repaints only the cells that changed (FleetTable).

Many new rows at once (the first snapshot, a filter cleared) are added a screenful first, in
sorted order, so the first paint shows them at once; the rest follow a step per frame, and one
sort at the end puts every row in its place.
"""

from __future__ import annotations

import time
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Input
from textual.widgets.data_table import RowKey

from dvic_core.constants import NODE_STATES
from tui import fmt
from tui.console.act import ACT_BINDINGS
from tui.console.fleet import SORT_KEYS, Filter, alerts, cycle, metric
from tui.console.screens.base import DvicScreen
from tui.console.widgets.fleet_table import FleetTable
from tui.console.widgets.summary import STATE_ICON, STATE_STYLE, SummaryBar
from tui.console.widgets.tables import Cell, data_table
from tui.console.widgets.tables import signature as _sig
from tui.console.widgets.tables import sorted_cell as _cell
from tui.textsafe import clean

COLUMNS: list[tuple[str, str, int | None]] = [
    ("name", "Name", 18), ("state", "State", 12), ("seen", "Seen", 5), ("cpu", "CPU", 14),
    ("mem", "Mem", 14), ("disk", "Disk", 5), ("temp", "Temp", 12), ("demos", "Demos", 5),
    ("kind", "Kind", 9), ("group", "Group", 10), ("version", "Version", 8),
]
COLUMN_KEYS = [c[0] for c in COLUMNS]
STATIC_COLUMNS = frozenset({"name", "kind", "group"})  # a sort on these never needs a stale row's values
FRESH_S = 10  # a node seen this recently shows "<10s" in the Seen column
ROWS_PER_FRAME = 12  # visible rows redrawn per frame for live updates (~40 cells, ~10 ms)
FILL_STEP = 250  # new rows added per frame after the first screenful (~50 ms of work each)


def _seen(node: dict[str, Any], now: float) -> str:
    """When the node last reported. A node reporting on time (every few seconds) reads "<10s"
    instead of a count that changes every second: only late nodes' ages tick, so a healthy fleet's
    rows need no repaint each second."""
    last = node.get("last_seen")
    if isinstance(last, int | float) and now - last < FRESH_S:
        return f"<{FRESH_S}s"
    return fmt.age(last, now)


def _level_style(value: float | None, warn: float, bad: float) -> str:
    if value is None:
        return "dim"
    return "bold red" if value >= bad else "yellow" if value >= warn else ""


class FleetScreen(DvicScreen):
    BINDINGS = [
        Binding("enter", "open_node", "Open", show=True),
        Binding("exclamation_mark", "alerts", "Alerts", key_display="!"),
        Binding("d", "demos", "Demos"),
        Binding("T", "today", "Today"),
        Binding("slash", "filter", "Filter"),
        Binding("escape", "clear_filter", "Clear", show=False),
        Binding("t", "cycle_state", "State"),
        Binding("g", "cycle_group", "Group"),
        Binding("k", "cycle_kind", "Kind"),
        Binding("R", "toggle_revoked", "Show revoked", show=False),
        Binding("s", "sort_next", "Sort"),
        Binding("S", "sort_reverse", "Reverse", show=False),
        Binding("l", "logs", "Logs"),
        Binding("L", "node_logs", "Node logs", show=False),
        Binding("m", "maintenance", "Maint.", show=False),
        Binding("a", "admin", "Admin", show=False),
        Binding("n", "add_node", "Add node", show=False),
        Binding("space", "mark", "Mark"),
        *ACT_BINDINGS,
        Binding("X", "run_group", "Run on group/all", show=False),
        Binding("U", "update_group", "Update group/all", show=False),
        Binding("A", "actions", "Actions", show=False),
        Binding("c", "clear_marks", "Clear marks", show=False),
        Binding("B", "book", "Book…", show=False),
    ]

    def __init__(self) -> None:
        super().__init__(id="fleet")
        self.filter = Filter()
        self.sort_column = "name"
        self.sort_reverse = False
        self._cells: dict[str, dict[str, tuple[Any, ...]]] = {}  # what each row shows, to touch only changed cells
        self._resort = False
        self._summary_dirty = True
        self.marked: set[str] = set()  # node ids marked with space: the targets of run/reboot/update
        self._stale: set[str] = set()  # rows out of sight whose node changed since they were drawn
        self._freshen_due = False  # a step of visible stale rows is scheduled for the next frame
        self._backlog: dict[str, None] = {}  # ids of matching nodes waiting for their row, in sorted order

    def body(self) -> ComposeResult:
        yield SummaryBar(id="summary")
        yield Input(placeholder="filter: name, group, kind, state, version — Enter keeps, Escape clears",
                    id="filter")
        yield data_table("nodes", COLUMNS, cls=FleetTable)

    def on_mount(self) -> None:
        self._table = self.query_one(FleetTable)
        self.watch(self._table, "scroll_y", self._scrolled, init=False)
        super().on_mount()
        self.query_one("#filter", Input).display = False
        self.sync_all()
        self.query_one(DataTable).focus()

    # -- rows ----------------------------------------------------------------------------------
    def _row(self, node: dict[str, Any], now: float) -> dict[str, Cell]:
        nid = str(node["id"])
        fleet = self.dvic.fleet
        state = clean(node.get("state", "?"), single_line=True)
        state_style = STATE_STYLE.get(state, "")
        m = {k: metric(node, k) for k in ("cpu", "mem", "disk", "temp")}
        demos = node["demos"]
        alive, total = int(demos.get("alive") or 0), int(demos.get("total") or 0)
        name = _cell(("✓ " if nid in self.marked else "") + clean(node.get("name", "?"), single_line=True),
                     "bold magenta" if nid in self.marked else "", SORT_KEYS["name"](node))
        if alerts(node):
            name.append(" ⚠", style="bold yellow")
        hold = fleet.holds.get(nid)
        if hold is not None:  # booked: mine in green, someone else's in magenta (they may not act on it)
            mine = hold.get("holder") == self.dvic.me.get("name")
            name.append(" ⚑", style="bold green" if mine else "bold magenta")
        if node.get("revoked"):  # shown only on request (R): it will never come back, whatever its state
            state_cell = _cell("⊘ revoked", "dim", SORT_KEYS["state"](node))
        else:
            state_cell = _cell(f"{STATE_ICON.get(state, '?')} {state}", state_style, SORT_KEYS["state"](node))

        def with_trend(key: str, value: str, warn_at: float, bad_at: float, top: float | None) -> Cell:
            cell = _cell(f"{value:>4} ", _level_style(m[key], warn_at, bad_at), SORT_KEYS[key](node))
            cell.append(fmt.sparkline(fleet.trend(nid, key), width=8, top=top), style="blue")
            return cell

        return {
            "name": name,
            "state": state_cell,
            "seen": _cell(_seen(node, now), "dim", SORT_KEYS["seen"](node)),
            "cpu": with_trend("cpu", fmt.percent(m["cpu"]), 70, 90, 100),
            "mem": with_trend("mem", fmt.percent(m["mem"]), 80, 95, 100),
            "disk": _cell(fmt.percent(m["disk"]), _level_style(m["disk"], 80, 90), SORT_KEYS["disk"](node)),
            "temp": with_trend("temp", fmt.celsius(m["temp"]), 70, 80, None),
            "demos": _cell(f"{alive}/{total}", "red" if alive < total else "", SORT_KEYS["demos"](node)),
            "kind": _cell(clean(node.get("kind", ""), single_line=True), "", SORT_KEYS["kind"](node)),
            "group": _cell(clean(node.get("group") or "-", single_line=True), "", SORT_KEYS["group"](node)),
            "version": _cell(clean(node.get("daemon_version") or "-", single_line=True), "",
                             SORT_KEYS["version"](node)),
        }

    def _apply(self, node: dict[str, Any], now: float) -> bool:
        """Adds, updates in place, or removes one node's row according to the filter; True if added."""
        table = self._table
        nid = str(node["id"])
        shown = nid in self._cells
        if not self.filter.matches(node):
            if shown:
                table.remove_row(nid)
                del self._cells[nid]
            return False
        row = self._row(node, now)
        if not shown:
            table.add_row(*(row[k] for k in COLUMN_KEYS), key=nid)
            self._cells[nid] = {k: _sig(v) for k, v in row.items()}
            self._resort = True
            return True
        before = self._cells[nid]
        changed = {}
        for key, cell in row.items():
            sig = _sig(cell)
            if before.get(key) != sig:
                changed[key] = cell
                before[key] = sig
                if key == self.sort_column:
                    self._resort = True
        if changed:
            table.update_cells(nid, changed)
        return False

    def sync_all(self) -> None:
        """Brings the table in line with the fleet and the filter (after a filter change or snapshot)."""
        table = self.query_one(DataTable)
        now = time.time()
        nodes = self.dvic.fleet.nodes
        for nid in [i for i in self._cells if i not in nodes]:
            table.remove_row(nid)
            del self._cells[nid]
        self._backlog.clear()
        shown = [n for n in nodes.values() if str(n["id"]) in self._cells]
        for node in shown:
            self._apply(node, now)
        self._add_rows([n for n in nodes.values() if str(n["id"]) not in self._cells], now)
        self._do_sort()
        self._update_summary()

    def _add_rows(self, nodes: list[dict[str, Any]], now: float) -> None:
        """Rows for nodes not shown yet: all at once if few, else a screenful now and the rest later."""
        new = [n for n in nodes if self.filter.matches(n)]
        if len(new) <= FILL_STEP:
            for node in new:
                self._apply(node, now)
            return
        key = SORT_KEYS[self.sort_column]
        new.sort(key=key, reverse=self.sort_reverse)
        first = max(self._table.size.height, 24) + 10
        for node in new[:first]:
            self._apply(node, now)
        self._backlog.update((str(n["id"]), None) for n in new[first:])
        self.call_after_refresh(self._fill_step)

    def _fill_step(self) -> None:
        """Adds the next rows of the backlog (one step a frame); sorts once the last is in."""
        if not self._backlog or not self.is_mounted:
            return
        nodes = self.dvic.fleet.nodes
        now = time.time()
        step = list(self._backlog)[:FILL_STEP]
        with self.app.batch_update():
            for nid in step:
                del self._backlog[nid]
                if nid in nodes and nid not in self._cells:
                    self._apply(nodes[nid], now)
        if self._backlog:
            self.call_after_refresh(self._fill_step)
            return
        self._do_sort()
        self._update_summary()
        self.dvic.fleet_shown()

    def live_nodes(self, nodes: list[dict[str, Any]], gone: list[str]) -> None:
        if not self.is_mounted:
            return
        table = self.query_one(DataTable)
        for nid in gone:
            self._stale.discard(nid)
            self._backlog.pop(nid, None)
            if nid in self._cells:
                table.remove_row(nid)
                del self._cells[nid]
        now = time.time()
        first, last = self._viewport()
        locations = table._row_locations  # noqa: SLF001 - O(1) row index lookup, public get_row_index raises
        new: list[dict[str, Any]] = []
        drawn, deferred = 0, False
        with self.app.batch_update():
            for node in nodes:
                nid = str(node["id"])
                if nid in self._backlog:
                    continue  # its row is on the way, built from the fleet's latest data
                if nid not in self._cells:
                    new.append(node)
                    continue
                if self.filter.matches(node):
                    index = locations.get(RowKey(nid))
                    in_view = index is not None and first <= index < last
                    if not in_view or drawn >= ROWS_PER_FRAME:
                        # Out of sight: drawn when it scrolls into view. In view beyond this
                        # frame's share: drawn in the next frames (`_freshen`).
                        self._stale.add(nid)
                        if self.sort_column not in STATIC_COLUMNS:
                            self._resort = True
                        if in_view:
                            deferred = True
                        continue
                    drawn += 1
                self._stale.discard(nid)
                self._apply(node, now)
            shown = len(self._cells)
            self._add_rows(new, now)
            added = len(self._cells) > shown
        if added:  # new rows go to their sorted place at once; value changes re-sort on the tick
            self._do_sort()
        if deferred and not self._freshen_due:
            self._freshen_due = True
            self.call_after_refresh(self._freshen_step)
        if not self._backlog:
            self.dvic.fleet_shown()
        self._summary_dirty = True
        if gone or len(nodes) == len(self.dvic.fleet.nodes):  # a snapshot: show its counts at once
            self._update_summary()

    def live_holds(self, node_ids: list[str]) -> None:
        nodes = self.dvic.fleet.nodes
        for nid in node_ids:
            if nid in nodes and nid in self._cells:
                self._apply(nodes[nid], time.time())

    def live_alerts(self) -> None:
        self._summary_dirty = True  # the header's count, shown at the next tick

    # -- periodic work -----------------------------------------------------------------------
    def _viewport(self) -> tuple[int, int]:
        """Row indexes [first, last) on screen, with a margin so a short scroll finds rows ready."""
        table = self._table
        top = int(table.scroll_offset.y)
        height = max(table.size.height, 1)
        return max(top - 5, 0), top + height + 5

    def _freshen(self, only_visible: bool = True, limit: int | None = None) -> None:
        """Applies the stale rows (on screen only, or all of them before a sort).

        With `limit`, at most that many rows now and the rest in the next frames: a burst that
        changes every visible row is drawn over a few frames, and a key never waits for all of it.
        """
        if not self._stale:
            return
        nodes = self.dvic.fleet.nodes
        if only_visible:
            first, last = self._viewport()
            rows = self._table.ordered_rows[first:last]
            due = [nid for nid in (str(r.key.value) for r in rows) if nid in self._stale]
        else:
            due = list(self._stale)
        if limit is not None and len(due) > limit:
            due = due[:limit]
            if not self._freshen_due:
                self._freshen_due = True
                self.call_after_refresh(self._freshen_step)
        now = time.time()
        with self.app.batch_update():
            for nid in due:
                self._stale.discard(nid)
                if nid in nodes:
                    self._apply(nodes[nid], now)

    def _freshen_step(self) -> None:
        self._freshen_due = False
        if self.is_mounted:
            self._freshen(limit=ROWS_PER_FRAME)

    def _scrolled(self) -> None:
        self._freshen()

    def live_tick(self) -> None:
        """Once a second (with the node updates): ages of the visible rows, a pending re-sort, the summary."""
        table = self.query_one(DataTable)
        if self._resort:
            self._do_sort()
        self._freshen(limit=ROWS_PER_FRAME)
        top = int(table.scroll_offset.y)
        now = time.time()
        for row in table.ordered_rows[top : top + table.size.height]:
            nid = str(row.key.value)
            node = self.dvic.fleet.nodes.get(nid)
            if node is None or nid not in self._cells:
                continue
            cell = _cell(_seen(node, now), "dim", SORT_KEYS["seen"](node))
            if self._cells[nid].get("seen") != _sig(cell):
                table.update_cell(nid, "seen", cell)
                self._cells[nid]["seen"] = _sig(cell)
        if self._summary_dirty:
            self._update_summary()

    def _do_sort(self) -> None:
        table = self.query_one(DataTable)
        self._resort = False
        if table.row_count == 0:
            return
        if self.sort_column not in STATIC_COLUMNS:
            self._freshen(only_visible=False)  # the sort reads the cells' values
        current = self.selected_id()
        table.sort(self.sort_column, key=lambda cell: cell.sort_value, reverse=self.sort_reverse)
        if current is not None:
            table.move_cursor(row=table.get_row_index(current), scroll=False)

    def _update_summary(self) -> None:
        self._summary_dirty = False
        arrow = "▼" if self.sort_reverse else "▲"
        self.query_one(SummaryBar).show(
            self.dvic.fleet.counts(), len(self._cells) + len(self._backlog), len(self.dvic.fleet.nodes),
            " ".join(x for x in (self.filter.describe(), f"{len(self.marked)} marked" if self.marked else "") if x),
            f"{self.sort_column} {arrow}",
        )

    # -- selection -----------------------------------------------------------------------------
    def selected_id(self) -> str | None:
        table = self.query_one(DataTable)
        if table.row_count == 0:
            return None
        try:
            return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
        except Exception:  # noqa: BLE001 - cursor outside the rows while the table changes
            return None

    def targets(self) -> list[str]:
        """The marked nodes that still exist, or else the node under the cursor."""
        marked = [nid for nid in self.marked if nid in self.dvic.fleet.nodes]
        if marked:
            return sorted(marked, key=lambda n: str(self.dvic.fleet.nodes[n].get("name")))
        nid = self.selected_id()
        return [nid] if nid else []

    def shown_ids(self) -> list[str]:
        return [str(r.key.value) for r in self.query_one(DataTable).ordered_rows]

    # -- actions -------------------------------------------------------------------------------
    def action_open_node(self) -> None:
        nid = self.selected_id()
        if nid:
            self.dvic.open_node(nid)

    @on(DataTable.RowSelected)
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.dvic.open_node(str(event.row_key.value))

    @on(DataTable.HeaderSelected)
    def _header_selected(self, event: DataTable.HeaderSelected) -> None:
        key = str(event.column_key.value)
        if key == self.sort_column:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_column, self.sort_reverse = key, False
        self._do_sort()
        self._update_summary()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.display = True
        box.focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter.text = event.value.strip()
        self.sync_all()

    @on(Input.Submitted, "#filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        if not event.value.strip():
            self.query_one("#filter", Input).display = False
        self.query_one(DataTable).focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        changed = bool(self.filter.text or self.filter.state or self.filter.group is not None or self.filter.kind
                       or self.filter.revoked)
        box.value = ""
        box.display = False
        self.filter = Filter()
        self.query_one(DataTable).focus()
        if changed:
            self.sync_all()

    def action_cycle_state(self) -> None:
        self.filter.state = cycle(list(NODE_STATES), self.filter.state)
        self.sync_all()

    def action_cycle_group(self) -> None:
        groups = self.dvic.fleet.groups()
        nxt = cycle(groups, self.filter.group)
        self.filter.group = nxt
        self.sync_all()

    def action_cycle_kind(self) -> None:
        self.filter.kind = cycle(self.dvic.fleet.kinds(), self.filter.kind)
        self.sync_all()

    def action_toggle_revoked(self) -> None:
        self.filter.revoked = not self.filter.revoked
        self.sync_all()

    def action_sort_next(self) -> None:
        i = COLUMN_KEYS.index(self.sort_column)
        self.sort_column = COLUMN_KEYS[(i + 1) % len(COLUMN_KEYS)]
        self.sort_reverse = self.sort_column in ("cpu", "mem", "disk", "temp")  # busiest first
        self._do_sort()
        self._update_summary()

    def action_sort_reverse(self) -> None:
        self.sort_reverse = not self.sort_reverse
        self._do_sort()
        self._update_summary()

    def action_logs(self) -> None:
        self.dvic.open_logs(None)

    def action_node_logs(self) -> None:
        nid = self.selected_id()
        if nid:
            self.dvic.open_logs(nid)

    def action_maintenance(self) -> None:
        nid = self.selected_id()
        if nid:
            self.dvic.toggle_maintenance(nid)

    # -- act ---------------------------------------------------------------------------------
    def _refresh_row(self, nid: str) -> None:
        node = self.dvic.fleet.nodes.get(nid)
        if node is not None:
            self._apply(node, time.time())
        self._update_summary()

    def action_mark(self) -> None:
        nid = self.selected_id()
        if nid is None:
            return
        self.marked.symmetric_difference_update({nid})
        self._refresh_row(nid)
        table = self.query_one(DataTable)
        table.move_cursor(row=min(table.cursor_row + 1, table.row_count - 1))

    def action_clear_marks(self) -> None:
        marked, self.marked = self.marked, set()
        for nid in marked:
            self._refresh_row(nid)

    def action_run(self) -> None:
        nodes = self.targets()
        if nodes:
            self.dvic.open_run({"nodes": nodes})

    def _group_target(self) -> dict[str, Any]:
        """The fleet-wide target: the group filtered on, or every node."""
        if self.filter.group is not None:
            return {"group": self.filter.group}
        return {"all": True}

    def action_run_group(self) -> None:
        self.dvic.open_run(self._group_target())

    def action_shell(self) -> None:
        nid = self.selected_id()
        if nid:
            self.dvic.open_shell(nid)

    def action_reboot(self) -> None:
        self.dvic.request_action(self.targets(), "reboot")

    def action_demo_action(self) -> None:
        nodes = self.targets()
        if len(nodes) == 1:
            self.dvic.open_node(nodes[0], tab="demos")
        elif nodes:
            self.notify("demo actions are chosen per node: open the node (enter), Demos tab, D", markup=False)

    def action_update(self) -> None:
        nodes = self.targets()
        if nodes:
            self.dvic.update_daemon({"nodes": nodes})

    def action_update_group(self) -> None:
        self.dvic.update_daemon(self._group_target())

    def action_actions(self) -> None:
        self.dvic.open_actions()

    def action_today(self) -> None:
        self.dvic.open_today()

    def action_book(self) -> None:
        self.dvic.book_machines(self.targets())

    def action_alerts(self) -> None:
        self.dvic.open_alerts()

    def action_demos(self) -> None:
        self.dvic.open_demos()

    def action_admin(self) -> None:
        self.dvic.open_admin()

    def action_add_node(self) -> None:
        self.dvic.open_add_node()
