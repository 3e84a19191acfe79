"""The Today view's table: one row per timeline entry (tui/console/today.py), groups one after the other.

As the alerts table: a fresh read changes only the cells that read differently, a row is added or
removed only when an entry appears or leaves, and the rows are re-sorted only when one changed
place; so a refresh every few seconds does not flicker.
"""

from __future__ import annotations

from typing import Any

from tui.console.today import Entry
from tui.console.widgets.keyed_table import KeyedTable
from tui.console.widgets.tables import Cell, sorted_cell

COLUMNS: list[tuple[str, str, int | None]] = [
    ("time", "Time", 5), ("what", "What", 30), ("state", "State", 11), ("nodes", "Nodes", 8), ("detail", "Detail", 0),
]
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


class TimelineTable(KeyedTable):
    """Rows keyed by entry key; `fill` shows exactly the entries of a fresh read."""

    SORT_COLUMN = "time"
    COLUMNS = COLUMNS
    ZEBRA_STRIPES = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.entries: dict[str, Entry] = {}

    def on_resize(self) -> None:
        self.set_widths(column_widths(self.size.width))

    def fill(self, entries: list[Entry]) -> None:
        for key in self.keep_only({e.key for e in entries}):
            del self.entries[key]
        resort = False
        for entry in entries:
            self.entries[entry.key] = entry
            resort = self.put(entry.key, entry_cells(entry), entry.place) or resort
        if resort:
            self.sort_rows()

    def selected(self) -> Entry | None:
        key = self.selected_key()
        return self.entries.get(key) if key is not None else None
