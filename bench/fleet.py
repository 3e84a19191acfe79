"""Fleet simulator: N nodes over real mutual-TLS websockets, timed from node to an operator's stream.

    python3 -m bench.fleet [--nodes 2000] [--lines-per-s 5] [--duration 60] [--interval 5]
                           [--engine postgresql | --database postgresql://...]

Starts a real server, enrolls the nodes through the API (concurrently, timed), runs them from
separate processes (--procs), and subscribes to every node's logs on GET /api/v1/stream. Prints
the node-to-subscriber latency (p50/p99/max), the server's RSS and CPU, acks, and lines sent vs
stored (read from the database after the server stopped). `--engine postgresql` runs the server on
a throw-away PostgreSQL cluster (initdb, durable settings, as bench.ingest) and adds PostgreSQL's
CPU; `--database URL` on an existing empty database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

from central import db
from central.cli import run_event_loop
from tests.support.postgres import Cluster, start_cluster
from tests.support.server import CentralServer

from . import procstat
from .bus_compare import children_of, process_cpu
from .common import (
    WHATIF_SERVER,
    add_common_args,
    add_procs,
    add_whatif_ssl_buffer,
    bench_server,
    non_negative_int,
    parser,
    positive_float,
    positive_int,
    run_bench,
)
from .enroll import enroll_server_fleet, save_fleet
from .ingest import DURABLE
from .memprobe import PROBE_ENV, TRACE_ENV
from .report import Report, latency_summary
from .subscriber import LatencySubscriber
from .workers import Worker
from .writer_paths import fill_history

TARGET_P99_S = 0.250
TARGET_RSS_MB = 400


def stored_by_node(server: CentralServer) -> dict[str, tuple[int, int]]:
    """node id -> (rows, highest seq) in the server's database, either engine."""
    rows = server.query("SELECT node_id, count(*), max(seq) FROM logs GROUP BY node_id")
    return {node: (int(count), int(top)) for node, count, top in rows}


def postgres_cpu_s(cluster: Cluster | None) -> float:
    """CPU seconds so far of the throw-away cluster: postmaster, its backends, and those it reaped."""
    if cluster is None:
        return 0.0
    postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
    return process_cpu(postmaster, reaped=True) + sum(process_cpu(pid) for pid in children_of(postmaster))


async def sample_peak(tracker: procstat.PeakTracker, until: float) -> None:
    """RSS once a second until `until` (monotonic): the peak during the run, not only at the end."""
    for _ in range(100_000):
        if time.monotonic() >= until or tracker.sample() is None:
            return
        await asyncio.sleep(1.0)


def store_history(server: CentralServer, nodes: list[str], minutes: int) -> int:
    """The metrics history of a fleet that has been running (bench.writer_paths.fill_history) written
    into the stopped server's SQLite file, then the server started again: the samples of the run
    then land in tables and indexes the size of a running server's, not in empty ones."""
    server.stop()
    conn = db.configure(sqlite3.connect(server.db_path, isolation_level=None), writer=True)
    try:
        rows = fill_history(conn, nodes, time.time(), minutes, minutes)
    finally:
        conn.close()
    server.start()
    return rows


def server_env(args: argparse.Namespace) -> dict[str, str]:
    """The server's extra environment: --server-env, and the memory probe's switches."""
    env = dict(item.split("=", 1) for item in args.server_env)
    if args.memprobe is not None:
        env[PROBE_ENV] = str(args.memprobe)
        if args.tracemalloc:
            env[TRACE_ENV] = str(args.tracemalloc)
    return env


async def probe_memory(args: argparse.Namespace, pid: int, report: Report, when: str) -> None:
    """--memprobe: have the server write a probe (bench/memprobe.py) and wait for it (bounded)."""
    if args.memprobe is None:
        return
    index = len(list(args.memprobe.glob("probe-*.json")))
    os.kill(pid, signal.SIGUSR2)
    done = args.memprobe / f"probe-{index}.json"
    for _ in range(1200):  # a snapshot of 20,000 connections with tracing on takes a while
        if done.exists():
            report.note(f"memory probe {done.with_suffix('')}: {when}")
            return
        await asyncio.sleep(0.5)
    report.note(f"memory probe {done} not written in 600 s ({when})")


