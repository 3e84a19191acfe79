"""Supervised demos (issue 14): the first restart of a crashed demo, and a daemon supervising idle demos.

    python3 -m bench.demo_supervise [--demos 10] [--minutes 1] [--kills 10] [--python PY]

Runs the real daemon as systemd runs it (through its launcher, from its bytecode, default timings)
against the stand-in server of the node tests (tests/node/demo_support.py: the node websocket over
mutual TLS, release downloads; it pushes the desired set and acknowledges, nothing more), which
deploys --demos releases. Each demo is a real process (Python, started by the daemon's shim) that
prints one line and sleeps. Then:

1. Idle footprint: after a warm-up, the daemon's CPU (ticks and schedstat) and RSS over --minutes,
   as bench.daemon_footprint measures them; the shims' RSS beside it (one small process per demo).
2. First restart: --kills times, a different demo each time (its first restart: no backoff), kill -9
   of the demo process, then the time until the shim has started the new process (its proc.json
   names a new live pid), polled every millisecond.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.daemon import DaemonProcess
from tests.support.pki import make_pki
from tests.support.server import REPO, write_bundle

from . import procstat
from .common import add_common_args, parser, positive_float, positive_int, run_bench
from .daemon_footprint import memory_split, on_cpu_s
from .daemon_rig import RIG_FAILURES, RigError
from .report import Report, latency_summary

sys.path[:0] = [str(REPO / "tests" / "node"), str(REPO / "node_script")]  # the stand-in server
from demo_support import DemoServer, kill_demos, make_release, new_tag  # noqa: E402

TARGET_RESTART_S = 1.0
TARGET_CPU_PERCENT = 0.3
TARGET_RSS_MB = 30.0
MB = 1024 * 1024


def read_proc(state: Path, name: str) -> dict[str, Any]:
    try:
        return json.loads((state / "demos" / name / "proc.json").read_text())
    except (OSError, ValueError):
        return {}


def alive(pid: Any) -> bool:
    try:
        return isinstance(pid, int) and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def all_healthy(srv: DemoServer, names: list[str], timeout: float) -> None:
    def ready() -> bool:
        return all(srv.status(n).get("state") == "healthy" and srv.status(n).get("pid") for n in names)
    await srv.wait(ready, timeout, f"{len(names)} demos healthy")


def measure_restart(state: Path, name: str, timeout: float = 10.0) -> float:
    """kill -9 of the demo's process; seconds until its shim runs a new one."""
    before = read_proc(state, name)
    pid = before.get("pid")
    if not alive(pid):
        raise RigError(f"demo {name} is not running before the kill")
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    while time.monotonic() - t0 < timeout:
        now = read_proc(state, name)
        if now.get("pid") not in (None, pid) and alive(now.get("pid")):
            return time.monotonic() - t0
        time.sleep(0.001)  # the measurement: poll the shim's record
    raise RigError(f"demo {name} was not running again within {timeout:.0f} s")


