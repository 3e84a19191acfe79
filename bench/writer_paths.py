"""The writer thread's inserts, alone: why node batches are merged into one statement, and what a
metric sample costs.

    python3 -m bench.writer_paths [--rows 30000] [--per-commit 100] [--nodes 2000]
    python3 -m bench.writer_paths --metrics [--nodes 5000] [--minutes 2] [--interval 10] [--per-commit 500]
                                  [--fresh] [--engine postgresql]

Log lines: inserts the same rows into a fresh database (the server's schema) the way the writer
thread does, while the main thread spins in Python the way a busy event loop does, for two paths:
`per-row` (one `executemany`, so one GIL release per row) and `merged` (store.insert_log_rows:
one `INSERT … SELECT … FROM json_each`). Then, without the spinning thread, the CPU per 1,000
lines of the merged path with the schema as is and with the `(node_id, ts)` index the schema
had before step 4 (see docs/performance.md). Prints rows/s, the main thread's share of its solo speed,
and user/system CPU per 1,000 lines.

Metric samples (`--metrics`): `--nodes` nodes sending a bench.loglines sample (10 series) every
`--interval` s, `--minutes` of them in arrival order, `--per-commit` samples per commit (the
writer's at 20,000 nodes), into a database already holding the history a running fleet has: 10
minutes of raw samples and two hours of minute aggregates per series (without them every page
would still be in SQLite's cache and a sample would cost a fraction of what it does; `--fresh`:
into an empty database, as the first minutes of a bench.fleet run). Prints the
CPU per 1,000 samples and the p99 and longest commit of: the path before schema step 13 (each sample
upserted into its minute, index (node_id, name, ts)); its raw insert alone; the path now
(store.insert_metric_rows, the rollup once a minute of the samples' time in slices); and the
JSON text alone. `--engine postgresql`: the writer thread's CPU (Python and asyncpg) and
PostgreSQL's, before (two statements) and now (one), into empty tables of a throw-away cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from central import db, store
from central.messages import metric_series
from central.store import FtsIndexer
from tests.support.postgres import start_cluster

from . import loglines
from .ingest import DURABLE

Rows = list[list[object]]


def make_rows(total: int, nodes: int) -> Rows:
    ids = [str(uuid.uuid4()) for _ in range(nodes)]
    seqs = dict.fromkeys(ids, 0)
    rows: Rows = []
    for i in range(total):
        node = ids[i % nodes]
        seqs[node] += 1
        rows.append([node, seqs[node], time.time(), "demo", "", "cam", 20,
                     f"frame {seqs[node]} processed in 12.3 ms, queue depth 4, fps 29.97"])
    return rows


def fresh_db(work: Path, extra: tuple[str, ...] = ()) -> sqlite3.Connection:
    path = work / f"bench-{uuid.uuid4().hex[:8]}.sqlite3"
    asyncio.run(db.create(path))
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "temp_store=MEMORY", "wal_autocheckpoint=16384"):
        conn.execute(f"PRAGMA {pragma}")
    for statement in extra:
        conn.execute(statement)
    return conn


def per_row(conn: sqlite3.Connection, rows: Rows) -> None:
    conn.executemany(
        "INSERT OR IGNORE INTO logs (node_id, seq, ts, source, unit, demo, level, msg) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )


def insert_all(conn: sqlite3.Connection, rows: Rows, per_commit: int, insert: Callable[[sqlite3.Connection, Rows], object]) -> None:
    fts = FtsIndexer()
    for start in range(0, len(rows), per_commit):
        conn.execute("BEGIN IMMEDIATE")
        insert(conn, rows[start:start + per_commit])
        fts.before_commit(conn)
        conn.execute("COMMIT")
        fts.committed()


def spin_rate(seconds: float) -> float:
    count, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(1000):
            pass
        count += 1
    return count / seconds


def contended(conn: sqlite3.Connection, rows: Rows, per_commit: int, insert: Callable[[sqlite3.Connection, Rows], object]) -> tuple[float, float]:
    """Rows/s of the insert on a second thread while this one spins; and the spin rate meanwhile."""
    done = threading.Event()
    elapsed: list[float] = []

    def writer() -> None:
        start = time.perf_counter()
        try:
            insert_all(conn, rows, per_commit, insert)
            elapsed.append(time.perf_counter() - start)
        finally:
            done.set()  # the spinning loop below stops even if the insert failed

    thread = threading.Thread(target=writer, daemon=True)
    spins, start = 0, time.perf_counter()
    thread.start()
    while not done.is_set():
        for _ in range(1000):
            pass
        spins += 1
    thread.join()
    if not elapsed:
        raise SystemExit("the insert failed (see above)")
    return len(rows) / elapsed[0], spins / (time.perf_counter() - start)


def cpu_per_1000(conn: sqlite3.Connection, rows: Rows, per_commit: int) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_SELF)
    insert_all(conn, rows, per_commit, store.insert_log_rows)
    after = resource.getrusage(resource.RUSAGE_SELF)
    scale = 1e6 / len(rows)
    return (after.ru_utime - before.ru_utime) * scale, (after.ru_stime - before.ru_stime) * scale


# -- metric samples --------------------------------------------------------------------------------
Sample = tuple[str, str, float, float]
InsertSamples = Callable[[Any, list[Sample]], object]  # (a writer connection, a commit's samples)
HISTORY_RAW_MIN = 10  # minutes of raw samples already stored per series
HISTORY_1M_MIN = 120  # minute aggregates already stored per series
# The statements of before schema step 13: each sample upserted into its minute, in the same commit.
BEFORE_RAW = ("INSERT INTO metrics_raw (node_id, name, ts, value)"
              " SELECT value->>0, value->>1, value->>2, value->>3 FROM json_each(?)")
BEFORE_1M = (
    "INSERT INTO metrics_1m (node_id, name, bucket, min, avg, max, count)"
    " SELECT value->>0, value->>1, value->>4, value->>3, value->>3, value->>3, 1 FROM json_each(?) WHERE true"
    " ON CONFLICT (node_id, name, bucket) DO UPDATE SET"
    " min = min(metrics_1m.min, excluded.min), max = max(metrics_1m.max, excluded.max),"
    " avg = (metrics_1m.avg * metrics_1m.count + excluded.avg) / (metrics_1m.count + 1),"
    " count = metrics_1m.count + 1")
BEFORE_INDEXES = ("DROP INDEX metrics_raw_node_ts",  # the raw samples' index as it was before step 13
                  "CREATE INDEX metrics_raw_key ON metrics_raw (node_id, name, ts)")


def series_names() -> list[str]:
    return list(metric_series(loglines.metrics(0.0, 0, 0)))


def history_db(work: Path, nodes: list[str], start: float) -> Path:
    """A migrated database holding the history of a running fleet, all of it rolled up."""
    path = work / "history.sqlite3"
    asyncio.run(db.create(path))
    conn = db.configure(sqlite3.connect(path, isolation_level=None), writer=True)
    fill_history(conn, nodes, start, HISTORY_RAW_MIN, HISTORY_1M_MIN)
    conn.close()
    return path


def fill_history(conn: sqlite3.Connection, nodes: list[str], start: float, raw_minutes: int,
                 minute_minutes: int) -> int:
    """The metrics history of a fleet that has run up to `start`, as a running server holds it: a
    bench.loglines sample (10 series) of every node every 10 s for `raw_minutes`, spread over each
    10 s in arrival order, and `minute_minutes` of minute aggregates per series, all rolled up
    (schema step 13, when the database has it). Committed and checkpointed; returns the raw rows."""
    conn.execute("CREATE TEMP TABLE bench_nodes (i INTEGER PRIMARY KEY, id TEXT)")
    conn.executemany("INSERT INTO bench_nodes VALUES (?, ?)", list(enumerate(nodes)))
    conn.execute("CREATE TEMP TABLE bench_names (k INTEGER PRIMARY KEY, name TEXT)")
    conn.executemany("INSERT INTO bench_names VALUES (?, ?)", list(enumerate(series_names())))
    frames = raw_minutes * 6
    conn.execute("BEGIN")
    conn.execute(
        f"WITH RECURSIVE f(j) AS (SELECT 0 UNION ALL SELECT j + 1 FROM f WHERE j < {frames - 1})"
        f" INSERT INTO metrics_raw SELECT n.id, m.name, {start - raw_minutes * 60} + f.j * 10"
        f" + n.i * 10.0 / {len(nodes)}, (f.j + m.k) % 50 FROM f, bench_nodes n, bench_names m"
        " ORDER BY f.j, n.i, m.k")
    rows = int(conn.execute("SELECT changes()").fetchone()[0])
    conn.execute(
        f"WITH RECURSIVE b(j) AS (SELECT 1 UNION ALL SELECT j + 1 FROM b WHERE j < {minute_minutes})"
        f" INSERT INTO metrics_1m SELECT n.id, m.name, {int(start) // 60 * 60} - b.j * 60, 1, 2, 3, 6"
        " FROM bench_nodes n, bench_names m, b ORDER BY 1, 2, 3")
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'metrics_rollup'").fetchone():
        conn.execute("UPDATE metrics_rollup SET done = (SELECT max(rowid) FROM metrics_raw),"
                     " upto = (SELECT max(rowid) FROM metrics_raw)")
    conn.execute("COMMIT")
    conn.execute("DROP TABLE bench_nodes")
    conn.execute("DROP TABLE bench_names")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return rows


def fleet_samples(nodes: list[str], start: float, minutes: float, interval: float) -> list[Sample]:
    """Every node's sample every `interval` s, the nodes spread over it, in arrival order."""
    names = series_names()
    out: list[Sample] = []
    for i in range(int(minutes * 60 / interval * len(nodes))):
        ts = round(start + i * interval / len(nodes), 3)
        out += [(nodes[i % len(nodes)], name, ts, float((i + k) % 50)) for k, name in enumerate(names)]
    return out


