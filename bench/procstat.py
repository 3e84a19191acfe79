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
    main_cpu_s: float = 0.0  # the main thread alone: the server's event loop
    # Time the main thread was ready to run but waited for a CPU (other processes had them).
    main_wait_s: float = 0.0
    machine_stall_s: float = 0.0  # see machine_cpu_stall_s
    all_wait_s: float = 0.0  # run-queue wait summed over every thread of the process
    # CPU seconds of each thread but the main one, by thread id (see busiest_other_thread_percent).
    other_threads_cpu_s: tuple[tuple[int, float], ...] = ()


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
    return ProcSample(
        at=time.monotonic(),
        rss_bytes=_kib(fields.get("VmRSS", "0 kB")),
        peak_rss_bytes=_kib(fields.get("VmHWM", "0 kB")),
        cpu_s=_stat_cpu(stat),
        threads=int(fields.get("Threads", "0") or 0),
        main_cpu_s=_thread_cpu(pid, pid),
        main_wait_s=_run_queue_wait(pid),
        machine_stall_s=machine_cpu_stall_s(),
        all_wait_s=sum(_run_queue_wait(pid, int(tid)) for tid in _tasks(pid)),
        other_threads_cpu_s=tuple((int(tid), _thread_cpu(pid, int(tid))) for tid in _tasks(pid) if int(tid) != pid),
    )


def _tasks(pid: int) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return []


def _stat_cpu(stat: str) -> float:
    # The command name in field 2 may hold spaces or ')': fields after the last ')' are fixed.
    rest = stat[stat.rindex(")") + 2:].split()
    return (int(rest[11]) + int(rest[12])) / CLOCK_TICKS


def _run_queue_wait(pid: int, tid: int | None = None) -> float:
    try:
        with open(f"/proc/{pid}/task/{tid or pid}/schedstat", encoding="ascii") as fh:
            return int(fh.read().split()[1]) / 1e9
    except (FileNotFoundError, IndexError, ValueError):
        return 0.0


def machine_cpu_stall_s() -> float:
    """Seconds (since boot) in which some runnable task had no CPU, machine-wide (PSI); 0 if unknown."""
    try:
        with open("/proc/pressure/cpu", encoding="ascii") as fh:
            first = fh.readline().split()
        return next(int(f.split("=")[1]) for f in first if f.startswith("total=")) / 1e6
    except (OSError, StopIteration, ValueError):
        return 0.0


def _thread_cpu(pid: int, tid: int) -> float:
    try:
        with open(f"/proc/{pid}/task/{tid}/stat", encoding="ascii", errors="replace") as fh:
            return _stat_cpu(fh.read())
    except FileNotFoundError:
        return 0.0


def _share(before: ProcSample, after: ProcSample, seconds: str) -> float:
    """How much of the wall time between two samples the `seconds` counter grew, in percent."""
    wall = after.at - before.at
    return 100.0 * (getattr(after, seconds) - getattr(before, seconds)) / wall if wall > 0 else 0.0


def cpu_percent(before: ProcSample, after: ProcSample) -> float:
    """Average CPU use between two samples, in percent of one core (200 = both cores of this machine)."""
    return _share(before, after, "cpu_s")


def main_wait_percent(before: ProcSample, after: ProcSample) -> float:
    """Share of the wall time the event loop was runnable but had no CPU (machine oversubscribed)."""
    return _share(before, after, "main_wait_s")


def machine_stall_percent(before: ProcSample, after: ProcSample) -> float:
    """Share of the wall time in which some task on the machine waited for a CPU (any process)."""
    return _share(before, after, "machine_stall_s")


def all_wait_percent(before: ProcSample, after: ProcSample) -> float:
    """Run-queue wait of all the process's threads, in percent of the wall time (may exceed 100)."""
    return _share(before, after, "all_wait_s")


def main_thread_percent(before: ProcSample, after: ProcSample) -> float:
    """Like cpu_percent, for the main thread only: near 100 means the event loop is the limit."""
    return _share(before, after, "main_cpu_s")


def busiest_other_thread_percent(before: ProcSample, after: ProcSample) -> float:
    """CPU of the busiest thread but the main one between two samples, in percent of one core: in
    the server under a fleet's load, the writer thread (its storage work, most of it outside the GIL)."""
    wall = after.at - before.at
    if wall <= 0:
        return 0.0
    was = dict(before.other_threads_cpu_s)
    return max((100.0 * (cpu - was.get(tid, 0.0)) / wall for tid, cpu in after.other_threads_cpu_s), default=0.0)


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
