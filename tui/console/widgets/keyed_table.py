"""A fleet-style table of keyed items whose rows are built from `tables.Cell`s: a row is added, or
only its cells that read differently are updated, and the value of the sort column says when the
row must move. The Alerts, Demos and Today views show their lists with it."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

from textual.widgets.data_table import ColumnKey

from tui.console.widgets.fleet_table import FleetTable
from tui.console.widgets.tables import Cell, signature

Item = TypeVar("Item")


class KeyedTable(FleetTable):
    SORT_COLUMN = ""                # the column whose cells' sort_value orders the rows
    # (key, label, width) of the columns in display order; a width of None fits the content.
    COLUMNS: list[tuple[str, str, int | None]] = []
    ZEBRA_STRIPES = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=self.ZEBRA_STRIPES, **kwargs)
        self._cells: dict[str, dict[str, tuple[Any, ...]]] = {}
        self._places: dict[str, Any] = {}
        self._resort = False  # a row's place changed since the last sort
        self.column_keys = [key for key, _, _ in self.COLUMNS]
        for key, label, width in self.COLUMNS:
            self.add_column(label, key=key, width=width)

    def set_widths(self, widths: dict[str, int]) -> None:
        """Columns to these widths; one re-layout when any changed."""
        changed = False
        for key, width in widths.items():
            column = self.columns[ColumnKey(key)]
            if column.width != width:
                column.width = width
                changed = True
        if changed:
            self._clear_caches()
            self._require_update_dimensions = True
            self.refresh()

    def put(self, key: str, cells: dict[str, Cell], place: Any = None) -> bool:
        """Adds the row or updates its changed cells; True when it is new or its place changed."""
        if key not in self._cells:
            self.add_row(*(cells[k] for k in self.column_keys), key=key)
            self._cells[key] = {k: signature(v) for k, v in cells.items()}
            self._places[key] = place
            return True
        before = self._cells[key]
        changed = {}
        for column, cell in cells.items():
            sig = signature(cell)
            if before[column] != sig:
                changed[column] = cell
                before[column] = sig
        moved = bool(self._places[key] != place)
        if moved:
            changed[self.SORT_COLUMN] = cells[self.SORT_COLUMN]  # its new sort value, even if it reads the same
            self._places[key] = place
        if changed:
            self.update_cells(key, changed)
        return moved

    def update_timed(self, key: str, cells: dict[str, Cell], columns: tuple[str, ...]) -> None:
        """The cells of `columns` that age with the clock, where they read differently now."""
        shown = self._cells[key]
        changed = {c: cells[c] for c in columns if shown[c] != signature(cells[c])}
        if changed:
            self.update_cells(key, changed)
            for column, cell in changed.items():
                shown[column] = signature(cell)

    def drop(self, key: str) -> None:
        if key in self._cells:
            self.remove_row(key)
            del self._cells[key], self._places[key]

    def keep_only(self, keys: Collection[str]) -> list[str]:
        """Drops every row whose key is not in `keys`; the keys dropped."""
        gone = [key for key in self._cells if key not in keys]
        for key in gone:
            self.drop(key)
        return gone

    def refill(self, items: Mapping[str, Item], show: Callable[[Item, float], None]) -> None:
        """Shows exactly `items` (key -> item, after a fresh read) through `show`, in order."""
        now = time.time()
        self.keep_only(items)
        for item in items.values():
            show(item, now)
        self.sort_now()

    def sort_now(self) -> None:
        self._resort = False
        self.sort_rows()

    def sort_if_moved(self) -> None:
        """The re-sort a moved row asked for (a table sorts at most once a tick)."""
        if self._resort:
            self.sort_now()

    def sort_rows(self) -> None:
        """Sorts by SORT_COLUMN, the cursor staying on the row it was on."""
        if not self.row_count:
            return
        current = self.selected_key()
        self.sort(self.SORT_COLUMN, key=lambda cell: cell.sort_value)
        if current is not None and current in self._cells:
            self.move_cursor(row=self.get_row_index(current), scroll=False)

    def visible_keys(self) -> list[str]:
        """Keys of the rows in sight (what a once-a-second refresh of aging cells needs)."""
        top = int(self.scroll_offset.y)
        return [str(row.key.value) for row in self.ordered_rows[top: top + self.size.height]]

    def selected_key(self) -> str | None:
        if not self.row_count:
            return None
        try:
            return str(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value)
        except Exception:  # noqa: BLE001 - cursor outside the rows while the table changes
            return None
