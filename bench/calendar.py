"""The venue calendar at size: `bookings --at` with 10,000 bookings stored, and what an idle
scheduler with 1,000 runbook moments costs.

    python3 -m bench.calendar [--bookings 10000] [--runbooks 1000] [--queries 200] [--idle-seconds 30]

Builds a database with the server's schema: 200 nodes in 20 groups, opening hours per group, the
runbooks (open-15m, close, close+30m and fixed times, none due within the next hours) and the
bookings (each node's, back to back with gaps, half before now and half after), written as the writer
writes them. Then, on a real dvic-central subprocess:
- `GET /api/v1/bookings?at=T` (T now, and T long ago: then the index range holds nearly every
  booking), one HTTPS keep-alive connection, `--queries` times: median and p95 answer time
  (target: under 50 ms); and `dvic bookings --at now
  --json` end to end (a new process each time: its start-up included), median of 5;
- the server process's CPU while idle for `--idle-seconds` (presence sweep and retention included;
  target for the scheduler: under 0.5 % of a core), and in this process, on the same runbooks,
  what one scheduler wake-up costs (the cached next moment, and a full recomputation after a
  change) over its tick.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
import ssl
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from central import db, store
from central.calendar import store as cal_store
from central.calendar.hours import Hours, parse_week
from central.calendar.moments import parse_moment
from central.calendar.queries import CalendarQueries
from central.calendar.scheduler import TICK_S, Scheduler
from central.calendar.service import Calendar, Runbook
from tests.support.database import started_writer
from tests.support.server import REPO, CentralServer

from . import procstat
from .common import add_common_args, bench_server, positive_int, work_dir
from .report import Report, percentile

GROUPS = 20
NODES_PER_GROUP = 10
DAY = 86_400.0
WEEK = ["mon-fri 14:00-20:00", "sat-sun 15:00-21:00"]
PERIOD_DAYS = 3.56  # a booking (2 h to 3 days) and the gap after it (1 h to 4 days), on average
RELATIVE = ["open-15m", "open", "close", "close+30m", "open+1h", "close-10m"]


def local_noon_zone(now: float) -> str:
    """An Etc/GMT zone where it is about noon now: the hours (14:00 on) and fixed moments (15:00
    on) are hours ahead, so nothing fires while the idle scheduler is measured."""
    offset = 12 - datetime.fromtimestamp(now, UTC).hour
    offset = offset - 24 if offset > 12 else offset
    return "Etc/GMT" + (f"{-offset:+d}" if offset else "")


async def seed(path: Path, bookings: int, runbooks: int, now: float) -> tuple[str, list[tuple[str, str]]]:
    writer = await started_writer(path)
    zone = local_noon_zone(now)
    nodes: list[tuple[str, str]] = []
    rng = random.Random(7)
    try:
        for g in range(GROUPS):
            group = f"hall-{g:02d}"
            await writer.submit(cal_store.set_hours(group, zone, parse_week(WEEK), now, "bench"))
            for n in range(NODES_PER_GROUP):
                node_id = f"bench-{g:02d}-{n:02d}"
                nodes.append((node_id, group))
                await writer.submit(store.create_node(node_id, node_id, "raspberry", group, now, f"fp-{node_id}",
                                                      "", f"th-{node_id}"))
        for i in range(runbooks):
            group = f"hall-{i % GROUPS:02d}"
            moment = RELATIVE[i % len(RELATIVE)] if i % 2 else f"{15 + (i // 2) % 9:02d}:{(i * 7) % 60:02d}"
            await writer.submit(cal_store.add_runbook(group, f"rb-{i:04d}", moment, [{"do": "reboot"}], 0, now,
                                                      "bench"))
        rows = []
        per_node = max(1, bookings // len(nodes))
        for node_id, _group in nodes:
            # Half of each node's bookings before now, half after (a booking and a gap: 3.6 days on average).
            at = now - per_node * PERIOD_DAYS / 2 * DAY + rng.uniform(0, 2 * DAY)
            for _ in range(per_node):
                length = rng.uniform(2 * 3600, 3 * DAY)
                rows.append(("team-" + str(rng.randrange(30)), at, at + length, "bench", [node_id]))
                at += length + rng.uniform(3600, 4 * DAY)
        for start in range(0, len(rows), 1000):
            await writer.submit(cal_store.insert_bookings_bulk(rows[start:start + 1000], now))
    finally:
        await writer.close()
    return zone, nodes


def query_times(server: CentralServer, count: int, at: float) -> tuple[list[float], int]:
    """Seconds per `GET /api/v1/bookings?at=`, on one keep-alive connection; and the rows answered."""
    host, port = server.url.removeprefix("https://").rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=ssl.create_default_context(cafile=str(server.ca_path)))
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    times, rows = [], 0
    for i in range(count + 5):
        started = time.perf_counter()
        conn.request("GET", f"/api/v1/bookings?at={at + i:.0f}", headers=headers)
        response = conn.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise SystemExit(f"GET /api/v1/bookings: HTTP {response.status} {body[:200]!r}")
        rows = len(json.loads(body)["bookings"])
        if i >= 5:  # the first few warm the connection and the caches
            times.append(elapsed)
    conn.close()
    return times, rows


def cli_times(server: CentralServer, runs: int, work: Path) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_CONFIG_HOME": str(work / "xdg"),
           "DVIC_TOKEN": server.admin_token}
    argv = [sys.executable, "-m", "tui", "--server", server.url, "--ca", str(server.ca_path),
            "bookings", "--at", "now", "--json"]
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, env=env, cwd=REPO, check=True, capture_output=True, timeout=60)
        out.append(time.perf_counter() - started)
    return out


def idle_cpu(server: CentralServer, seconds: float) -> float:
    """The server's CPU time over `seconds` of no requests, as a fraction of one core."""
    time.sleep(2.0)  # start-up work (the first retention pass) out of the way
    first = procstat.read(server.pid)
    time.sleep(seconds)
    last = procstat.read(server.pid)
    return (last.cpu_s - first.cpu_s) / (last.at - first.at)


