"""Line latency: from a dvic_log write on the node to an operator's events stream (p50/p99/max).

    python3 -m bench.line_latency [--demos 2] [--rate 10] [--duration 30]

Starts a real dvic-central on 127.0.0.1, enrolls one node, runs the real daemon (default poll
interval) and --demos demo processes writing --rate lines/s each through dvic_log. Each message
ends with ` sent=<unix time>` taken just before its write; a subscriber of GET /api/v1/stream
(`{"type":"subscribe","logs":["*"]}`) subtracts it from the arrival time. The path timed: the
file, the daemon's read (woken by inotify), its spool, the websocket, the server's commit, the fan-out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .daemon_stream import finish_report, stream_main, stream_on_a_rig
from .report import Report, latency_summary

TARGET_P99_S = 1.0
AIM_P99_S = 0.300


async def measure(args: argparse.Namespace, work: Path) -> Report:
    per_demo = max(1, round(args.rate * args.duration))
    report = Report("Node daemon: line latency, dvic_log write -> events subscriber", params={
        "demos": args.demos, "rate_per_demo": args.rate, "duration_s": args.duration,
        "lines": per_demo * args.demos, "python": args.python,
    })
    result = await stream_on_a_rig(args, work, report, [f"lat-{i:02d}" for i in range(args.demos)], per_demo,
                                   args.rate)

    lat = latency_summary(result.latencies)
    report.add("lines written / timed on the stream", f"{result.written:,} / {len(result.latencies):,}",
               ok=len(result.latencies) == result.written, target="all")
    report.add("latency p50", lat["p50"] * 1000, "ms")
    report.add("latency p90", lat["p90"] * 1000, "ms")
    report.add("latency p99", lat["p99"] * 1000, "ms", target=f"< {TARGET_P99_S * 1000:.0f} ms "
               f"(aim < {AIM_P99_S * 1000:.0f})", ok=lat["p99"] < TARGET_P99_S)
    report.add("latency max", lat["max"] * 1000, "ms")
    check = result.check
    report.add("lines written / stored (API)", f"{check.written:,} / {check.stored:,}", ok=check.ok,
               target="all, once")
    report.note("the daemon reads a file when inotify reports a write (polling: every --poll-interval) and sends "
                "at once unless a `logs` message awaits its ack (then at most COALESCE_S, 0.25 s, later)")
    return finish_report(report, result)


main = stream_main("line_latency", __doc__, measure, demos=2, rate=10.0, rate_is="per demo", drain_timeout=30.0)


if __name__ == "__main__":
    sys.exit(main())
