"""Sustained log ingest through the real server vs direct batched inserts of the same rows.

    python3 -m bench.ingest [--nodes 4] [--lines 1000000] [--batch 500] [--window 4] [--engine postgresql]

Both phases run in one invocation on the same machine and disk. The direct phase inserts the
rows into a fresh database with the server's own schema (central.db), one transaction per batch:
on SQLite with the server's write code (central.store), on PostgreSQL (`--engine postgresql`: a
throw-away cluster made with initdb, durable settings) with COPY, PostgreSQL's fastest load path.
The server phase sends the same lines from a separate process over mutual-TLS websockets; a line
counts when its ack (sent only after the commit) comes back.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from central import db, store
from tests.support.postgres import Cluster, start_cluster

from . import procstat
from .common import (
    add_common_args,
    add_whatif_ssl_buffer,
    bench_server,
    parser,
    positive_int,
    run_bench,
)
from .enroll import Fleet, enroll_server_fleet, save_fleet
from .loglines import batch
from .report import Report
from .workers import Worker

TARGET_RATIO = 0.5
TARGET_RATE = 50_000


@dataclass(frozen=True)
class DirectResult:
    lines: int
    seconds: float  # time spent inserting and committing only (lines are built outside the clock)
    commits: int

    @property
    def rate(self) -> float:
        return self.lines / self.seconds if self.seconds > 0 else 0.0


async def create_schema(path: Path) -> None:
    await db.create(path)


def insert_direct(path: Path, fleet: Fleet, lines_per_node: int, size: int, base_ts: float,
                  batches_per_commit: int, *, bulk_fts: bool = False) -> DirectResult:
    """Insert every node's lines round-robin, the order the server sees them, in batched commits.

    `bulk_fts` was a what-if for indexing the full-text table once per batch; the server does that
    itself since schema migration 3 (store.insert_logs), so it no longer changes anything.
    """
    conn = sqlite3.connect(path, isolation_level=None)
    # The writer's own settings (central/writer.py), so both sides pay the same durability.
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    fts = store.FtsIndexer()
    timed = 0.0
    commits = 0
    pending = 0
    total = 0
    try:
        for first in range(1, lines_per_node + 1, size):
            count = min(size, lines_per_node - first + 1)
            for node in fleet.nodes:
                lines = batch(node.index, first, count, base_ts)
                started = time.perf_counter()
                if pending == 0:
                    conn.execute("BEGIN IMMEDIATE")
                store.insert_logs(node.node_id, lines)(conn)
                pending += 1
                if pending >= batches_per_commit:
                    fts.before_commit(conn)  # what the server's writer does before each commit
                    conn.execute("COMMIT")
                    fts.committed()
                    commits += 1
                    pending = 0
                timed += time.perf_counter() - started
                total += count
        if pending:
            started = time.perf_counter()
            fts.before_commit(conn)
            conn.execute("COMMIT")
            fts.committed()
            commits += 1
            timed += time.perf_counter() - started
    finally:
        conn.close()
    return DirectResult(total, timed, commits)


# The cluster's settings for a fair measure: durable commits, as a production server has them (the
# test clusters turn them off).
DURABLE = ("fsync=on", "synchronous_commit=on", "full_page_writes=on")
LOG_COLUMNS = ("node_id", "seq", "ts", "source", "unit", "demo", "level", "msg")


def prepare_days(url: str) -> None:
    """The day partitions of now, as the server makes them at start (store.ensure_partitions)."""
    conn = db.connect_writer(url)
    try:
        conn.begin()
        store.ensure_partitions(conn, time.time())
        conn.commit()
    finally:
        conn.close()


async def insert_direct_pg(url: str, fleet: Fleet, lines_per_node: int, size: int, base_ts: float) -> DirectResult:
    """The same rows, round-robin, one COPY and one transaction per batch."""
    await asyncio.to_thread(prepare_days, url)
    conn = await asyncpg.connect(url)
    timed = 0.0
    total = commits = 0
    try:
        for first in range(1, lines_per_node + 1, size):
            count = min(size, lines_per_node - first + 1)
            for node in fleet.nodes:
                rows = store.log_rows(node.node_id, batch(node.index, first, count, base_ts))
                started = time.perf_counter()
                async with conn.transaction():
                    await conn.copy_records_to_table("logs", records=rows, columns=LOG_COLUMNS)
                timed += time.perf_counter() - started
                commits += 1
                total += count
    finally:
        await conn.close()
    return DirectResult(total, timed, commits)


async def run(args: argparse.Namespace, work: Path) -> Report:
    lines_per_node = max(1, args.lines // args.nodes)
    total = lines_per_node * args.nodes
    base_ts = time.time() - 3600
    report = Report("Central server: sustained log ingest", params={
        "nodes": args.nodes, "lines": total, "batch": args.batch, "window": args.window, "engine": args.engine,
    })
    cluster: Cluster | None = start_cluster(DURABLE) if args.engine == "postgresql" else None
    database = cluster.fresh_database() if cluster is not None else None
    server = bench_server(work / "central", args.whatif_ssl_buffer, report, database=database).start()
    worker: Worker | None = None
    try:
        fleet = await enroll_server_fleet(server, work, args.nodes, prefix="ingest")
        fleet_file = work / "fleet.json"
        save_fleet(fleet, fleet_file)

        if cluster is not None:
            direct = await insert_direct_pg(cluster.fresh_database(), fleet, lines_per_node, args.batch, base_ts)
        else:
            direct_path = work / "direct.sqlite3"
            await create_schema(direct_path)
            direct = await asyncio.to_thread(insert_direct, direct_path, fleet, lines_per_node, args.batch,
                                             base_ts, 1)
        grouped = None
        if args.grouped:
            grouped_path = work / "direct-grouped.sqlite3"
            await create_schema(grouped_path)
            grouped = await asyncio.to_thread(insert_direct, grouped_path, fleet, lines_per_node, args.batch,
                                              base_ts, args.nodes * args.window)

        bulk = None
        if args.fts_whatif:
            bulk_path = work / "direct-bulk-fts.sqlite3"
            await create_schema(bulk_path)
            bulk = await asyncio.to_thread(insert_direct, bulk_path, fleet, lines_per_node, args.batch, base_ts, 1,
                                           bulk_fts=True)

        worker = Worker("ingest-worker", "bench.ingest_worker", [
            "--fleet", str(fleet_file), "--lines-per-node", str(lines_per_node), "--batch", str(args.batch),
            "--window", str(args.window), "--base-ts", repr(base_ts), "--timeout", str(args.timeout),
        ], work)
        await worker.start()
        ready = await worker.expect("ready", timeout=120)
        before = procstat.read(server.pid)
        await worker.send("go")
        result = await worker.expect("result", timeout=args.timeout + 60)
        after = procstat.read(server.pid)
        await worker.finish()
        worker = None
    finally:
        if worker is not None:
            worker.kill()
        server.stop()
    try:
        stored = int(server.query("SELECT count(*) FROM logs")[0][0])
    finally:
        if cluster is not None:
            cluster.stop()
    acked = sum(result.get("acked", []))
    server_rate = acked / result["seconds"] if result.get("seconds") else 0.0
    ratio = server_rate / direct.rate if direct.rate else 0.0

    report.add("direct PostgreSQL COPY" if cluster is not None else "direct SQLite inserts", direct.rate, "lines/s")
    report.add("  (lines, commits)", f"{direct.lines:,} lines in {direct.commits:,} commits of {args.batch}")
    if grouped is not None:
        report.add(f"direct, {args.nodes * args.window} batches/commit", grouped.rate, "lines/s")
    if bulk is not None:
        report.add("direct, FTS filled per commit", bulk.rate, "lines/s")
    report.add("through the server (acked)", server_rate, "lines/s", target=f">= {TARGET_RATE:,}",
               ok=server_rate >= TARGET_RATE)
    report.add("server / direct", round(ratio, 3), "", target=f">= {TARGET_RATIO}", ok=ratio >= TARGET_RATIO)
    if grouped is not None and grouped.rate:
        report.add("server / direct grouped", round(server_rate / grouped.rate, 3))
    report.add("server run time", round(result.get("seconds", 0.0), 2), "s")
    report.add("acks received", int(result.get("acks", 0)))
    report.add("lines sent / acked / stored", f"{total:,} / {acked:,} / {stored:,}", target="all stored",
               ok=stored == total and acked == total)
    report.add("server CPU during the run", round(procstat.cpu_percent(before, after), 1), "% of one core")
    report.add("server event loop waiting for a CPU", round(procstat.main_wait_percent(before, after), 1),
               "% of the time")
    report.add("server, all threads waiting for a CPU", round(procstat.all_wait_percent(before, after), 1),
               "% of the time (summed)")
    report.add("machine CPU pressure (PSI some)", round(procstat.machine_stall_percent(before, after), 1),
               "% of the time")
    report.add("client CPU during the run", round(result.get("cpu_s", 0.0) / max(result.get("seconds", 1), 1e-9)
                                                   * 100, 1), "% of one core")
    if acked:
        # CPU time per line hardly depends on other work on the machine, unlike the rate.
        per_line = (after.cpu_s - before.cpu_s) / acked
        report.add("server CPU per 1,000 lines", round(per_line * 1e6, 1), "ms")
        report.add("  => lines/s one free core could carry", round(1 / per_line) if per_line > 0 else 0, "lines/s")
    report.add("server peak RSS", round(after.peak_rss_bytes / 1e6, 1), "MB")
    report.add("client encode (before the clock)", round(ready.get("encode_s", 0.0), 2), "s")
    if result.get("error"):
        report.note(f"load generator error: {result['error']}")
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser("ingest", __doc__, nodes=4, nodes_are="simulated nodes sending at once")
    p.add_argument("--lines", type=positive_int, default=1_000_000, help="total lines (default 1,000,000)")
    p.add_argument("--batch", type=positive_int, default=500, help="lines per batch (protocol max 500)")
    p.add_argument("--window", type=positive_int, default=4, help="unacknowledged batches per node (default 4)")
    p.add_argument("--grouped", action="store_true",
                   help="also time direct inserts with as many batches per commit as the server can group")
    p.add_argument("--fts-whatif", action="store_true",
                   help="also time direct inserts that fill the full-text index per commit instead of per row")
    add_whatif_ssl_buffer(p)
    p.add_argument("--engine", choices=("sqlite", "postgresql"), default="sqlite",
                   help="the server's database: its SQLite file, or PostgreSQL on a throw-away cluster (initdb)")
    p.add_argument("--timeout", type=float, default=600.0, help="give up on the server phase after this")
    add_common_args(p)
    args = p.parse_args(argv)
    if args.batch > 500:
        p.error("--batch: the protocol allows at most 500 lines per batch")
    if args.engine != "sqlite" and (args.grouped or args.fts_whatif):
        p.error("--grouped and --fts-whatif time SQLite what-ifs: use them with --engine sqlite")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_bench(parse_args(argv), "ingest", run)


if __name__ == "__main__":
    raise SystemExit(main())