def planner(runbooks: int, zone: str, now: float) -> Calendar:
    """The calendar's planning half alone (no writer, registry or loop) with the bench's runbooks."""
    calendar = Calendar.__new__(Calendar)
    hours = Hours(zone, parse_week(WEEK))
    calendar.hours = {f"hall-{g:02d}": hours for g in range(GROUPS)}
    calendar.runbooks = {}
    calendar._next = {}
    for i in range(runbooks):
        moment = RELATIVE[i % len(RELATIVE)] if i % 2 else f"{15 + (i // 2) % 9:02d}:{(i * 7) % 60:02d}"
        calendar.runbooks[i] = Runbook(i, f"hall-{i % GROUPS:02d}", f"rb-{i}", parse_moment(moment), [], 0, now, "b")
    return calendar


async def wake_cost(runbooks: int, zone: str, now: float, work: Path) -> tuple[float, float]:
    """Seconds of CPU one wake-up of the idle scheduler takes (its scan and its next sleep, as its
    loop does them, on the real Scheduler), and a recomputation after hours or runbooks change."""
    path = work / "scheduler.sqlite3"
    writer = await started_writer(path)
    read = await db.connect(path, read_only=True)
    calendar = planner(runbooks, zone, now)
    scheduler = Scheduler(writer, CalendarQueries(read), calendar, lambda *firing: None)
    scheduler.scanned_to = now
    try:
        scheduler.delay(now)  # the first plan after a start or a change
        wakes, at = [], now
        for _ in range(50):
            at += 1.0
            started = time.process_time()
            await scheduler.scan(at)
            scheduler.delay(at)
            wakes.append(time.process_time() - started)
        calendar._next.clear()
        started = time.process_time()
        scheduler.delay(at)
        fresh = time.process_time() - started
    finally:
        await read.close()
        await writer.close()
    return statistics.median(wakes), fresh


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bookings", type=positive_int, default=10_000, help="bookings stored (10000)")
    parser.add_argument("--runbooks", type=positive_int, default=1000, help="runbook moments stored (1000)")
    parser.add_argument("--queries", type=positive_int, default=200, help="timed bookings --at queries (200)")
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="idle CPU sampling window (30)")
    parser.add_argument("--cli-runs", type=int, default=5, help="timed `dvic bookings --at` processes (5)")
    add_common_args(parser)
    args = parser.parse_args(argv)
    now = time.time()
    report = Report("venue calendar", params={"bookings": args.bookings, "runbooks": args.runbooks,
                                              "queries": args.queries, "idle_seconds": args.idle_seconds})
    with work_dir(args.work_dir, args.keep, "calendar") as work:
        data = work / "central"
        data.mkdir()
        zone, _nodes = asyncio.run(seed(data / db.DB_FILE, args.bookings, args.runbooks, now))
        with bench_server(data) as server:
            early = now - args.bookings // (GROUPS * NODES_PER_GROUP) * PERIOD_DAYS / 2 * DAY + 2 * DAY
            for label, at in (("now", now), ("the first days (most rows end after it)", early)):
                times, rows = query_times(server, args.queries, at)
                ordered = sorted(times)
                median, p95 = statistics.median(ordered) * 1000, percentile(ordered, 95) * 1000
                report.add(f"GET /bookings?at={label}: median", median, "ms", target="< 50 ms", ok=median < 50)
                report.add(f"GET /bookings?at={label}: p95", p95, "ms", target="< 50 ms", ok=p95 < 50)
                report.add(f"bookings holding at {label} (rows answered)", rows)
            if args.cli_runs:
                report.add("dvic bookings --at now --json (process, start-up included): median",
                           statistics.median(cli_times(server, args.cli_runs, work)) * 1000, "ms")
            share = idle_cpu(server, args.idle_seconds) * 100
            report.add("idle server CPU (sweeper, retention and scheduler)", share, "% of a core")
        cached, fresh = asyncio.run(wake_cost(args.runbooks, zone, now, work))
        report.add("scheduler wake-up (scan and next sleep, real Scheduler), median of 50", cached * 1e6, "us")
        report.add("scheduler recomputation after a change", fresh * 1000, "ms")
        idle_share = cached / TICK_S * 100
        report.add(f"idle scheduler (one wake-up per {TICK_S:.0f} s tick)", idle_share, "% of a core",
                   target="< 0.5 %", ok=idle_share < 0.5)
        report.note(f"groups in zone {zone} (local noon now: no moment due during the run)")
    report.emit(args.json)


if __name__ == "__main__":
    main()
