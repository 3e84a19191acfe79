"""Printing benchmark figures: aligned lines, targets with pass/fail, and an optional JSON copy."""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (q in 0..100); NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_summary(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "count": float(len(ordered)),
        "p50": percentile(ordered, 50),
        "p90": percentile(ordered, 90),
        "p99": percentile(ordered, 99),
        "max": ordered[-1] if ordered else math.nan,
    }


def cpu_pressure() -> str:
    """The kernel's share of the last 10 s in which some task waited for a CPU (PSI), or n/a."""
    try:
        with open("/proc/pressure/cpu", encoding="ascii") as fh:
            first = fh.readline().split()
        return next(f.split("=")[1] + "%" for f in first if f.startswith("avg10="))
    except (OSError, StopIteration, IndexError):
        return "n/a"


def machine() -> dict[str, Any]:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


@dataclass
class Figure:
    name: str
    value: Any
    unit: str = ""
    target: str = ""
    ok: bool | None = None


@dataclass
class Report:
    title: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    # Other work on a shared machine skews figures: say how busy it was when the run began.
    load_at_start: float = field(default_factory=lambda: os.getloadavg()[0])
    cpu_pressure_at_start: str = field(default_factory=lambda: cpu_pressure())

    def add(self, name: str, value: Any, unit: str = "", *, target: str = "", ok: bool | None = None) -> None:
        self.figures.append(Figure(name, value, unit, target, ok))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def render(self) -> str:
        width = max((len(f.name) for f in self.figures), default=10) + 2
        params = {**self.params, "load average at start": f"{self.load_at_start:.2f}",
                  "CPU pressure at start": self.cpu_pressure_at_start}
        out = [f"== {self.title} ==", "  " + ", ".join(f"{k}={v}" for k, v in params.items())]
        for f in self.figures:
            line = f"  {f.name:<{width}}{_fmt(f.value)} {f.unit}".rstrip()
            if f.target:
                verdict = "" if f.ok is None else ("PASS" if f.ok else "FAIL")
                line = f"{line:<{width + 30}}  target {f.target} {verdict}".rstrip()
            out.append(line)
        out += [f"  note: {n}" for n in self.notes]
        return "\n".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title, "machine": {**machine(), "load_at_start": self.load_at_start,
                                             "cpu_pressure_at_start": self.cpu_pressure_at_start},
            "params": self.params,
            "figures": {f.name: {"value": f.value, "unit": f.unit, "target": f.target, "ok": f.ok}
                        for f in self.figures},
            "notes": self.notes,
        }

    def emit(self, json_path: Path | None) -> None:
        print(self.render(), flush=True)
        if json_path is not None:
            json_path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)
