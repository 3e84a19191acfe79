"""Memory and CPU use of a process, read from /proc (Linux), for benchmark figures."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcSample:
    at: float  # time.monotonic() when read
    rss_bytes: int
    peak_rss_bytes: int  # VmHWM: the highest RSS since the process started
    cpu_s: float  # user + system CPU seconds, all threads
    threads: int


def read(pid: int) -> ProcSample:
    """One sample of `pid`; raises ProcessLookupError when the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            status = fh.read()
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None
    fields = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    # The command name in field 2 may hold spaces or ')': fields after the last ')' are fixed.
    rest = stat[stat.rindex(")") + 2:].split()
    utime, stime = int(rest[11]), int(rest[12])
    return ProcSample(
        at=time.monotonic(),
        rss_bytes=_kib(fields.get("VmRSS", "0 kB")),
        peak_rss_bytes=_kib(fields.get("VmHWM", "0 kB")),
        cpu_s=(utime + stime) / CLOCK_TICKS,
        threads=int(fields.get("Threads", "0") or 0),
    )


def cpu_percent(before: ProcSample, after: ProcSample) -> float:
    """Average CPU use between two samples, in percent of one core (200 = both cores of this machine)."""
    wall = after.at - before.at
    return 100.0 * (after.cpu_s - before.cpu_s) / wall if wall > 0 else 0.0


def _kib(value: str) -> int:
    number = value.split()[0] if value.split() else "0"
    return int(number) * 1024


class PeakTracker:
    """Keeps the highest RSS seen across repeated samples (VmHWM also counts start-up)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_rss_bytes = 0
        self.last: ProcSample | None = None

    def sample(self) -> ProcSample | None:
        try:
            current = read(self.pid)
        except ProcessLookupError:
            return None
        self.peak_rss_bytes = max(self.peak_rss_bytes, current.rss_bytes)
        self.last = current
        return current