def before(conn: sqlite3.Connection, rows: list[Sample]) -> None:
    text = store._json_array([(node, name, ts, value, int(ts // 60) * 60) for node, name, ts, value in rows])
    conn.execute(BEFORE_RAW, (text,))
    conn.execute(BEFORE_1M, (text,))


def before_raw_alone(conn: sqlite3.Connection, rows: list[Sample]) -> None:
    conn.execute(BEFORE_RAW, (store._json_array([(*row, int(row[2] // 60) * 60) for row in rows]),))


def json_alone(conn: sqlite3.Connection, rows: list[Sample]) -> None:
    store._json_array(rows)


def metrics_run(path: Path, samples: list[Sample], per_commit: int, insert: InsertSamples,
                rollup: store.MetricRollup | None, extra: tuple[str, ...] = ()) -> tuple[float, float, float, float]:
    """(user, system) CPU ms per 1,000 samples and the p99 and longest commit (ms) of inserting `samples`,
    `per_commit` a transaction, on a copy of the database at `path`."""
    copy = path.with_name("run.sqlite3")
    shutil.copy(path, copy)
    conn = db.connect_writer(copy)
    for statement in extra:
        conn.execute(statement)
    now = [samples[0][2]]
    if rollup is not None:
        rollup.clock = lambda: now[0]  # a pass a minute of the samples' time
        conn.begin()
        rollup.start(conn)
        conn.commit()
        rollup.committed()
    commits: list[float] = []
    before_usage = resource.getrusage(resource.RUSAGE_SELF)
    for start in range(0, len(samples), per_commit):
        began = time.perf_counter()
        rows = samples[start:start + per_commit]
        now[0] = rows[-1][2]
        conn.begin()
        insert(conn, rows)
        if rollup is not None:
            rollup.before_commit(conn)
        conn.commit()
        if rollup is not None:
            rollup.committed()
        commits.append(time.perf_counter() - began)
    if rollup is not None:  # what is still in the accumulator, rolled up too (not in the commits: one big commit)
        conn.begin()
        rollup.before_commit(conn, everything=True)
        conn.commit()
        rollup.committed()
    after_usage = resource.getrusage(resource.RUSAGE_SELF)
    conn.close()
    for leftover in copy.parent.glob(copy.name + "*"):
        leftover.unlink()
    scale = 1e6 / len(samples)
    commits.sort()
    return ((after_usage.ru_utime - before_usage.ru_utime) * scale,
            (after_usage.ru_stime - before_usage.ru_stime) * scale,
            commits[int(len(commits) * 0.99)] * 1000, commits[-1] * 1000)


def metrics_main(args: argparse.Namespace) -> None:
    nodes = [str(uuid.uuid4()) for _ in range(args.nodes)]
    start = 1_800_000_000.0
    samples = fleet_samples(nodes, start, args.minutes, args.interval)
    per_commit = args.per_commit or 500
    if args.engine == "postgresql":
        print(f"== Writer metric samples on PostgreSQL: {args.nodes:,} nodes x {len(series_names())} series every"
              f" {args.interval:g} s, {len(samples):,} samples ({args.minutes:g} min), {per_commit} per commit,"
              " into empty tables ==")
        pg_metrics_main(args, samples, per_commit)
        return
    into = ("into an empty database" if args.fresh else
            f"on {HISTORY_RAW_MIN} min of raw samples and {HISTORY_1M_MIN} min of minute aggregates per series")
    print(f"== Writer metric samples: {args.nodes:,} nodes x {len(series_names())} series every {args.interval:g} s,"
          f" {len(samples):,} samples ({args.minutes:g} min), {per_commit} per commit, {into} ==")
    with tempfile.TemporaryDirectory(prefix="dvic-bench-metrics-") as tmp:
        base = Path(tmp) / "fresh.sqlite3" if args.fresh else history_db(Path(tmp), nodes, start)
        if args.fresh:
            asyncio.run(db.create(base))
        runs: list[tuple[str, InsertSamples, store.MetricRollup | None, tuple[str, ...]]] = [
            ("before: raw + a minute upsert per sample", before, None, BEFORE_INDEXES),
            ("before: its raw insert alone", before_raw_alone, None, BEFORE_INDEXES),
            ("now: raw + rollup once a minute", lambda c, r: store.insert_metric_rows(r)(c), store.MetricRollup(), ()),
            ("now: raw insert alone", lambda c, r: store.insert_metric_rows(r)(c), None, ()),
            ("JSON text alone", json_alone, None, ()),
        ]
        for name, insert, rollup, extra in runs:
            user, system, p99, longest = metrics_run(base, samples, per_commit, insert, rollup, extra)
            print(f"  {name:<42} {user + system:>6.1f} ms CPU per 1,000 samples (user {user:.1f}, system"
                  f" {system:.1f}); commits p99 {p99:.0f} ms, longest {longest:.0f} ms")


# PostgreSQL before schema step 13: the samples' columns sent twice, minutes computed in Python.
BEFORE_RAW_PG = ("INSERT INTO metrics_raw (node_id, name, ts, value) SELECT * FROM unnest(CAST(? AS TEXT[]),"
                 " CAST(? AS TEXT[]), CAST(? AS DOUBLE PRECISION[]), CAST(? AS DOUBLE PRECISION[]))")
BEFORE_1M_PG = (
    "INSERT INTO metrics_1m (node_id, name, bucket, min, avg, max, count)"
    " SELECT node_id, name, bucket, min(value), avg(value), max(value), count(*) FROM unnest(CAST(? AS TEXT[]),"
    " CAST(? AS TEXT[]), CAST(? AS BIGINT[]), CAST(? AS DOUBLE PRECISION[])) AS s (node_id, name, bucket, value)"
    " GROUP BY node_id, name, bucket ON CONFLICT (node_id, name, bucket) DO UPDATE SET"
    " min = least(metrics_1m.min, excluded.min), max = greatest(metrics_1m.max, excluded.max),"
    " avg = (metrics_1m.avg * metrics_1m.count + excluded.avg * excluded.count) / (metrics_1m.count + excluded.count),"
    " count = metrics_1m.count + excluded.count")


def before_pg(conn: Any, rows: list[Sample]) -> None:
    nodes, names, stamps, values = ([*column] for column in zip(*rows, strict=True))
    stamps, values = [float(ts) for ts in stamps], [float(v) for v in values]
    conn.execute(BEFORE_RAW_PG, (nodes, names, stamps, values))
    conn.execute(BEFORE_1M_PG, (nodes, names, [int(ts // 60) * 60 for ts in stamps], values))


def pg_metrics_main(args: argparse.Namespace, samples: list[Sample], per_commit: int) -> None:
    """The writer thread's CPU (Python, asyncpg) and PostgreSQL's per 1,000 samples, each path on a
    fresh database of a throw-away cluster (durable settings, as bench.ingest)."""
    from .fleet import postgres_cpu_s  # (bench.fleet imports this module)

    cluster = start_cluster(DURABLE)
    try:
        runs: list[tuple[str, InsertSamples, tuple[str, ...]]] = [
            ("before: two statements", before_pg, BEFORE_INDEXES),
            ("now: one statement", lambda c, r: store.insert_metric_rows(r)(c), ())]
        for name, insert, extra in runs * 2:  # twice each, alternated
            url = cluster.create_database()
            asyncio.run(db.create(url))
            conn = db.connect_writer(url)
            conn.begin()
            store.ensure_partitions(conn, samples[0][2])
            for statement in extra:
                conn.execute(statement)
            conn.commit()
            postgres_before, thread_before = postgres_cpu_s(cluster), time.thread_time()
            for start in range(0, len(samples), per_commit):
                conn.begin()
                insert(conn, samples[start:start + per_commit])
                conn.commit()
            thread = time.thread_time() - thread_before
            postgres = postgres_cpu_s(cluster) - postgres_before
            conn.close()
            scale = 1e6 / len(samples)
            print(f"  {name:<42} writer thread {thread * scale:>5.1f} ms CPU per 1,000 samples,"
                  f" PostgreSQL {postgres * scale:.1f} ms")
    finally:
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=30_000, help="rows per measurement (30000)")
    parser.add_argument("--per-commit", type=int, default=None,
                        help="rows (samples) per transaction (100; --metrics: 500)")
    parser.add_argument("--nodes", type=int, default=None, help="nodes the rows are spread over (2000; --metrics: 5000)")
    parser.add_argument("--switch-interval", type=float, default=None,
                        help="sys.setswitchinterval for the run (Python's default: 0.005 s)")
    parser.add_argument("--metrics", action="store_true", help="metric samples instead of log lines")
    parser.add_argument("--minutes", type=float, default=2.0, help="--metrics: minutes of samples measured (2)")
    parser.add_argument("--interval", type=float, default=10.0, help="--metrics: seconds between a node's samples (10)")
    parser.add_argument("--fresh", action="store_true",
                        help="--metrics: into an empty database (a fleet bench's first minutes), not on a history")
    parser.add_argument("--engine", choices=("sqlite", "postgresql"), default="sqlite",
                        help="--metrics: the store (postgresql: a throw-away cluster, tests/support/postgres.py)")
    args = parser.parse_args()
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    if args.metrics:
        args.nodes = args.nodes or 5000
        metrics_main(args)
        return
    args.nodes = args.nodes or 2000
    args.per_commit = args.per_commit or 100
    rows = make_rows(args.rows, args.nodes)
    solo = spin_rate(1.0)
    print(f"== Writer log insert: {args.rows:,} rows, {args.per_commit} per commit, {args.nodes:,} nodes,"
          f" GIL switch interval {sys.getswitchinterval() * 1000:g} ms ==")
    with tempfile.TemporaryDirectory(prefix="dvic-bench-writer-") as tmp:
        work = Path(tmp)
        for name, insert in (("per-row (executemany)", per_row), ("merged (json_each)", store.insert_log_rows)):
            rate, spin = contended(fresh_db(work), rows, args.per_commit, insert)
            print(f"  {name:<34} {rate:>9,.0f} rows/s with a busy main thread"
                  f" (main thread at {spin / solo:.0%} of its solo speed)")
        old_index = ("CREATE INDEX logs_node_ts ON logs (node_id, ts)",)
        for name, extra in (("merged, schema as is", ()), ("merged, with the old (node_id, ts)", old_index)):
            user, system = cpu_per_1000(fresh_db(work, extra), rows, args.per_commit)
            print(f"  {name:<34} {user + system:>6.1f} ms CPU per 1,000 lines (user {user:.1f}, system {system:.1f})")


if __name__ == "__main__":
    main()