def fleet_workers(name: str, fleet_file: Path, nodes: int, procs: int, work: Path, options: list[str]) -> list[Worker]:
    """`procs` bench.fleet_worker processes (not started) sharing the fleet's nodes as evenly as can
    be, each from its own source address, with `options`."""
    workers: list[Worker] = []
    first = 0
    for i in range(procs):
        count = nodes // procs + (1 if i < nodes % procs else 0)
        workers.append(Worker(f"{name}-{i}", "bench.fleet_worker", [
            "--fleet", str(fleet_file), "--start", str(first), "--count", str(count),
            "--source-address", source_address(i), *options], work))
        first += count
    return workers


def source_address(worker: int) -> str:
    """Each worker connects from its own loopback address, 127.0.0.2 and up: one address has ~28,000
    ephemeral ports (net.ipv4.ip_local_port_range) towards the server's address and port."""
    return f"127.0.0.{2 + worker % 250}"


async def run(args: argparse.Namespace, work: Path) -> Report:
    report = Report("Central server: fleet of simulated nodes", params={
        "nodes": args.nodes, "lines_per_s": args.lines_per_s, "duration_s": args.duration,
        "interval_s": args.interval, "batching": args.batching,
        "batch_interval_s": args.batch_interval if args.batching == "interval" else "-", "procs": args.procs,
        "database": args.engine if args.database is None else "postgresql (--database)",
    })
    cluster: Cluster | None = start_cluster(DURABLE) if args.engine == "postgresql" else None
    database = cluster.fresh_database() if cluster is not None else args.database
    # The server's connection bound (and so its open-file limit, central/listener.py) must take the
    # whole fleet and the subscriber (the server lowers it to fit a lower hard open-file limit).
    options: dict[str, Any] = {"module": WHATIF_SERVER} if args.memprobe is not None else {}
    server = bench_server(work / "central", args.whatif_ssl_buffer, report,
                          extra_args=("--max-connections", str(max(10_000, args.nodes + 100))),
                          env=server_env(args), database=database, **options).start()
    workers: list[Worker] = []
    subscriber: LatencySubscriber | None = None
    try:
        fleet = await enroll_server_fleet(server, work, args.nodes, prefix="sim",
                                          concurrency=args.enroll_concurrency)
        report.add("enrollment (POST /api/v1/nodes)", f"{len(fleet.nodes):,} nodes in {fleet.seconds:.1f} s "
                   f"({fleet.rate:.0f}/s, {args.enroll_concurrency} at a time)")
        fleet_file = work / "fleet.json"
        save_fleet(fleet, fleet_file)
        report.add("server RSS after enrollment", round(procstat.read(server.pid).rss_bytes / 1e6, 1), "MB")
        if args.history_minutes:
            started = time.monotonic()
            rows = await asyncio.to_thread(store_history, server, [node.node_id for node in fleet.nodes],
                                           args.history_minutes)
            report.add("metrics history stored first (server stopped)", f"{rows:,} raw samples, {args.history_minutes}"
                       f" min of them and of minute aggregates per series, in {time.monotonic() - started:.0f} s")
        await probe_memory(args, server.pid, report, "enrolled, none connected")

        workers = fleet_workers("fleet-worker", fleet_file, args.nodes, args.procs, work, [
            "--lines-per-s", str(args.lines_per_s), "--batch-interval", str(args.batch_interval),
            "--batching", args.batching,
            "--interval", str(args.interval), "--duration", str(args.duration), "--warmup", str(args.warmup),
            "--connect-concurrency", str(args.connect_concurrency), "--drain-timeout", str(args.drain_timeout),
        ])
        # The subscriber first: once the nodes fill --max-connections, a tenth of it is theirs alone.
        subscriber = LatencySubscriber(server.url, server.admin_token, server.ssl_context)
        await subscriber.start()
        connect_started = time.monotonic()
        for w in workers:
            await w.start()
        ready = [await w.expect("ready", timeout=args.connect_timeout) for w in workers]
        connect_s = time.monotonic() - connect_started
        connected = sum(r["connected"] for r in ready)
        report.add("nodes connected (mTLS websocket + hello)", f"{connected:,} of {args.nodes:,} in {connect_s:.1f} s",
                   target="all", ok=connected == args.nodes)
        for r in ready:
            for err in r.get("errors", []):
                report.note(f"connect error: {err}")

        idle = procstat.read(server.pid)
        report.add("server RSS, all connected, idle", round(idle.rss_bytes / 1e6, 1), "MB")
        await probe_memory(args, server.pid, report, "all connected, idle")
        idle, pg_idle = procstat.read(server.pid), postgres_cpu_s(cluster)

        tracker = procstat.PeakTracker(server.pid)
        go_wall = time.time()
        go = time.monotonic()
        subscriber.measure_from = go_wall + args.warmup
        for w in workers:
            await w.send("go")
        sampler = asyncio.create_task(sample_peak(tracker, go + args.duration))
        await asyncio.sleep(args.warmup)
        before, pg_before = procstat.read(server.pid), postgres_cpu_s(cluster)
        await asyncio.sleep(max(0.0, go + args.duration - time.monotonic()))
        after, pg_after = procstat.read(server.pid), postgres_cpu_s(cluster)
        await probe_memory(args, server.pid, report, "all connected, at the end of the sending")
        results = [await w.expect("result", timeout=args.duration + args.drain_timeout + 120) for w in workers]
        for w in workers:
            await w.finish()
        workers = []
        await sampler
        acked_total = sum(r.get("lines_acked", 0) for r in results)
        await subscriber.wait_for_lines(acked_total, timeout=15)
        peak, pg_end = procstat.read(server.pid), postgres_cpu_s(cluster)
        await subscriber.stop()
    finally:
        for w in workers:
            w.kill()
        if subscriber is not None:
            await subscriber.stop()
        server.stop()
    try:
        stored = stored_by_node(server)
    finally:
        if cluster is not None:
            cluster.stop()
    _add_results(report, args, results, subscriber, stored, before, after, peak, tracker, connected)
    if cluster is not None:
        report.add("PostgreSQL CPU (postmaster + backends)",
                   round(100 * (pg_after - pg_before) / (after.at - before.at), 1), "% of one core")
    rows = sum(count for count, _ in stored.values())
    if rows:
        # CPU time does not grow when the machine is busy with other work, unlike latency: it says
        # what this server could carry with a core to itself.
        per_line = (peak.cpu_s - idle.cpu_s) / rows
        report.add("server CPU per 1,000 lines (all its work)", round(per_line * 1e6, 1), "ms")
        report.add("  => lines/s one free core could carry", round(1 / per_line) if per_line > 0 else 0,
                   "lines/s")
        if cluster is not None:  # every line stored, however late: comparable across machine loads
            report.add("PostgreSQL CPU per 1,000 lines (all its work)", round((pg_end - pg_idle) / rows * 1e6, 1),
                       "ms")
    return report


