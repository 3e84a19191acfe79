"""The alerts table of the Alerts view and the node view: one row per alert, firing first.

As the fleet table: an alert frame changes the cells of its row that changed (FleetTable's
in-place path), a row is added or removed only when an alert appears or leaves, and the rows
are re-sorted only when an alert's place changes (fired, acknowledged, resolved), once per tick.
The Since column of the visible rows is brought up to date once a second.
"""

from __future__ import annotations

import time
from typing import Any

from textual.widgets.data_table import ColumnKey, RowKey

from tui import fmt
from tui.console.alerts import Alert, order_key, shown_state, subject_label
from tui.console.widgets.fleet_table import FleetTable
from tui.console.widgets.tables import Cell, signature, sorted_cell
from tui.textsafe import clean

COLUMNS: list[tuple[str, str, int | None]] = [
    ("severity", "Severity", 8), ("rule", "Rule", 14), ("subject", "Subject", 14), ("since", "Since", 5),
    ("state", "State", 14), ("by", "Ack'd by", 9), ("summary", "Summary", 0),
]
# Each column has a cell's padding on both sides, and the vertical scrollbar's room is kept so a
# long list grows no horizontal one. At 80 columns the table fits without the summary (the line
# under the table shows the selected alert's); wider, rule and subject get room, then the summary.
FIXED_WIDTH = sum(w or 0 for _, _, w in COLUMNS) + 2 * len(COLUMNS) + 2
MIN_SUMMARY = 10
WIDE = {"rule": 18, "subject": 20}
COLUMN_KEYS = [c[0] for c in COLUMNS]
SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}
STATE_STYLE = {"firing": "bold red", "silenced": "magenta", "acknowledged": "yellow", "resolved": "green"}
STATE_ICON = {"firing": "●", "silenced": "◌", "acknowledged": "◐", "resolved": "✔"}


def column_widths(width: int) -> dict[str, int]:
    """The widths of the columns that follow the table's: rule, subject and summary."""
    spare = width - FIXED_WIDTH
    grow = sum(WIDE[k] - w for k, _, w in COLUMNS if k in WIDE and w)
    if spare < grow + MIN_SUMMARY:
        return {"summary": spare if spare >= MIN_SUMMARY else 0}
    return {**WIDE, "summary": spare - grow}


def _text(value: Any) -> str:
    return clean(value if value is not None else "-", single_line=True)


def since(alert: Alert, now: float) -> str:
    """How long the alert has fired (open), or since it ended (resolved)."""
    when = alert.get("resolved") if alert.get("state") == "resolved" else alert.get("started")
    return fmt.age(when if isinstance(when, int | float) else None, now)


def alert_cells(alert: Alert, now: float) -> dict[str, Cell]:
    severity = str(alert.get("severity") or "?")
    state = shown_state(alert)
    return {
        # The first cell carries the row's place in the view (DataTable sorts on a column's cells).
        "severity": sorted_cell(_text(severity), SEVERITY_STYLE.get(severity, ""), order_key(alert)),
        "rule": sorted_cell(_text(alert.get("rule")), "bold", None),
        "subject": sorted_cell(_text(subject_label(alert)), "", None),
        "since": sorted_cell(since(alert, now), "dim", None),
        "state": sorted_cell(f"{STATE_ICON.get(state, '?')} {_text(state)}", STATE_STYLE.get(state, ""), None),
        "by": sorted_cell(_text(alert.get("acked_by") or "-"), "", None),
        "summary": sorted_cell(_text(alert.get("summary") or ""), "dim", None),
    }


class AlertTable(FleetTable):
    """Rows keyed by alert id. `show` and `forget` change one row; `tick` sorts and ages."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        for key, label, width in COLUMNS:
            self.add_column(label, key=key, width=width)
        self._cells: dict[str, dict[str, tuple[Any, ...]]] = {}
        self._places: dict[str, tuple[Any, ...]] = {}
        self._resort = False

    def on_resize(self) -> None:
        widths = column_widths(self.size.width)
        for key, _, width in COLUMNS:
            widths.setdefault(key, width or 0)
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

    def show(self, alert: Alert, now: float | None = None) -> None:
        """Adds the alert's row or changes the cells of it that changed."""
        key = str(alert["id"])
        cells = alert_cells(alert, time.time() if now is None else now)
        place = cells["severity"].sort_value
        if key not in self._cells:
            self.add_row(*(cells[k] for k in COLUMN_KEYS), key=key)
            self._cells[key] = {k: signature(v) for k, v in cells.items()}
            self._places[key] = place
            self._resort = True
            return
        before = self._cells[key]
        changed = {}
        for column, cell in cells.items():
            sig = signature(cell)
            if before[column] != sig:
                changed[column] = cell
                before[column] = sig
        if self._places[key] != place:
            changed["severity"] = cells["severity"]  # the new sort value, even when it reads the same
            self._places[key] = place
            self._resort = True
        if changed:
            self.update_cells(key, changed)

    def forget(self, alert_id: int | str) -> None:
        key = str(alert_id)
        if key in self._cells:
            self.remove_row(key)
            del self._cells[key], self._places[key]

    def fill(self, alerts: list[Alert]) -> None:
        """Shows exactly these alerts (after a fresh read), in order."""
        now = time.time()
        wanted = {str(a["id"]) for a in alerts}
        for key in [k for k in self._cells if k not in wanted]:
            self.forget(key)
        for alert in alerts:
            self.show(alert, now)
        self.sort_now()

    def sort_now(self) -> None:
        self._resort = False
        if not self.row_count:
            return
        current = self.selected_key()
        self.sort("severity", key=lambda cell: cell.sort_value)
        if current is not None:
            self.move_cursor(row=self.get_row_index(current), scroll=False)

    def tick(self, alerts: dict[int, Alert]) -> None:
        """Once a second: a pending re-sort, and the Since column of the rows in sight."""
        if self._resort:
            self.sort_now()
        top = int(self.scroll_offset.y)
        now = time.time()
        for row in self.ordered_rows[top: top + self.size.height]:
            key = str(row.key.value)
            alert = alerts.get(int(key))
            if alert is None or key not in self._cells:
                continue
            cell = sorted_cell(since(alert, now), "dim", None)
            if self._cells[key]["since"] != signature(cell):
                self.update_cells(key, {"since": cell})
                self._cells[key]["since"] = signature(cell)

    def selected_key(self) -> str | None:
        if not self.row_count:
            return None
        try:
            return str(self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value)
        except Exception:  # noqa: BLE001 - cursor outside the rows while the table changes
            return None

    def has(self, key: RowKey | str) -> bool:
        return str(key.value if isinstance(key, RowKey) else key) in self._cells
