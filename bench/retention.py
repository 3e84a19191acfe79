"""Retention: how fast expired rows are deleted, alone and as the server does it beside ingest.

    python3 -m bench.retention [--rows 500000] [--ingest 10000] [--slice-ms 25]

Builds a database with the server's schema holding `--rows` expired log lines (full-text indexed,
spread over 2,000 nodes) and as many expired raw metric samples, plus a tenth as many fresh ones,
then measures on copies of it:
- `statements`: store.apply_retention with no time budget on a plain connection (one table at a
  time: raw samples, then logs with their full-text index), rows/s;
- server passes: services.trim_expired through the real Writer (25 ms slices; one pass for the
  lines, then one for the samples) while log lines arrive at `--ingest` lines/s from 2,000 nodes,
  and an urgent write (what an operator's command waits on) is timed every 100 ms: rows/s of each
  pass, the ingest stored meanwhile, and the urgent write's latency with and without the passes.
  Once `polite` (each slice followed by a pause as long: a pass's first 30 s in the server), once
  `catch-up` (no pauses: what a pass still running after 30 s does), each on its own copy.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import time
import uuid
from dataclasses import replace
from pathlib import Path

from central import db, store
from central.config import Config, Retention
from central.services import trim_expired
from central.store import FtsIndexer
from central.writer import LogsDone, Writer

from .common import add_common_args, parser, positive_float, positive_int, run_bench
from .report import Report, latency_summary

NODES = 2000
DAY = 86_400.0
RETENTION = Retention()  # the defaults: raw samples 24 h, logs 30 days
TICK_S = 0.02
COMMIT_INTERVAL_S = Config.commit_interval


async def migrated(path: Path) -> None:
    await db.create(path)


def fill(path: Path, rows: int, now: float) -> None:
    """Expired and fresh log lines and samples, written as the writer writes them."""
    asyncio.run(migrated(path))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    nodes = [str(uuid.uuid4()) for _ in range(NODES)]
    fts = FtsIndexer()
    fresh = rows // 10
    for start in range(0, rows + fresh, 10_000):
        conn.execute("BEGIN IMMEDIATE")
        batch = range(start, min(start + 10_000, rows + fresh))
        # Expired: lines 40 days old (window 30 days), samples 2 days old (window 24 h), oldest first.
        age = [(40 * DAY, 2 * DAY) if i < rows else (0.0, 0.0) for i in batch]
        store.insert_log_rows(conn, [
            (nodes[i % NODES], i // NODES + 1, now - log_age + i / 100, "demo", "", "cam", 20,
             f"frame {i} processed in 12.3 ms, queue depth 4, fps 29.97")
            for i, (log_age, _) in zip(batch, age, strict=True)])
        conn.executemany("INSERT INTO metrics_raw (node_id, name, ts, value) VALUES (?, 'cpu', ?, 1.5)",
                         [(nodes[i % NODES], now - sample_age + i / 100 - (rows + fresh) / 100)
                          for i, (_, sample_age) in zip(batch, age, strict=True)])
        fts.before_commit(conn)
        conn.execute("COMMIT")
        fts.committed()
    # The samples' minutes rolled up, as a running server's are (store.MetricRollup; retention
    # deletes rolled-up samples only).
    conn.execute("UPDATE metrics_rollup SET done = (SELECT max(rowid) FROM metrics_raw),"
                 " upto = (SELECT max(rowid) FROM metrics_raw)")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def copy_db(source: Path, target: Path) -> Path:
    shutil.copyfile(source, target)
    return target


def statement_rates(path: Path, now: float) -> dict[str, float]:
    """Rows/s of apply_retention without a budget, one table at a time."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    rates: dict[str, float] = {}
    r = RETENTION
    for table, logs_s in (("metrics_raw", 1e12), ("logs", r.logs_s)):  # samples first, logs kept; then logs
        conn.execute("BEGIN IMMEDIATE")
        started = time.perf_counter()
        deleted = store.apply_retention(now, r.raw_metrics_s, r.metrics_1m_s, logs_s, r.logs_max_rows,
                                        r.events_s, r.audit_s)(conn)
        conn.execute("COMMIT")
        rates[table] = deleted.get(table, 0) / (time.perf_counter() - started)
    conn.close()
    return rates


class Ingest:
    """Log lines from NODES nodes at a steady rate through Writer.queue_logs, as node sessions do."""

    def __init__(self, writer: Writer, lines_per_s: int) -> None:
        self.writer = writer
        self.per_tick = max(1, round(lines_per_s * TICK_S))
        self.seq = [0] * NODES
        self.next_node = 0
        self.offered = 0
        self.stored = 0

    def _done(self, count: int) -> LogsDone:
        def done(error: Exception | None) -> None:
            if error is None:
                self.stored += count
        return done

    async def run(self, stop: asyncio.Event) -> None:
        next_tick = time.monotonic()
        while not stop.is_set():
            for _ in range(self.per_tick):
                node = self.next_node
                self.next_node = (node + 1) % NODES
                self.seq[node] += 1
                line = {"seq": self.seq[node], "ts": time.time(), "source": "demo", "level": "INFO",
                        "msg": f"live line {self.seq[node]} of node {node}"}
                await self.writer.queue_logs(f"live-{node}", [line], self._done(1))
                self.offered += 1
            next_tick += TICK_S
            await asyncio.sleep(max(0.0, next_tick - time.monotonic()))


