"""`dvic-central migrate`: how fast an SQLite installation moves to PostgreSQL.

    python3 -m bench.migrate [--lines 1000000] [--nodes 200]

Fills an SQLite database with the server's schema with `--lines` log lines over `--nodes` nodes
(and a metric sample per node and minute of an hour), as the writer stores them, then moves it
with `central.transfer.move` into an empty database of a throw-away PostgreSQL cluster (started
and removed by the bench): rows/s of the whole move, and, in the same run, a direct binary COPY of
the same log rows into a table of the same shape as the reference (the move's share of it).
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import time
import uuid
from pathlib import Path

import asyncpg

from central import db, store
from central.transfer import move
from tests.support.postgres import start_cluster

from .common import add_common_args, parser, positive_int, run_bench
from .report import Report

BATCH = 10_000


def fill(path: Path, lines: int, nodes: int) -> int:
    """The source database; returns how many rows it holds in all."""
    asyncio.run(db.create(path))
    conn = sqlite3.connect(path, isolation_level=None)
    ids = [str(uuid.uuid4()) for _ in range(nodes)]
    now = time.time()
    for i, node_id in enumerate(ids):
        store.create_node(node_id, f"pc-{i}", "desktop", "hall", now, f"fp{i}", "", f"tok{i}")(conn)
    for start in range(0, lines, BATCH):
        conn.execute("BEGIN")
        for node_index in range(nodes):
            chunk = range(start + node_index, min(start + BATCH, lines), nodes)
            store.insert_logs(ids[node_index], [
                {"seq": n, "ts": now - 3600 + n * 0.001, "source": "demo", "demo": "arm", "level": "INFO",
                 "msg": f"frame {n} rendered in 16.6 ms, queue depth {n % 7}"} for n in chunk])(conn)
        conn.execute("COMMIT")
    conn.execute("BEGIN")
    samples = [(node_id, "cpu", now - 3600 + minute * 60, 10.0 + minute % 5) for node_id in ids for minute in range(60)]
    store.insert_metric_rows(samples)(conn)
    conn.execute("COMMIT")
    total = sum(conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]
                for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"
                                         " AND name NOT LIKE 'sqlite_%' AND name NOT LIKE 'logs_fts%'"))
    conn.close()
    return int(total)


async def direct_copy(url: str, source: Path) -> float:
    """Seconds for a binary COPY of the source's log rows into an empty table shaped like `logs`."""
    conn = await asyncpg.connect(url)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        await conn.execute("CREATE TABLE logs_copy (LIKE logs INCLUDING ALL)")
        columns = ["id", "node_id", "seq", "ts", "source", "unit", "demo", "level", "msg"]
        cur = src.execute(f"SELECT {', '.join(columns)} FROM logs")
        start = time.perf_counter()
        async with conn.transaction():
            while rows := cur.fetchmany(5000):
                await conn.copy_records_to_table("logs_copy", records=rows, columns=columns)
        return time.perf_counter() - start
    finally:
        src.close()
        await conn.close()


def measure(args: argparse.Namespace, work: Path) -> Report:
    report = Report("dvic-central migrate: SQLite -> PostgreSQL")
    report.params.update(lines=args.lines, nodes=args.nodes)
    source = work / "dvic.sqlite3"
    rows = fill(source, args.lines, args.nodes)
    cluster = start_cluster()
    try:
        target = cluster.create_database("moved")
        start = time.perf_counter()
        moved = asyncio.run(move(source, target))
        seconds = time.perf_counter() - start
        logs = next(m.rows for m in moved if m.table == "logs")
        report.add("move: rows", rows)
        report.add("move: seconds (schema made too)", seconds, "s")
        report.add("move: rows/s", rows / seconds, "rows/s")
        report.add("move: log lines moved", logs)
        reference = cluster.create_database("reference")
        asyncio.run(db.create(reference))
        copy_s = asyncio.run(direct_copy(reference, source))
        report.add("direct COPY of the log rows: rows/s", logs / copy_s, "rows/s")
        report.add("move rows/s / direct COPY rows/s", (rows / seconds) / (logs / copy_s))
        report.note("the move also makes the schema, reads SQLite, converts each value, fills the search index"
                    " and counts every table before its commit")
    finally:
        cluster.stop()
    return report


def main(argv: list[str] | None = None) -> int:
    p = parser("migrate", __doc__)
    p.add_argument("--lines", type=positive_int, default=1_000_000, help="log lines in the source (1,000,000)")
    p.add_argument("--nodes", type=positive_int, default=200, help="nodes the lines are spread over (200)")
    add_common_args(p)
    return run_bench(p.parse_args(argv), "migrate", measure, run=None)


if __name__ == "__main__":
    raise SystemExit(main())
