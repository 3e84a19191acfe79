"""The Today view's table: one row per timeline entry (tui/console/today.py), groups one after the other.

As the alerts table: a fresh read changes only the cells that read differently, a row is added or
removed only when an entry appears or leaves, and the rows are re-sorted only when one changed
place; so a refresh every few seconds does not flicker.
"""

from __future__ import annotations

from typing import Any

from textual.widgets.data_table import ColumnKey

from tui.console.today import Entry
from tui.console.widgets.fleet_table import FleetTable
from tui.console.widgets.tables import Cell, signature, sorted_cell

COLUMNS: list[tuple[str, str, int | None]] = [
    ("time", "Time", 5), ("what", "What", 30), ("state", "State", 11), ("nodes", "Nodes", 8), ("detail", "Detail", 0),
]
COLUMN_KEYS = [c[0] for c in COLUMNS]
FIXED_WIDTH = sum(w or 0 for _, _, w in COLUMNS) + 2 * len(COLUMNS) + 2
WIDE_WHAT = 44
STATE_STYLE = {
    "open": "bold green", "closed": "dim", "no hours": "dim", "pending": "cyan", "running": "yellow",
    "done": "green", "partial": "yellow", "failed": "bold red", "missed": "red", "not fired": "dim", "interrupted": "magenta",
    "holding": "bold magenta", "booked": "magenta",
}
STATE_ICON = {"open": "●", "closed": "○", "pending": "·", "running": "◌", "done": "✔", "partial": "◐",
              "failed": "✖", "missed": "✖", "interrupted": "!", "holding": "⚑", "booked": "⚑"}


def column_widths(width: int) -> dict[str, int]:
    """The What and Detail columns take the room the table has (What first, up to WIDE_WHAT)."""
    spare = max(0, width - FIXED_WIDTH)
    grow = min(spare // 3, WIDE_WHAT - 30)
    return {"what": 30 + grow, "detail": max(0, spare - grow)}


def entry_cells(entry: Entry) -> dict[str, Cell]:
    heading = entry.kind == "group"
    state = entry.state
    shown = f"{STATE_ICON.get(state, '')} {state}".strip() if state else ""
    return {
        # The first cell carries the row's place (DataTable sorts on a column's cells).
        "time": sorted_cell(entry.time, "bold" if heading else "dim" if entry.kind in ("open", "close") else "",
                            entry.place),
        "what": sorted_cell(entry.what, "bold reverse" if heading else "", None),
        "state": sorted_cell(shown, STATE_STYLE.get(state, ""), None),
        "nodes": sorted_cell(entry.nodes, "bold" if heading else "", None),
        "detail": sorted_cell(entry.detail, "dim" if not heading else "", None),
    }


class TimelineTable(FleetTable):
    """Rows keyed by entry key; `fill` shows exactly the entries of a fresh read."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, **kwargs)
        for key, label, width in COLUMNS:
            self.add_column(label, key=key, width=width)
        self._cells: dict[str, dict[str, tuple[Any, ...]]] = {}
        self._places: dict[str, tuple[Any, ...]] = {}
        self.entries: dict[str, Entry] = {}

    def on_resize(self) -> None:
        changed = False
        for key, width in column_widths(self.size.width).items():
            column = self.columns[ColumnKey(key)]
            if column.width != width:
                column.width = width
                changed = True
        if changed:
            self._clear_caches()
            self._require_update_dimensions = True
            self.refresh()

    def fill(self, entries: list[Entry]) -> None:
        wanted = {e.key for e in entries}
        for key in [k for k in self._cells if k not in wanted]:
            self.remove_row(key)
            del self._cells[key], self._places[key], self.entries[key]
        resort = False
        for entry in entries:
            resort = self._show(entry) or resort
        if resort and self.row_count:
            current = self.selected_key()
            self.sort("time", key=lambda cell: cell.sort_value)
            if current is not None and current in self._cells:
                self.move_cursor(row=self.get_row_index(current), scroll=False)

    def _show(self, entry: Entry) -> bool:
        """Adds the entry's row or changes its cells that changed; True when its place changed."""
        key = entry.key
        self.entries[key] = entry
        cells = entry_cells(entry)
        if key not in self._cells:
            self.add_row(*(cells[k] for k in COLUMN_KEYS), key=key)
            self._cells[key] = {k: signature(v) for k, v in cells.items()}
            self._places[key] = entry.place
            return True
        before = self._cells[key]
        changed = {}
        for column, cell in cells.items():
            sig = signature(cell)
            if before[column] != sig:
                changed[column] = cell
                before[column] = sig
        moved = self._places[key] != entry.place
        if moved:
            changed["time"] = cells["time"]  # the new sort value, even when it reads the same
            self._places[key] = entry.place
        if changed:
            self.update_cells(key, changed)
        return moved

    def selected_key(self) -> str | None:
        if not self.row_count:
            return None
        try:
            return str(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value)
        except Exception:  # noqa: BLE001 - cursor outside the rows while the table changes
            return None

    def selected(self) -> Entry | None:
        key = self.selected_key()
        return self.entries.get(key) if key is not None else None
