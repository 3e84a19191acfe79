"""The writer thread's log insert, alone: why node batches are merged into one statement.

    python3 -m bench.writer_paths [--rows 30000] [--per-commit 100] [--nodes 2000]

Inserts the same rows into a fresh database (the server's schema) the way the writer thread
does, while the main thread spins in Python the way a busy event loop does, for two paths:
`per-row` (one `executemany`, so one GIL release per row) and `merged` (store.insert_log_rows:
one `INSERT … SELECT … FROM json_each`). Then, without the spinning thread, the CPU per 1,000
lines of the merged path with the schema as it is and with the `(node_id, ts)` index the schema
had before step 4 (see docs/performance.md). Prints rows/s, the main thread's share of its solo speed,
and user/system CPU per 1,000 lines.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from central import db, store
from central.store import FtsIndexer

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=30_000, help="rows per measurement (30000)")
    parser.add_argument("--per-commit", type=int, default=100, help="rows per transaction (100)")
    parser.add_argument("--nodes", type=int, default=2000, help="nodes the rows are spread over (2000)")
    parser.add_argument("--switch-interval", type=float, default=None,
                        help="sys.setswitchinterval for the run (Python's default: 0.005 s)")
    args = parser.parse_args()
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
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