async def measure(args: argparse.Namespace, work: Path) -> Report:
    report = Report("Supervised demos: first restart, idle footprint", params={
        "demos": args.demos, "minutes": args.minutes, "kills": args.kills, "python": args.python,
        "daemon": "through its launcher, from its bytecode, default timings"})
    tag = new_tag()
    names = [f"idle-{i:02d}" for i in range(args.demos)]
    (work / "pki").mkdir()
    async with DemoServer(make_pki(work / "pki")) as srv:
        bundle = write_bundle(srv.bundle(), work / "bundle.json")
        releases = [make_release(work, n, "1.0.0", python=args.python, tag=tag) for n in names]
        srv.serve(*releases)
        await srv.push([r.entry() for r in releases])
        state, logs = work / "node-state", work / "logs"
        logs.mkdir()
        daemon = DaemonProcess(bundle, state, logs, python=args.python, timings=(), how="compiled",
                               log_path=work / "daemon.log").start(cwd=REPO)
        try:
            await srv.connected(1, 60)
            await all_healthy(srv, names, 120)
            await asyncio.sleep(args.warmup)  # past the installs and the first connection before the window
            tracked = procstat.PeakTracker(daemon.pid)
            first, exact_first = tracked.sample(), on_cpu_s(daemon.pid)
            end = time.monotonic() + args.minutes * 60
            while time.monotonic() < end:
                await asyncio.sleep(min(1.0, end - time.monotonic()))
                daemon.check_alive()
                tracked.sample()
            last, exact_last = tracked.sample(), on_cpu_s(daemon.pid)
            anon, shared, threads = memory_split(daemon.pid)
            shims = [read_proc(state, n).get("shim_pid") for n in names]
            shim_rss = [procstat.read(p).rss_bytes / MB for p in shims if alive(p)]
            shim_anon = [memory_split(p)[0] for p in shims if alive(p)]
            restarts = []
            for name in names[:args.kills]:
                restarts.append(await asyncio.to_thread(measure_restart, state, name))
                await asyncio.sleep(0.5)  # one at a time (not a synchronisation: the next kill is another demo)
            await all_healthy(srv, names, 60)
            daemon.check_alive()
        finally:
            await asyncio.to_thread(daemon.stop)
            kill_demos(state, tag)
    if first is None or last is None:
        raise RigError("the daemon disappeared during the window")
    window = last.at - first.at
    cpu = procstat.cpu_percent(first, last)
    exact = 100 * (exact_last - exact_first) / window
    rss = last.rss_bytes / MB
    report.params["window_s"] = round(window, 1)
    report.add("daemon CPU (ticks)", cpu, "% of one core")
    report.add("daemon CPU (schedstat, exact)", exact, "% of one core", target=f"< {TARGET_CPU_PERCENT:g} %",
               ok=exact < TARGET_CPU_PERCENT)
    report.add("daemon RSS at the end", rss, "MB", target=f"< {TARGET_RSS_MB:g} MB", ok=rss < TARGET_RSS_MB)
    report.add("daemon RSS peak in the window", tracked.peak_rss_bytes / MB, "MB")
    report.add("daemon RSS own (anon) / shared files", f"{anon:.1f} / {shared:.1f}", "MB")
    report.add("daemon threads", threads)
    if shim_rss:
        report.add("shim RSS per demo (mean / max)", f"{sum(shim_rss) / len(shim_rss):.1f} / {max(shim_rss):.1f}",
                   "MB")
        report.add("shim RSS own (anon) per demo, mean", sum(shim_anon) / len(shim_anon), "MB")
    summary = latency_summary(restarts)
    report.add("first restart after kill -9 (p50)", summary["p50"] * 1000, "ms")
    report.add("first restart after kill -9 (max)", summary["max"] * 1000, "ms",
               target=f"< {TARGET_RESTART_S * 1000:.0f} ms", ok=summary["max"] < TARGET_RESTART_S)
    report.add("machine CPU pressure in the window", procstat.machine_stall_percent(first, last), "%")
    report.note("restart: kill -9 of the demo -> the shim (its own process) exits -> SIGCHLD wakes the daemon -> "
                "a new shim (python3 -I -S, its section of dvic_node.py) forks and execs the demo")
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser("demo_supervise", __doc__)
    p.add_argument("--demos", type=positive_int, default=10, help="supervised idle demos")
    p.add_argument("--minutes", type=positive_float, default=1.0, help="length of the measured idle window")
    p.add_argument("--warmup", type=float, default=10.0, help="seconds after all demos are healthy")
    p.add_argument("--kills", type=positive_int, default=10, help="demos killed once each (at most --demos)")
    p.add_argument("--python", default=sys.executable, help="interpreter of the daemon and the demos")
    add_common_args(p)
    args = p.parse_args(argv)
    args.kills = min(args.kills, args.demos)
    return args


def main(argv: list[str] | None = None) -> int:
    return run_bench(parse_args(argv), "demo_supervise", measure, fails=RIG_FAILURES)


if __name__ == "__main__":
    sys.exit(main())