def _add_results(report: Report, args: argparse.Namespace, results: list[dict[str, Any]],
                 sub: LatencySubscriber, stored: dict[str, tuple[int, int]], before: procstat.ProcSample,
                 after: procstat.ProcSample, peak: procstat.ProcSample, tracker: procstat.PeakTracker,
                 connected: int) -> None:
    for r in results:
        if r.get("error"):
            report.note(f"worker error: {r['error']}")
    sent = sum(r.get("lines_sent", 0) for r in results)
    acked = sum(r.get("lines_acked", 0) for r in results)
    send_s = max((r.get("send_seconds", 0.0) for r in results), default=0.0)
    acked_by_node: dict[str, int] = {}
    for r in results:
        acked_by_node.update(r.get("acked_by_node", {}))
    rows = sum(count for count, _ in stored.values())
    # Seqs start at 1 with no gaps, so a node with ack N must have at least N rows stored.
    lost = {node: seq - stored.get(node, (0, 0))[0] for node, seq in acked_by_node.items()
            if stored.get(node, (0, 0))[0] < seq}
    lat = latency_summary(sub.latencies)

    offered = connected * args.lines_per_s
    report.add("log lines sent", f"{sent:,} ({sent / send_s if send_s else 0:,.0f}/s; offered {offered:,.0f}/s)")
    report.add("frames sent (logs / metrics)", f"{sum(r.get('frames', 0) for r in results):,} / "
                                               f"{sum(r.get('metrics_sent', 0) for r in results):,}")
    acks_ms = sorted(v for r in results for v in r.get("ack_latencies_ms", []))
    ack = latency_summary(acks_ms)
    report.add("latency frame sent -> ack p50 / p99 / max",
               f"{ack['p50']:.1f} / {ack['p99']:.1f} / {ack['max']:.1f}", "ms")
    report.add("latency node -> subscriber p50", round(lat["p50"] * 1000, 1), "ms")
    report.add("latency node -> subscriber p99", round(lat["p99"] * 1000, 1), "ms",
               target=f"< {TARGET_P99_S * 1000:.0f} ms", ok=lat["p99"] < TARGET_P99_S)
    report.add("latency node -> subscriber max", round(lat["max"] * 1000, 1), "ms")
    report.add("  timed lines (after warm-up)", int(lat["count"]))
    report.add("subscriber lines received", f"{sub.lines:,} of {acked:,} acked",
               target="all, never cut off", ok=sub.lines >= acked and not sub.cut_off)
    if sub.cut_off:
        report.note(f"the subscriber was disconnected by the server (close code {sub.close_code})")
    report.add("acks received", sum(r.get("acks", 0) for r in results))
    report.add("lines sent / acked / stored", f"{sent:,} / {acked:,} / {rows:,}", target="all acked and stored",
               ok=rows == sent == acked)
    report.add("acked lines missing from the database", sum(lost.values()), target="0 (nothing lost)",
               ok=not lost)
    if lost:
        report.note(f"{len(lost)} nodes have fewer stored lines than acked, e.g. {list(lost)[:3]}")
    if acked < sent:
        report.note(f"{sent - acked:,} lines were still unacknowledged {args.drain_timeout:.0f} s after the "
                    f"load stopped (a daemon keeps and resends them): the server fell behind")
    dropped = {k: v for r in results for k, v in r.get("dropped_during_run", {}).items()}
    report.add("connections dropped during the run", len(dropped), target="0", ok=not dropped)
    if dropped:
        codes = sorted({str(v) for v in dropped.values()})
        report.note(f"close codes of dropped connections: {', '.join(codes)}")
    report.add("server peak RSS (VmHWM, whole run)", round(peak.peak_rss_bytes / 1e6, 1), "MB",
               target=f"< {TARGET_RSS_MB} MB", ok=peak.peak_rss_bytes < TARGET_RSS_MB * 1e6)
    report.add("server RSS at the end", round(peak.rss_bytes / 1e6, 1), "MB")
    # The figures above include the nodes' disconnection at the end; these are the steady state.
    report.add("server RSS, all connected, end of sending", round(after.rss_bytes / 1e6, 1), "MB")
    report.add("server peak RSS while sending (1 s samples)", round(tracker.peak_rss_bytes / 1e6, 1), "MB")
    report.add("server CPU, all threads", round(procstat.cpu_percent(before, after), 1), "% of one core")
    report.add("server CPU, event loop", round(procstat.main_thread_percent(before, after), 1), "% of one core")
    report.add("server CPU, busiest other thread (the writer)",
               round(procstat.busiest_other_thread_percent(before, after), 1), "% of one core")
    report.add("event loop waiting for a CPU", round(procstat.main_wait_percent(before, after), 1), "% of the time")
    report.add("server, all threads waiting for a CPU", round(procstat.all_wait_percent(before, after), 1),
               "% of the time (summed)")
    report.add("machine CPU pressure (PSI some)", round(procstat.machine_stall_percent(before, after), 1),
               "% of the time")
    client_cpu = sum(r.get("cpu_s", 0.0) for r in results)
    report.add("load generators' CPU", round(100 * client_cpu / send_s if send_s else 0.0, 1), "% of one core")
    report.add("worst send-schedule lateness", round(max((r.get("worst_tick_lateness", 0.0) for r in results),
                                                         default=0.0) * 1000, 1), "ms")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser("fleet", __doc__, nodes=2000, interval=True)
    p.add_argument("--lines-per-s", type=positive_float, default=5.0, help="log lines per second per node (5)")
    p.add_argument("--duration", type=positive_float, default=60.0, help="seconds of sending (60)")
    p.add_argument("--batching", choices=("daemon", "interval"), default="daemon",
                   help="how a node frames its lines: as the daemon does (at once while no frame awaits its "
                        "ack, else gathered until the ack or for 0.25 s; the default), or every --batch-interval")
    p.add_argument("--batch-interval", type=positive_float, default=0.2,
                   help="--batching interval: seconds between a node's log flushes (0.2)")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds at the start not timed for latency (default: 10%% of --duration, at most 5)")
    add_procs(p, 2)
    p.add_argument("--enroll-concurrency", type=positive_int, default=32, help="enrollments in flight (32)")
    p.add_argument("--connect-concurrency", type=positive_int, default=64,
                   help="TLS connects in flight per process (64)")
    p.add_argument("--drain-timeout", type=positive_float, default=30.0,
                   help="after sending, wait this long at most for the last acks (30 s)")
    p.add_argument("--connect-timeout", type=positive_float, default=600.0,
                   help="give up when the nodes are not all connected after this (600 s)")
    add_whatif_ssl_buffer(p)
    engine = p.add_mutually_exclusive_group()
    engine.add_argument("--engine", choices=("sqlite", "postgresql"), default="sqlite",
                        help="the server's database: its SQLite file, or PostgreSQL on a throw-away cluster (initdb)")
    engine.add_argument("--database", metavar="postgresql://...",
                        help="the server's --database: an existing, empty PostgreSQL database (its CPU is not measured)")
    p.add_argument("--history-minutes", type=non_negative_int, default=0, metavar="MIN",
                   help="SQLite: before the run, store MIN minutes of every node's metrics (raw samples and minute "
                        "aggregates, as a running server holds them; the server stopped meanwhile)")
    p.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                   help="run the server with this in its environment (e.g. MALLOC_ARENA_MAX=2); repeatable")
    p.add_argument("--memprobe", type=Path, metavar="DIR",
                   help="have the server write memory probes into DIR (enrolled; all connected; at the end of the "
                        "sending, still connected): "
                        "compare them with python3 -m bench.memprobe")
    p.add_argument("--tracemalloc", type=non_negative_int, default=0, metavar="FRAMES",
                   help="with --memprobe: trace Python's allocations from the first probe on, FRAMES deep "
                        "(slows the server)")
    add_common_args(p)
    args = p.parse_args(argv)
    if args.procs > args.nodes:
        p.error("--procs: more processes than nodes")
    if args.history_minutes and (args.engine != "sqlite" or args.database is not None):
        p.error("--history-minutes: SQLite only")
    if args.database is not None and not args.database.startswith(("postgresql://", "postgres://")):
        p.error("--database: expected a postgresql:// URL (SQLite is the default: leave --database out)")
    for item in args.server_env:
        if "=" not in item:
            p.error(f"--server-env: expected KEY=VALUE, got {item!r}")
    if args.memprobe is not None:
        args.memprobe = args.memprobe.resolve()
        args.memprobe.mkdir(parents=True, exist_ok=True)
    if args.warmup is None:
        args.warmup = min(5.0, args.duration / 10)
    if not 0 <= args.warmup < args.duration:
        p.error("--warmup: must be at least 0 and shorter than --duration")
    return args


def main(argv: list[str] | None = None) -> int:
    # uvloop when installed, as the server and the nodes
    return run_bench(parse_args(argv), "fleet", run, run=run_event_loop)


if __name__ == "__main__":
    raise SystemExit(main())
