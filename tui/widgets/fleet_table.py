"""The fleet's DataTable: fixed-width columns, so new rows need no measuring.

Textual's DataTable measures every cell of every new row to size auto-width columns. The fleet
table gives every column a width, so that work (22,000 measures for 2,000 nodes, most of the
console's start-up) changes nothing: it is skipped while no column is auto-sized.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from textual.widgets import DataTable
from textual.widgets.data_table import RowKey


class FleetTable(DataTable[Any]):
    def _update_dimensions(self, new_rows: Iterable[RowKey]) -> None:
        if any(column.auto_width for column in self.columns.values()):
            super()._update_dimensions(new_rows)
            return
        # Rows have the default height of one line and no labels: only the virtual size is due.
        super()._update_dimensions(())
