"""The fleet's DataTable: fixed-width columns, and cell updates that repaint only those cells.

Textual's DataTable keys all its render caches on one update counter that every `update_cell`
bumps, so one changed cell makes it render every visible row again through Rich (~0.3-0.5 ms a
cell, 500 cells on a 160x48 terminal: the 60-130 ms repaint that held keys up). Here an update
leaves the counter alone: it drops only that cell's entries from the caches (just before the next
paint) and asks for a repaint of that row's line, so a pass of live updates costs the cells that
changed. Sorting, adding and removing rows still bump the counter (row positions move) as before.

It also skips the measuring of new rows: Textual measures every cell of every new row to size
auto-width columns, and every fleet column has a fixed width (22,000 measures for 2,000 nodes,
most of the start-up once).

Both rely on DataTable internals (checked at start: with a Textual whose internals differ, the
table falls back to the stock behaviour, correct but slower; tests/tui checks the fast path is on).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from textual.geometry import Region
from textual.strip import Strip
from textual.widgets import DataTable
from textual.widgets.data_table import CellDoesNotExist, ColumnKey, RowKey

# The DataTable internals the in-place path reads or trims.
_INTERNALS = ("_data", "_row_locations", "_column_locations", "_cell_render_cache", "_row_render_cache",
              "_row_renderable_cache", "_line_cache", "_update_count", "_refresh_region")
# Cache sizes: a few screens' worth of cells and lines (stock: 10,000 cells and 1,000 lines). With
# updates kept in place the entries stay valid longer, and every entry is objects the garbage
# collector walks on each full collection (stock sizes filled to ~300,000 objects in a minute).
CELL_CACHE = 3000
LINE_CACHE = 300


class FleetTable(DataTable[Any]):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.in_place = all(hasattr(self, name) for name in _INTERNALS)
        self._changed: set[tuple[RowKey, ColumnKey]] = set()  # cells whose cached renders are stale
        if self.in_place:
            self._cell_render_cache.maxsize = CELL_CACHE
            for cache in (self._row_render_cache, self._row_renderable_cache, self._line_cache):
                cache.maxsize = LINE_CACHE

    def update_cell(self, row_key: RowKey | str, column_key: ColumnKey | str, value: Any, *,
                    update_width: bool = False) -> None:
        if update_width:
            super().update_cell(row_key, column_key, value, update_width=True)
        else:
            self.update_cells(row_key, {column_key: value})

    def update_cells(self, row_key: RowKey | str, values: dict[Any, Any]) -> None:
        """Sets several cells of one row (by column key), with one repaint of that row."""
        row_key = RowKey(row_key) if isinstance(row_key, str) else row_key
        row = self.rows.get(row_key)
        if row is None or row.height != 1 or self.fixed_rows or not self.in_place:
            for column_key, value in values.items():
                super().update_cell(row_key, column_key, value)
            return
        data = self._data[row_key]
        for key, value in values.items():
            column_key = ColumnKey(key) if isinstance(key, str) else key
            if column_key not in self._column_locations:
                raise CellDoesNotExist(f"No cell exists for row_key={row_key!r}, column_key={column_key!r}.")
            data[column_key] = value
            self._changed.add((row_key, column_key))
        # Rows are one line high and none is fixed: row i is line i under the header. A row out of
        # sight needs no repaint (`_refresh_region` skips it); its caches are dropped all the same.
        line = self._row_locations.get(row_key)
        if line is None:  # not placed yet: nothing of it is on screen
            return
        y = line + (self.header_height if self.show_header else 0)
        self._refresh_region(Region(0, y, max(self.size.width, self.virtual_size.width), 1))

    def _forget_changed(self) -> None:
        """Drops the cached renders of the changed cells, their rows and their lines."""
        if not self._changed:
            return
        changed, self._changed = self._changed, set()
        rows = {row for row, _ in changed}
        indexes = {i for i in (self._row_locations.get(row) for row in rows) if i is not None}
        header = self.header_height if self.show_header else 0
        lines = {header + i for i in indexes}
        drops: list[tuple[Any, Any]] = [
            (self._cell_render_cache, lambda key: (key[0], key[1]) in changed),  # (row, column, ...)
            (self._row_render_cache, lambda key: key[0] in rows),  # (row, line, ...)
            (self._row_renderable_cache, lambda key: key[1] in indexes),  # (update count, row index)
            (self._line_cache, lambda key: key[0] in lines),  # (y, ...)
        ]
        for cache, stale in drops:
            for key in [k for k in cache.keys() if stale(k)]:
                cache.discard(key)

    def render_lines(self, crop: Region) -> list[Strip]:
        self._forget_changed()
        return super().render_lines(crop)

    def _update_dimensions(self, new_rows: Iterable[RowKey]) -> None:
        if any(column.auto_width for column in self.columns.values()):
            super()._update_dimensions(new_rows)
            return
        # Rows have the default height of one line and no labels: only the virtual size is due.
        super()._update_dimensions(())
