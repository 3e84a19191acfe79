"""Row-per-item tables as the screens declare them: keyed columns, a row cursor."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

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
