"""The supervised demos table of the Demos view: one row per demo and node (docs/demos.md "Status").

As the alerts table: a `demo_status` frame changes the cells of its row that changed (FleetTable's
in-place path), a row is added only when a demo appears on a node, the rows are re-sorted (demo,
then node) once per tick when one was added, and the Uptime and Heartbeat columns of the rows in
sight are brought up to date once a second.
"""

from __future__ import annotations

import time
from typing import Any

from tui import fmt
from tui.console.widgets.keyed_table import KeyedTable
from tui.console.widgets.tables import Cell, sorted_cell
from tui.textsafe import clean

DemoRow = dict[str, Any]  # a row of GET /api/v1/demos/status, kept up to date by `demo_status` frames

COLUMNS: list[tuple[str, str, int | None]] = [
    ("demo", "Demo", 12), ("node", "Node", 11), ("version", "Version", 8), ("state", "State", 11),
    ("restarts", "↻", 3), ("uptime", "Uptime", 7), ("heartbeat", "Beat", 4), ("install", "Install", None),
    ("message", "Message", None),
]
# At 80 columns Install gets what is left and the message is shown under the table; wider, both.
FIXED_WIDTH = sum(w or 0 for _, _, w in COLUMNS) + 2 * len(COLUMNS) + 2
INSTALL_WIDTH = 14
STATE_STYLE = {"healthy": "green", "running": "cyan", "unhealthy": "yellow", "crashloop": "bold red",
               "stopped": "dim", "failed": "bold red"}
STATE_ICON = {"healthy": "●", "running": "◐", "unhealthy": "◌", "crashloop": "✖", "stopped": "○", "failed": "✖"}
ALIVE = {"healthy", "running", "unhealthy", "crashloop"}
INSTALL_STYLE = {"healthy": "green", "removed": "dim", "failed": "bold red", "rolled_back": "bold red",
                 "lost": "bold red", "skipped": "dim", "superseded": "dim", "waiting": "dim", "offline": "dim"}


def row_key(row: DemoRow) -> str:
    return f"{row.get('node')}/{row.get('demo')}"


def _text(value: Any) -> str:
    return clean(value if value is not None else "-", single_line=True)


def install_text(install: Any) -> str:
    """An install state as the CLI says it: `downloading 40%` while bytes come in."""
    if not isinstance(install, dict) or not install.get("state"):
        return "-"
    text = str(install["state"])
    total, done = install.get("total"), install.get("bytes")
    if text == "downloading" and isinstance(total, int) and total > 0 and isinstance(done, int):
        text += f" {100 * done // total}%"
    return text


def state_text(row: DemoRow) -> tuple[str, str]:
    """(what the State column says, its style): the node's state wins while it is not online."""
    state = str(row.get("state") or "-")
    if row.get("node_state") not in (None, "online"):
        return f"{state} (node {row['node_state']})", "dim"
    return f"{STATE_ICON.get(state, '?')} {state}", STATE_STYLE.get(state, "")


def version_text(row: DemoRow) -> str:
    version = str(row.get("version") or "-")
    desired = row.get("desired_version")
    return f"{version}→{desired}" if desired and desired != row.get("version") else version


def uptime(row: DemoRow, now: float) -> str:
    since = row.get("since")
    if row.get("state") not in ALIVE or not isinstance(since, int | float):
        return "-"
    return fmt.duration(now - since)


def demo_cells(row: DemoRow, now: float) -> dict[str, Cell]:
    state, style = state_text(row)
    install = install_text(row.get("install"))
    heartbeat = row.get("last_heartbeat")
    return {
        "demo": sorted_cell(_text(row.get("demo")), "bold", (str(row.get("demo")), str(row.get("node_name")))),
        "node": sorted_cell(_text(row.get("node_name") or row.get("node")), "", None),
        "version": sorted_cell(_text(version_text(row)), "", None),
        "state": sorted_cell(_text(state), style, None),
        "restarts": sorted_cell(str(row.get("restarts") or 0), "yellow" if row.get("restarts") else "dim", None),
        "uptime": sorted_cell(uptime(row, now), "dim", None),
        "heartbeat": sorted_cell(fmt.age(heartbeat if isinstance(heartbeat, int | float) else None, now), "dim", None),
        "install": sorted_cell(_text(install), INSTALL_STYLE.get(install, "yellow" if install != "-" else "dim"), None),
        "message": sorted_cell(_text(row.get("message") or ""), "dim", None),
    }


class DemoTable(KeyedTable):
    """Rows keyed `node-id/demo`. `show` adds or changes one row; `tick` sorts and ages."""

    SORT_COLUMN = "demo"
    COLUMNS = COLUMNS
    TIMED = ("uptime", "heartbeat")

    def on_resize(self) -> None:
        spare = max(0, self.size.width - FIXED_WIDTH)
        install = min(spare, INSTALL_WIDTH)
        self.set_widths({"install": install, "message": spare - install if spare - install >= 10 else 0})

    def show(self, row: DemoRow, now: float | None = None) -> None:
        if self.put(row_key(row), demo_cells(row, time.time() if now is None else now)):
            self._resort = True

    def forget(self, key: str) -> None:
        self.drop(key)

    def fill(self, rows: list[DemoRow]) -> None:
        """Shows exactly these rows (after a fresh read), in order."""
        self.refill({row_key(r): r for r in rows}, self.show)

    def tick(self, rows: dict[str, DemoRow]) -> None:
        """Once a second: a pending re-sort, and the Uptime and Beat columns of the rows in sight."""
        self.sort_if_moved()
        now = time.time()
        for key in self.visible_keys():
            row = rows.get(key)
            if row is not None and key in self._cells:
                self.update_timed(key, demo_cells(row, now), self.TIMED)

