"""Row-per-item tables as the screens declare them: keyed columns, a row cursor, and cells that
remember what they sort by and compare cheaply (so live updates touch only the cells that changed)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.text import Text
from textual.widgets import DataTable

# A column: (key, label) or (key, label, width); no width sizes it to its content.
Column = tuple[str, str] | tuple[str, str, int | None]


def data_table(table_id: str, columns: Iterable[Column], zebra: bool = True,
               cls: type[DataTable[Any]] = DataTable) -> DataTable[Any]:
    """A `cls` table with a row cursor (striped unless `zebra` is False) and these columns."""
    table = cls(id=table_id, cursor_type="row", zebra_stripes=zebra)
    for key, label, *width in columns:
        table.add_column(label, key=key, width=width[0] if width else None)
    return table


class Cell(Text):
    """A table cell that remembers the value it sorts by (DataTable sorts on cell values)."""

    sort_value: Any = None


def sorted_cell(plain: str, style: str, sort_value: Any) -> Cell:
    """`plain` must already be safe (cleaned node text or our own formatting)."""
    cell = Cell(plain, style=style, end="", no_wrap=True)
    cell.sort_value = sort_value
    return cell


def signature(cell: Text) -> tuple[Any, ...]:
    """What a cell looks like, cheaply comparable: skip updates that would change nothing."""
    return (cell.plain, str(cell.style), tuple((sp.start, sp.end, str(sp.style)) for sp in cell.spans))
