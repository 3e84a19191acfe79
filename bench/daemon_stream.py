"""Demos write lines at a set rate while the daemon ships them and an operator's stream times each one.

The core of bench.daemon_tailing and bench.line_latency: both run the same real pieces and
differ only in load and in the figures they print.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import procstat
from .common import add_common_args, parser, positive_float, positive_int, run_bench
from .daemon_rig import (
    RIG_FAILURES,
    LineCheck,
    NodeRig,
    RigError,
    check_lines,
    demo_lines,
    start_demos,
    stop_demos,
)
from .report import Report
from .subscriber import LatencySubscriber


@dataclass
class StreamResult:
    written: int
    writing_s: float  # from "go" to the last writer done
    drain_s: float  # from the last writer done to the last line on the operator's stream
    latencies: list[float]
    check: LineCheck
    daemon_writing: tuple[procstat.ProcSample, procstat.ProcSample]  # CPU while the demos write
    daemon_total: tuple[procstat.ProcSample, procstat.ProcSample]  # from "go" to all lines streamed
    server_total: tuple[procstat.ProcSample, procstat.ProcSample]
    writer_behind_max_s: float  # how far a writer fell behind its schedule (machine too busy)
    stream_cut_off: bool
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.written / self.writing_s if self.writing_s > 0 else 0.0


def _sample(pid: int) -> procstat.ProcSample:
    try:
        return procstat.read(pid)
    except ProcessLookupError:
        raise RigError(f"process {pid} is gone") from None


async def run_stream(rig: NodeRig, names: list[str], per_demo: int, rate_per_demo: float,
                     drain_timeout: float) -> StreamResult:
    """Start the demos, subscribe, say go, wait for every line on the stream, then count what was stored."""
    demos = await asyncio.to_thread(start_demos, rig.log_dir, names, count=per_demo, rate=rate_per_demo,
                                    stamp=True)
    subscriber: LatencySubscriber | None = None
    try:
        daemon = rig.daemon
        if daemon is None:
            raise RigError("start the daemon before the stream")
        # the daemon has found every file (scan every 2 s) and read its header: timing starts after
        await asyncio.to_thread(rig.wait_demos_alive, len(names))
        subscriber = LatencySubscriber(rig.server.url, rig.server.admin_token, rig.server.ssl_context)
        await subscriber.start()
        subscriber.measure_from = 0.0  # every stamped line is timed: there is no warm-up to skip
        total = per_demo * len(names)

        d_go, s_go = _sample(daemon.pid), _sample(rig.server.pid)
        for demo in demos:
            demo.go()
        dones = await asyncio.gather(*(asyncio.to_thread(d.wait_done, per_demo / rate_per_demo + 120)
                                       for d in demos))
        d_written = _sample(daemon.pid)
        drain_deadline = time.monotonic() + drain_timeout
        while len(subscriber.latencies) < total and time.monotonic() < drain_deadline:
            if subscriber.cut_off:
                break
            await asyncio.sleep(0.02)
        d_end, s_end = _sample(daemon.pid), _sample(rig.server.pid)
        latencies, cut_off = list(subscriber.latencies), subscriber.cut_off
        await subscriber.stop()
        subscriber = None
        stored = await asyncio.to_thread(demo_lines, rig.server, rig.node_id)
        check = check_lines(stored, {d.name: per_demo for d in demos})
        result = StreamResult(
            written=sum(int(d["written"]) for d in dones), writing_s=d_written.at - d_go.at,
            drain_s=d_end.at - d_written.at, latencies=latencies, check=check,
            daemon_writing=(d_go, d_written), daemon_total=(d_go, d_end), server_total=(s_go, s_end),
            writer_behind_max_s=max(float(d["behind_max"]) for d in dones),
            stream_cut_off=cut_off)
        if len(latencies) < total:
            result.notes.append(f"only {len(latencies)} of {total} lines reached the stream within "
                                f"{drain_timeout:.0f} s of the last write")
        return result
    finally:
        if subscriber is not None:
            await subscriber.stop()
        await asyncio.to_thread(stop_demos, demos)


async def stream_on_a_rig(args: argparse.Namespace, work: Path, report: Report, names: list[str], per_demo: int,
                          rate_per_demo: float) -> StreamResult:
    """run_stream on a fresh rig: the server, one node, its daemon as --python, --poll-interval and
    --whatif-coalesce say; everything stopped afterwards."""
    if args.whatif_coalesce is not None:
        report.params["WHAT-IF daemon COALESCE_S"] = args.whatif_coalesce
    rig = NodeRig(work, python=args.python, poll_interval=args.poll_interval, coalesce=args.whatif_coalesce)
    try:
        await asyncio.to_thread(rig.start_server)
        await asyncio.to_thread(rig.start_daemon)
        return await run_stream(rig, names, per_demo, rate_per_demo, args.drain_timeout)
    finally:
        await asyncio.to_thread(rig.close)


def stream_main(name: str, doc: str | None, measure: Callable[[argparse.Namespace, Path], Awaitable[Report]], *,
                demos: int, rate: float, rate_is: str, drain_timeout: float) -> Callable[..., int]:
    """main() of bench.`name`: its load (--demos, --rate lines/s `rate_is`, --duration), then the options
    every stream benchmark has."""

    def main(argv: list[str] | None = None) -> int:
        p = parser(name, doc)
        p.add_argument("--demos", type=positive_int, default=demos, help="demo processes (one file each)")
        p.add_argument("--rate", type=positive_float, default=rate, help=f"lines per second, {rate_is}")
        p.add_argument("--duration", type=positive_float, default=30.0, help="seconds of writing")
        p.add_argument("--drain-timeout", type=positive_float, default=drain_timeout,
                       help="how long to wait for the last lines after the writers finish")
        p.add_argument("--poll-interval", type=positive_float, default=None,
                       help="the daemon's --poll-interval (default: the daemon's own, 0.2 s)")
        p.add_argument("--whatif-coalesce", type=float, metavar="S", default=None,
                       help="run the unchanged daemon with COALESCE_S = S (bench/whatif_daemon.py; default 0.25 s)")
        p.add_argument("--python", default=sys.executable, help="interpreter that runs the daemon")
        add_common_args(p)
        return run_bench(p.parse_args(argv), name, measure, fails=RIG_FAILURES)

    return main


def finish_report(report: Report, result: StreamResult) -> Report:
    """The rows and notes every stream benchmark ends with: machine load and what went wrong."""
    report.add("writers' worst lag behind schedule", result.writer_behind_max_s, "s")
    w0, w1 = result.daemon_writing
    report.add("machine CPU pressure while writing", procstat.machine_stall_percent(w0, w1), "%")
    for note in result.notes:
        report.note(note)
    if result.stream_cut_off:
        report.note("the operator's stream was cut off by the server (too slow)")
    return report
