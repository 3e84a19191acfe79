"""The alerts table of the Alerts view and the node view: one row per alert, firing first.

As the fleet table: an alert frame changes the cells of its row that changed (FleetTable's
in-place path), a row is added or removed only when an alert appears or leaves, and the rows
are re-sorted only when an alert's place changes (fired, acknowledged, resolved), once per tick.
The Since column of the visible rows is brought up to date once a second.
"""

from __future__ import annotations

import time
from typing import Any

from textual.widgets.data_table import RowKey

from tui import fmt
from tui.console.alerts import Alert, order_key, shown_state, subject_label
from tui.console.widgets.keyed_table import KeyedTable
from tui.console.widgets.tables import Cell, sorted_cell
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


class AlertTable(KeyedTable):
    """Rows keyed by alert id. `show` and `forget` change one row; `tick` sorts and ages."""

    SORT_COLUMN = "severity"
    COLUMNS = COLUMNS

    def on_resize(self) -> None:
        widths = column_widths(self.size.width)
        for key, _, width in COLUMNS:
            widths.setdefault(key, width or 0)
        self.set_widths(widths)

    def show(self, alert: Alert, now: float | None = None) -> None:
        """Adds the alert's row or changes the cells of it that changed."""
        cells = alert_cells(alert, time.time() if now is None else now)
        if self.put(str(alert["id"]), cells, cells["severity"].sort_value):
            self._resort = True

    def forget(self, alert_id: int | str) -> None:
        self.drop(str(alert_id))

    def fill(self, alerts: list[Alert]) -> None:
        """Shows exactly these alerts (after a fresh read), in order."""
        self.refill({str(a["id"]): a for a in alerts}, self.show)

    def tick(self, alerts: dict[int, Alert]) -> None:
        """Once a second: a pending re-sort, and the Since column of the rows in sight."""
        self.sort_if_moved()
        now = time.time()
        for key in self.visible_keys():
            alert = alerts.get(int(key))
            if alert is not None and key in self._cells:
                self.update_timed(key, {"since": sorted_cell(since(alert, now), "dim", None)}, ("since",))

    def has(self, key: RowKey | str) -> bool:
        return str(key.value if isinstance(key, RowKey) else key) in self._cells
