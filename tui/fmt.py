"""Human formatting shared by the CLI and the console: ages, percentages, sizes, aligned tables."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence

from tui.textsafe import clean

SPARK_BARS = "▁▂▃▄▅▆▇█"


def age(ts: float | None, now: float | None = None) -> str:
    """How long ago `ts` was, in the largest whole unit: "3s", "5m", "2h", "4d"; "-" when unknown."""
    if ts is None:
        return "-"
    delta = max(0.0, (time.time() if now is None else now) - float(ts))
    if delta < 60:
        return f"{int(delta)}s"
    if delta < 3600:
        return f"{int(delta // 60)}m"
    if delta < 86400:
        return f"{int(delta // 3600)}h"
    return f"{int(delta // 86400)}d"


def duration(seconds: float | None) -> str:
    """A duration such as an uptime: "3d 4h", "2h 5m", "45s"."""
    if seconds is None or (isinstance(seconds, float) and not math.isfinite(seconds)):
        return "-"
    s = int(max(0, seconds))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {s}s"
    return f"{s}s"


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def celsius(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}°C"


def size(num: float | None) -> str:
    """Bytes in binary units: "512B", "3.1K", "4.0G"."""
    if num is None:
        return "-"
    value = float(num)
    for unit in ("B", "K", "M", "G", "T"):
        if abs(value) < 1024 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}T"


def clock(ts: float | None) -> str:
    """Local time of day with milliseconds, for log lines: "14:03:07.123"."""
    if ts is None:
        return "-"
    local = time.localtime(ts)
    return time.strftime("%H:%M:%S", local) + f".{int((ts % 1) * 1000):03d}"


def stamp(ts: float | None) -> str:
    """Local date and time: "2026-11-24 14:03:07"."""
    if ts is None:
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    except (OverflowError, OSError, ValueError):  # a node's absurd time (1e308, NaN) is no reason to crash
        return "?"


def sparkline(values: Sequence[float], width: int = 8, top: float | None = 100.0) -> str:
    """Tiny inline trend of the last `width` values using block characters."""
    recent = list(values)[-width:]
    if not recent:
        return ""
    high = top if top else max(recent) or 1.0
    out = []
    for v in recent:
        ratio = min(max(v / high, 0.0), 1.0)
        out.append(SPARK_BARS[min(int(ratio * len(SPARK_BARS)), len(SPARK_BARS) - 1)])
    return "".join(out)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], right: Iterable[int] = ()) -> str:
    """An aligned plain-text table; every cell is cleaned (node text never reaches the terminal raw)."""
    right_cols = set(right)
    cells = [[clean(c, single_line=True) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(widths[i]) if i in right_cols else v.ljust(widths[i]) for i, v in enumerate(values)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(list(headers)), *(line(r) for r in cells)])