async def probe(writer: Writer, stop: asyncio.Event, latencies: list[float]) -> None:
    """An urgent write every 100 ms, timed from submit to commit."""
    while not stop.is_set():
        started = time.perf_counter()
        await writer.submit(store.insert_event(time.time(), "", "probe", "probe", {}), urgent=True)
        latencies.append(time.perf_counter() - started)
        await asyncio.sleep(0.1)


async def server_pass(path: Path, now: float, ingest_rate: int, slice_s: float, calm_s: float, mode: str,
                      report: Report) -> None:
    """Two passes beside ingest: the log lines first (raw samples kept), then the samples.

    `mode` "polite": every slice is followed by a pause as long (a pass's first 30 s in the
    server); "catch-up": no pauses (what a pass still running after 30 s does)."""
    polite_s = 1e9 if mode == "polite" else 0.0
    writer = Writer(path, COMMIT_INTERVAL_S)  # as the server runs it (Config.commit_interval)
    await writer.start()
    try:
        stop = asyncio.Event()
        ingest = Ingest(writer, ingest_rate)
        feeding = asyncio.create_task(ingest.run(stop))
        # Without retention first: the urgent write's latency beside ingest alone.
        calm: list[float] = []
        calm_stop = asyncio.Event()
        calm_probe = asyncio.create_task(probe(writer, calm_stop, calm))
        await asyncio.sleep(calm_s)
        calm_stop.set()
        await calm_probe
        busy: list[float] = []
        busy_probe = asyncio.create_task(probe(writer, stop, busy))
        offered, stored, commits = ingest.offered, ingest.stored, writer.commits
        started = time.perf_counter()
        for table, retention in (("logs", replace(RETENTION, raw_metrics_s=1e12)), ("metrics_raw", RETENTION)):
            pass_started = time.perf_counter()
            trimmed = await trim_expired(writer, retention, now, slice_s=slice_s, polite_s=polite_s,
                                         max_pass_s=3600)
            pass_s = time.perf_counter() - pass_started
            report.add(f"{mode} pass, {table}: rows/s", trimmed.get(table, 0) / pass_s,
                       f"({trimmed.get(table, 0):,} rows in {pass_s:.1f} s, {trimmed.seconds / pass_s:.0%} deleting)")
        elapsed = time.perf_counter() - started
        offered, stored, commits = ingest.offered - offered, ingest.stored - stored, writer.commits - commits
        stop.set()
        await asyncio.gather(feeding, busy_probe)
    finally:
        await writer.close()
    report.add(f"{mode} passes: commits", commits)
    report.add(f"{mode} passes: ingest offered / stored", f"{offered:,} / {stored:,}", "lines")
    report.add(f"{mode} passes: ingest stored", stored / elapsed, "lines/s")
    for name, values in ((f"urgent write, ingest alone ({mode} run)", calm), (f"urgent write during {mode} passes", busy)):
        s = latency_summary(values)
        report.add(f"{name}: p50 / p99 / max",
                   f"{s['p50'] * 1000:.1f} / {s['p99'] * 1000:.1f} / {s['max'] * 1000:.1f}", "ms")


def measure(args: argparse.Namespace, work: Path) -> Report:
    report = Report("Central server: retention", params={
        "expired rows": f"{args.rows:,} log lines + {args.rows:,} samples", "ingest": args.ingest,
        "slice_ms": args.slice_ms, "nodes": NODES,
    })
    now = time.time()
    source = work / "source.sqlite3"
    started = time.perf_counter()
    fill(source, args.rows, now)
    report.note(f"database built in {time.perf_counter() - started:.0f} s")
    for table, rate in statement_rates(copy_db(source, work / "statements.sqlite3"), now).items():
        report.add(f"statements: {table}", rate, "rows/s")
    for mode in ("polite", "catch-up"):
        asyncio.run(server_pass(copy_db(source, work / f"{mode}.sqlite3"), now, args.ingest,
                                args.slice_ms / 1000, args.calm, mode, report))
    return report


def main(argv: list[str] | None = None) -> int:
    p = parser("retention", __doc__)
    p.add_argument("--rows", type=positive_int, default=500_000,
                   help="expired log lines, and as many expired samples (500000)")
    p.add_argument("--ingest", type=positive_int, default=10_000,
                   help="log lines/s arriving during the server pass (10000: the fleet target)")
    p.add_argument("--slice-ms", type=positive_int, default=25, help="writer time per retention slice (25)")
    p.add_argument("--calm", type=positive_float, default=5.0,
                   help="seconds of ingest alone before the pass, to time the urgent write without it (5)")
    add_common_args(p)
    return run_bench(p.parse_args(argv), "retention", measure, run=None)


if __name__ == "__main__":
    raise SystemExit(main())
