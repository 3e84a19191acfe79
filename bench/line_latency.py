"""Line latency: from a dvic_log write on the node to an operator's events stream (p50/p99/max).

    python3 -m bench.line_latency [--demos 2] [--rate 10] [--duration 30]

Starts a real dvic-central on 127.0.0.1, enrolls one node, runs the real daemon (default poll
interval) and --demos demo processes writing --rate lines/s each through dvic_log. Each message
ends with ` sent=<unix time>` taken just before its write; a subscriber of GET /api/v1/stream
(`{"type":"subscribe","logs":["*"]}`) subtracts it from the arrival time. The path timed: the
file, the daemon's next poll, its spool, the websocket, the server's commit, the fan-out.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from . import procstat
from .common import add_common_args, positive_float, positive_int, work_dir
from .daemon_rig import NodeRig, RigError
from .daemon_stream import run_stream
from .report import Report, latency_summary

TARGET_P99_S = 1.0
AIM_P99_S = 0.300


async def measure(args: argparse.Namespace, work: Path) -> Report:
    per_demo = max(1, round(args.rate * args.duration))
    report = Report("Node daemon: line latency, dvic_log write -> events subscriber", params={
        "demos": args.demos, "rate_per_demo": args.rate, "duration_s": args.duration,
        "lines": per_demo * args.demos, "python": args.python,
    })
    if args.whatif_coalesce is not None:
        report.params["WHAT-IF daemon COALESCE_S"] = args.whatif_coalesce
    rig = NodeRig(work, python=args.python, poll_interval=args.poll_interval, coalesce=args.whatif_coalesce)
    try:
        await asyncio.to_thread(rig.start_server)
        await asyncio.to_thread(rig.start_daemon)
        result = await run_stream(rig, [f"lat-{i:02d}" for i in range(args.demos)], per_demo, args.rate,
                                  args.drain_timeout)
    finally:
        await asyncio.to_thread(rig.close)

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
    report.add("writers' worst lag behind schedule", result.writer_behind_max_s, "s")
    w0, w1 = result.daemon_writing
    report.add("machine CPU pressure while writing", procstat.machine_stall_percent(w0, w1), "%")
    report.note("by design a line waits for the daemon's next read of its file (--poll-interval, 0.2 s) and "
                "then, when alone, up to COALESCE_S (0.25 s) for company before its `logs` message goes out")
    for note in result.notes:
        report.note(note)
    if result.stream_cut_off:
        report.note("the operator's stream was cut off by the server (too slow)")
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m bench.line_latency", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demos", type=positive_int, default=2, help="demo processes (one file each)")
    p.add_argument("--rate", type=positive_float, default=10.0, help="lines per second per demo")
    p.add_argument("--duration", type=positive_float, default=30.0, help="seconds of writing")
    p.add_argument("--drain-timeout", type=positive_float, default=30.0,
                   help="how long to wait for the last lines after the writers finish")
    p.add_argument("--poll-interval", type=positive_float, default=None,
                   help="the daemon's --poll-interval (default: the daemon's own, 0.2 s)")
    p.add_argument("--whatif-coalesce", type=float, metavar="S", default=None,
                   help="run the unchanged daemon with COALESCE_S = S (bench/whatif_daemon.py; default 0.25 s)")
    p.add_argument("--python", default=sys.executable, help="interpreter that runs the daemon")
    add_common_args(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with work_dir(args.work_dir, args.keep, "latency") as work:
        try:
            report = asyncio.run(measure(args, work))
        except RigError as exc:
            print(f"line_latency: {exc}", file=sys.stderr)
            return 1
    report.emit(args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
