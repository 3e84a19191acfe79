"""A metric chart for the node view: a label with min/avg/max and a sparkline of the history."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, Sparkline

UNITS = {"cpu": "%", "mem": "%", "disk": "%", "temp": "°C", "load1": ""}
# The largest value the server stores (docs/protocol.md section 5). Anything else in a point (NaN,
# Infinity, 1e308 from an older server) is skipped: Sparkline scales by max - min, which such
# values turn into NaN, and it then raises.
MAX_VALUE = 1e15


def plottable(value: Any) -> bool:
    """A number the chart can show (comparisons, not float(): an integer may be too large for one)."""
    return not isinstance(value, bool) and isinstance(value, int | float) and -MAX_VALUE <= value <= MAX_VALUE


class MetricChart(Vertical):
    DEFAULT_CSS = """
    MetricChart { height: 3; }
    MetricChart > Label { height: 1; }
    MetricChart > Sparkline { height: 2; }
    """

    def __init__(self, name: str, title: str) -> None:
        super().__init__(id=f"chart-{name}")
        self.metric = name
        self.title = title

    def compose(self) -> ComposeResult:
        yield Label(Text(f"{self.title}: no data", style="dim"), id=f"label-{self.metric}")
        yield Sparkline([], summary_function=max, id=f"spark-{self.metric}")

    def set_points(self, points: list[Any]) -> None:
        """Points are `[bucket_start, min, avg, max]`; the line shows averages, the label the range."""
        rows = [p for p in points if isinstance(p, list | tuple) and len(p) >= 4 and all(map(plottable, p[1:4]))]
        label = self.query_one(Label)
        spark = self.query_one(Sparkline)
        unit = UNITS.get(self.metric, "")
        if not rows:
            label.update(Text(f"{self.title}: no data in this range", style="dim"))
            spark.data = []
            return
        avgs = [float(p[2]) for p in rows]
        low, high = min(float(p[1]) for p in rows), max(float(p[3]) for p in rows)
        text = Text(f"{self.title} ", style="bold")
        text.append(f"now {avgs[-1]:.0f}{unit}  avg {sum(avgs) / len(avgs):.0f}{unit}  "
                    f"min {low:.0f}{unit}  max {high:.0f}{unit}", style="dim")
        if len(avgs) < 2:
            text.append("  (one sample so far)", style="dim italic")
        label.update(text)
        # One point would fill the whole chart with a single bar: wait for a second one.
        spark.data = avgs if len(avgs) >= 2 else []
