"""The fleet summary bar: node counts by state, alerts, what the table shows and how it is sorted."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from dvic_core.constants import NODE_STATES
from tui.textsafe import literal

STATE_STYLE = {
    "online": "green",
    "offline": "red",
    "maintenance": "yellow",
    "failed": "bold red",
    "new": "cyan",
}
STATE_ICON = {"online": "●", "offline": "○", "maintenance": "◐", "failed": "✖", "new": "+"}


class SummaryBar(Static):
    DEFAULT_CSS = "SummaryBar { height: 1; background: $boost; padding: 0 1; }"

    def show(self, counts: dict[str, int], shown: int, total: int, filters: str, sort: str) -> None:
        text = Text()
        for state in NODE_STATES:
            n = counts.get(state, 0)
            if n or state in ("online", "offline"):
                text.append(f"{STATE_ICON[state]} {n} {state}  ", style=STATE_STYLE[state] if n else "dim")
        if counts.get("revoked"):
            text.append(f"⊘ {counts['revoked']} revoked  ", style="dim")
        text.append(f"⚠ {counts.get('alerts', 0)} alerts", style="bold yellow" if counts.get("alerts") else "dim")
        text.append(f"  │ {shown}/{total} shown", style="dim")
        if filters:
            text.append("  │ ", style="dim")
            text.append_text(literal(filters, style="italic"))
        text.append(f"  │ sort {sort}", style="dim")
        self.update(text)
