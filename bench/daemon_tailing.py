"""Node daemon tailing: demos write 2,000 lines/s in total across several files; daemon CPU and delivery.

    python3 -m bench.daemon_tailing [--rate 2000] [--demos 4] [--duration 30]

Starts a real dvic-central on 127.0.0.1, enrolls one node, runs the real daemon (default poll
interval) and --demos demo processes that together write --rate lines/s through dvic_log for
--duration seconds. Prints the daemon's CPU while they write (percent of one core) and per 1,000
lines, how long the last lines took to arrive, and checks through GET /api/v1/logs that every
line reached the server exactly once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import procstat
from .daemon_stream import finish_report, stream_main, stream_on_a_rig
from .report import Report, latency_summary

TARGET_CPU_PERCENT = 10.0


async def measure(args: argparse.Namespace, work: Path) -> Report:
    per_demo = max(1, round(args.rate * args.duration / args.demos))
    report = Report("Node daemon tailing", params={
        "rate_lines_per_s": args.rate, "demos": args.demos, "duration_s": args.duration,
        "lines": per_demo * args.demos, "python": args.python,
    })
    result = await stream_on_a_rig(args, work, report, [f"tail-{i:02d}" for i in range(args.demos)], per_demo,
                                   args.rate / args.demos)

    w0, w1 = result.daemon_writing
    t0, t1 = result.daemon_total
    s0, s1 = result.server_total
    cpu = procstat.cpu_percent(w0, w1)
    check = result.check
    report.add("lines written", result.written)
    report.add("write rate achieved", result.rate, "lines/s", target=f"~{args.rate:g}")
    report.add("daemon CPU while the demos write", cpu, "% of one core", target=f"<= {TARGET_CPU_PERCENT:g} %",
               ok=cpu <= TARGET_CPU_PERCENT)
    report.add("daemon CPU per 1,000 lines (to the last line streamed)",
               1e6 * (t1.cpu_s - t0.cpu_s) / max(1, result.written), "ms")
    report.add("daemon RSS at the end", t1.rss_bytes / (1024 * 1024), "MB")
    report.add("server CPU per 1,000 lines", 1e6 * (s1.cpu_s - s0.cpu_s) / max(1, result.written), "ms")
    report.add("lines written / stored (API)", f"{check.written:,} / {check.stored:,}", ok=check.ok,
               target="all, once")
    report.add("  missing / duplicated / unexpected", f"{check.missing} / {check.duplicates} / {check.foreign}")
    report.add("last line streamed after the last write", result.drain_s, "s")
    lat = latency_summary(result.latencies)
    report.add("write -> stream p50 / p99 / max",
               f"{lat['p50'] * 1000:.0f} / {lat['p99'] * 1000:.0f} / {lat['max'] * 1000:.0f}", "ms")
    return finish_report(report, result)


main = stream_main("daemon_tailing", __doc__, measure, demos=4, rate=2000.0, rate_is="all demos together",
                   drain_timeout=60.0)


if __name__ == "__main__":
    sys.exit(main())
