"""Node daemon footprint: CPU and RSS of dvic_node.py at the default interval, beside Glances, in one run.

    python3 -m bench.daemon_footprint [--minutes 2] [--interval 5] [--demos 10] [--no-glances]

Starts a real dvic-central on 127.0.0.1 (metrics interval --interval), enrolls one node, starts
--demos idle demos (each a process that wrote its dvic_log file's header and one line), and the
real daemon as systemd runs it (through its launcher, from its bytecode). Glances runs at the same time, headless,
with only the plugins that collect what the daemon reports, refreshing every --interval seconds.
After a warm-up both processes are measured over the same window from /proc/<pid>/stat and
status: CPU in percent of one core, RSS at the end and at its peak, samples taken. Prints both
and the ratios; Glances is skipped (said so) when it is not installed.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

from tests.support.wait import wait_for

from . import procstat
from .common import add_common_args, parser, positive_float, positive_int, run_bench
from .daemon_rig import RIG_FAILURES, NodeRig, RigError, demo_lines, metric_samples, start_demos, stop_demos
from .glances_probe import GlancesRun, glances_command, glances_version
from .report import Report

TARGET_CPU_PERCENT = 1.0
TARGET_RSS_MB = 30.0
MB = 1024 * 1024


def measure(args: argparse.Namespace, work: Path) -> Report:
    report = Report("Node daemon footprint (idle demos) beside Glances", params={
        "minutes": args.minutes, "interval_s": args.interval, "demos": args.demos,
        "python": args.python, "psutil": "no" if args.no_psutil else "if installed",
        "daemon poll_interval_s": args.poll_interval or "default (0.2)",
    })
    command = None if args.no_glances else glances_command(args.interval, args.glances)
    if command is None:
        report.note("Glances not measured: " + ("--no-glances given" if args.no_glances else
                                                "not installed (pip install glances)"))
    if args.from_source:
        report.params["daemon started"] = "from its source (python3 dvic_node.py), not the launcher"
    if args.no_inotify:
        report.params["daemon follows files"] = "by polling (DVIC_NODE_TEST_NO_INOTIFY)"
    rig = NodeRig(work, interval=args.interval, python=args.python, no_psutil=args.no_psutil,
                  poll_interval=args.poll_interval, from_source=args.from_source)
    if args.no_inotify:
        rig.env["DVIC_NODE_TEST_NO_INOTIFY"] = "1"
    glances: GlancesRun | None = None
    demos = []
    try:
        rig.start_server()
        demos = start_demos(rig.log_dir, [f"idle-{i:02d}" for i in range(args.demos)], count=1)
        for demo in demos:
            demo.go()  # one line each, then idle
        for demo in demos:
            demo.wait_done(timeout=30)
        daemon = rig.start_daemon()
        rig.wait_demos_alive(args.demos)
        if command is not None:
            report.params["glances"] = glances_version(command[0])
            glances = GlancesRun(command, work).start()
            wait_for(lambda: _glances_up(glances), 60, "Glances' first sample", interval=0.1)
        time.sleep(args.warmup)  # both past start-up (imports, first connection) before the window

        tracked = [procstat.PeakTracker(daemon.pid)] + ([procstat.PeakTracker(glances.pid)] if glances else [])
        first = [t.sample() for t in tracked]
        exact_first = [on_cpu_s(t.pid) for t in tracked]
        wall_from = time.time()
        glances_from = glances.samples() if glances else 0
        end = time.monotonic() + args.minutes * 60
        for _ in range(int(args.minutes * 60) + 10):  # once a second: the RSS peak within the window
            now = time.monotonic()
            if now >= end:
                break
            time.sleep(min(1.0, end - now))
            daemon.check_alive()
            if glances is not None and not glances.alive():
                raise RigError(f"Glances exited:\n{glances.error_tail()}")
            for t in tracked:
                t.sample()
        last = [t.sample() for t in tracked]
        exact_last = [on_cpu_s(t.pid) for t in tracked]
        wall_to = time.time()
        splits = [memory_split(t.pid) for t in tracked]
        if any(s is None for s in first + last):
            raise RigError("a measured process disappeared during the window")
        daemon_samples = metric_samples(rig.server, rig.node_id, wall_from, wall_to)
        glances_samples = glances.samples() - glances_from if glances else 0
        lines = len(demo_lines(rig.server, rig.node_id))
    finally:
        if glances is not None:
            glances.stop()
        stop_demos(demos)
        rig.close()

    assert first[0] is not None and last[0] is not None
    window = last[0].at - first[0].at
    d_cpu = procstat.cpu_percent(first[0], last[0])
    d_rss = last[0].rss_bytes / MB
    d_peak = tracked[0].peak_rss_bytes / MB
    report.params["window_s"] = round(window, 1)
    report.add("daemon CPU", d_cpu, "% of one core", target=f"<= {TARGET_CPU_PERCENT:g} %",
               ok=d_cpu <= TARGET_CPU_PERCENT)
    d_exact = 100 * (exact_last[0] - exact_first[0]) / window
    report.add("daemon CPU (schedstat, exact)", d_exact, "% of one core")
    report.add("daemon RSS at the end", d_rss, "MB", target=f"<= {TARGET_RSS_MB:g} MB", ok=d_rss <= TARGET_RSS_MB)
    report.add("daemon RSS peak in the window", d_peak, "MB")
    report.add("daemon RSS peak since start (VmHWM)", last[0].peak_rss_bytes / MB, "MB")
    report.add("daemon RSS own (anon) / shared files", f"{splits[0][0]:.1f} / {splits[0][1]:.1f}", "MB")
    report.add("daemon threads", splits[0][2])
    report.add("daemon metrics samples stored", daemon_samples, f"(expected ~{window / args.interval:.0f})")
    report.add("daemon CPU per sample", 1000 * (last[0].cpu_s - first[0].cpu_s) / max(1, daemon_samples), "ms")
    report.add("demo lines stored", lines, target=f"== {args.demos}", ok=lines == args.demos)
    if glances is not None:
        g_first, g_last = first[1], last[1]
        assert g_first is not None and g_last is not None
        g_cpu = procstat.cpu_percent(g_first, g_last)
        g_rss = g_last.rss_bytes / MB
        report.add("Glances CPU", g_cpu, "% of one core")
        g_exact = 100 * (exact_last[1] - exact_first[1]) / window
        report.add("Glances CPU (schedstat, exact)", g_exact, "% of one core")
        report.add("Glances RSS at the end", g_rss, "MB")
        report.add("Glances RSS peak in the window", tracked[1].peak_rss_bytes / MB, "MB")
        report.add("Glances RSS own (anon) / shared files", f"{splits[1][0]:.1f} / {splits[1][1]:.1f}", "MB")
        report.add("Glances threads", splits[1][2])
        report.add("Glances samples", glances_samples, f"(expected ~{window / args.interval:.0f})")
        report.add("Glances CPU per sample", 1000 * (g_last.cpu_s - g_first.cpu_s) / max(1, glances_samples), "ms")
        cpu_ratio = g_cpu / d_cpu if d_cpu > 0 else math.inf
        rss_ratio = g_rss / d_rss if d_rss > 0 else math.inf
        report.add("Glances / daemon CPU (ticks)", cpu_ratio, "x")  # 10 ms ticks: the verdict uses schedstat
        exact_ratio = g_exact / d_exact if d_exact > 0 else math.inf
        report.add("Glances / daemon CPU (schedstat)", exact_ratio, "x", target="> 1 (daemon cheaper)",
                   ok=exact_ratio > 1)
        report.add("Glances / daemon RSS", rss_ratio, "x", target="> 1 (daemon cheaper)", ok=rss_ratio > 1)
    report.add("machine CPU pressure in the window", procstat.machine_stall_percent(first[0], last[0]), "%")
    report.note("the daemon does its whole job meanwhile (TLS websocket, keep-alives, following the demo files "
                "(inotify, or polling with --no-inotify), demo liveness every second); Glances only collects and prints")
    return report


def on_cpu_s(pid: int) -> float:
    """Seconds on a CPU of the process's live threads, from /proc/<pid>/task/*/schedstat (ns).

    Exact where /proc/<pid>/stat counts 10 ms ticks, which matters for processes that use a few
    ms a second; a thread that exited meanwhile is not counted (both measured processes keep
    theirs).
    """
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as fh:
                total += int(fh.read().split()[0])
        except (FileNotFoundError, IndexError, ValueError):
            continue
    return total / 1e9


def memory_split(pid: int) -> tuple[float, float, int]:
    """(anonymous MB, file-backed + shared MB, threads) of a process from /proc/<pid>/status.

    File-backed pages are the interpreter and shared libraries (libpython, libssl, libcrypto):
    other Python processes on the machine share them, the anonymous part is the process's own.
    """
    fields: dict[str, str] = {}
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    kib = {k: int(fields.get(k, "0 kB").split()[0]) for k in ("RssAnon", "RssFile", "RssShmem")}
    return kib["RssAnon"] / 1024, (kib["RssFile"] + kib["RssShmem"]) / 1024, int(fields.get("Threads", "0"))


def _glances_up(glances: GlancesRun) -> bool:
    if not glances.alive():
        raise RigError(f"Glances exited at start:\n{glances.error_tail()}")
    return glances.samples() >= 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser("daemon_footprint", __doc__)
    p.add_argument("--minutes", type=positive_float, default=2.0, help="length of the measured window")
    p.add_argument("--interval", type=positive_float, default=5.0,
                   help="metrics interval the server sets, and Glances' refresh (s)")
    p.add_argument("--demos", type=positive_int, default=10, help="idle demos (one dvic_log file each)")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds after start-up before measuring")
    p.add_argument("--python", default=sys.executable, help="interpreter that runs the daemon")
    p.add_argument("--poll-interval", type=positive_float, default=None,
                   help="the daemon's --poll-interval (default: the daemon's own, 0.2 s)")
    p.add_argument("--from-source", action="store_true",
                   help="run the daemon as a script (compiled at start) instead of through its launcher")
    p.add_argument("--no-inotify", action="store_true", help="make the daemon poll its files (the fallback)")
    p.add_argument("--no-psutil", action="store_true", help="run the daemon with --no-psutil (/proc and /sys)")
    p.add_argument("--glances", metavar="PATH", help="the glances executable (default: from PATH)")
    p.add_argument("--no-glances", action="store_true", help="measure the daemon alone")
    add_common_args(p)
    args = p.parse_args(argv)
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, got {args.warmup}")
    if args.glances and not (os.path.isfile(args.glances) and os.access(args.glances, os.X_OK)):
        p.error(f"--glances {args.glances}: not an executable file")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_bench(parse_args(argv), "daemon_footprint", measure, run=None, fails=RIG_FAILURES)


if __name__ == "__main__":
    sys.exit(main())
