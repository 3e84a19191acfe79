"""PostgreSQL's log text index: what its word split and its upkeep cost the server's writer.

    python3 -m bench.pg_textindex [--rows 200000] [--per-commit 1000] [--rate 10000] [--rounds 3]

On a throw-away PostgreSQL cluster (initdb, durable settings, as bench.ingest), with fleet-like
messages (bench/loglines.py plus the `sent=` stamp bench.fleet's nodes add):
- the word split alone: PostgreSQL's CPU per 1,000 messages for each expression (one SELECT over
  them all, the best of --rounds): schema step 1's, step 14's, translate() of ASCII punctuation,
  and PostgreSQL's own parser alone (which keeps hosts, paths and numbers whole: not FTS5's words);
- the writer's insert: the server's own bulk insert (store.insert_log_rows through the writer's
  connection) of --rows rows in commits of --per-commit at --rate rows/s, into `logs` as step 1
  indexed it (the writer merges the pending list when it crosses PostgreSQL's default 4 MB), as
  step 14 does (16 MB, merged every --merge-every seconds by another connection, as the server's
  `log-words` job once a second), and without a text index (the floor): CPU per 1,000 rows of the writer's backend, of the
  merging one and of all of PostgreSQL, and each commit's time (p50 / p99 / max).
"""

from __future__ import annotations

import argparse
import asyncio
import string
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from central import db, services, store
from central.dbconn import ReadDB
from tests.support.postgres import Cluster, start_cluster

from . import loglines
from .bus_compare import children_of, process_cpu
from .common import add_common_args, parser, positive_float, positive_int, run_bench
from .ingest import DURABLE, prepare_days
from .report import Report, latency_summary

NODES = 2000
# ASCII punctuation as an SQL literal's text inside a str.format template.
_PUNCTUATION = string.punctuation.replace("'", "''").replace("{", "{{").replace("}", "}}")
SPLITS = {
    "step 1: regexp_replace of every run of non-alphanumerics": db._PG_LOG_WORDS_V1,
    "step 14: regexp_replace of punctuation runs, white space to the parser": db._PG_LOG_WORDS_V14,
    "translate() of ASCII punctuation to spaces":
        f"to_tsvector('simple', translate({{msg}}, '{_PUNCTUATION}', '{' ' * len(string.punctuation)}'))",
    "PostgreSQL's parser alone (not FTS5's words)": "to_tsvector('simple', {msg})",
    "  step 1's regexp_replace alone": "regexp_replace({msg}, '[^[:alnum:]]+', ' ', 'g')",
    "  step 14's regexp_replace alone": "regexp_replace({msg}, '[^[:alnum:][:space:]]+', ' ', 'g')",
}
# The text index the insert runs with: (index DDL after the step-14 schema's index is dropped, or
# None for step 14 as made; merge the pending list from another connection, as the job does).
INDEXES: dict[str, tuple[str | None, bool]] = {
    "step 1: writer merges at 4 MB": (
        "CREATE INDEX logs_search ON logs USING GIN (" + db._PG_LOG_WORDS_V1.format(msg="msg") + ")", False),
    "step 14: 16 MB, merged by the job": (None, True),
    "no text index (the floor)": ("", False),
}


def fleet_rows(count: int, base_ts: float) -> list[store.LogRow]:
    """`count` rows as 2,000 nodes send them, round-robin, 10,000 a second of ts."""
    rows: list[store.LogRow] = []
    for k in range(count):
        node, seq = k % NODES, k // NODES + 1
        ts = base_ts + k / 10_000
        rows.append((f"node-{node:05d}", seq, ts, "demo", f"demo-{node % 8}", f"{node:08x}", 20,
                     f"{loglines.message(node, seq)} sent={ts:.6f}"))
    return rows


def pg_cpu(cluster: Cluster) -> float:
    postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
    return process_cpu(postmaster, reaped=True) + sum(process_cpu(pid) for pid in children_of(postmaster))


async def measure_splits(cluster: Cluster, rows: list[store.LogRow], rounds: int) -> dict[str, float]:
    """ms of PostgreSQL CPU per 1,000 messages for each SPLITS expression (best of `rounds`)."""
    conn = await asyncpg.connect(cluster.fresh_database())
    try:
        await conn.execute("CREATE TEMP TABLE messages (msg TEXT NOT NULL)")
        await conn.copy_records_to_table("messages", records=[(row[7],) for row in rows])
        await conn.execute("ANALYZE messages")
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        best: dict[str, float] = {}
        for _ in range(rounds):
            for name, expression in SPLITS.items():
                started = process_cpu(pid)
                await conn.fetchval(f"SELECT count({expression.format(msg='msg')}) FROM messages")
                best[name] = min(best.get(name, float("inf")), process_cpu(pid) - started)
        return {name: seconds / len(rows) * 1e6 for name, seconds in best.items()}
    finally:
        await conn.close()


@dataclass
class InsertResult:
    writer_ms: float  # per 1,000 rows
    merge_ms: float
    postgres_ms: float
    commits_s: list[float]
    rate: float
    merges: int


async def measure_insert(cluster: Cluster, rows: list[store.LogRow], index: tuple[str | None, bool],
                         per_commit: int, rate: float, merge_every: float) -> InsertResult:
    ddl, merge = index
    url = cluster.fresh_database()
    if ddl is not None:
        setup = await asyncpg.connect(url)
        try:
            await setup.execute("DROP INDEX logs_search")
            if ddl:
                await setup.execute(ddl)
        finally:
            await setup.close()
    await asyncio.to_thread(prepare_days, url)
    # The writer's connection runs its own event loop: made, used and closed off this one's thread.
    writer = await asyncio.to_thread(db.connect_writer, url)
    reads: ReadDB = await db.open_reads(url)
    try:
        writer_pid = await asyncio.to_thread(lambda: writer.execute("SELECT pg_backend_pid()").fetchone()[0])
        async with reads.execute("SELECT pg_backend_pid()") as cur:
            merge_pid = (await cur.fetchone())[0]
        merges = 0
        stop = asyncio.Event()

        async def merging() -> None:
            nonlocal merges
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), merge_every)
                except TimeoutError:
                    pass
                await db.merge_log_words(reads)
                merges += 1

        before = (process_cpu(writer_pid), process_cpu(merge_pid), pg_cpu(cluster))
        task = asyncio.create_task(merging()) if merge else None
        commits = await asyncio.to_thread(_insert, writer, rows, per_commit, rate)
        stop.set()
        if task is not None:
            await task
        after = (process_cpu(writer_pid), process_cpu(merge_pid), pg_cpu(cluster))
    finally:
        await asyncio.to_thread(writer.close)
        await reads.close()
    per_1000 = [(a - b) / len(rows) * 1e6 for a, b in zip(after, before, strict=True)]
    return InsertResult(*per_1000, commits_s=commits, rate=len(rows) / sum(commits) if commits else 0.0,
                        merges=merges)


def _insert(writer: Any, rows: list[store.LogRow], per_commit: int, rate: float) -> list[float]:
    """The writer's commits at `rate` rows/s (the writer thread's way: begin, insert, commit)."""
    commits: list[float] = []
    started = time.perf_counter()
    for first in range(0, len(rows), per_commit):
        due = started + first / rate
        time.sleep(max(0.0, due - time.perf_counter()))
        began = time.perf_counter()
        writer.begin()
        store.insert_log_rows(writer, rows[first:first + per_commit])
        writer.commit()
        commits.append(time.perf_counter() - began)
    return commits


async def run(args: argparse.Namespace, work: Path) -> Report:
    report = Report("PostgreSQL's log text index: word split and upkeep", params={
        "rows": args.rows, "per_commit": args.per_commit, "rate": args.rate, "rounds": args.rounds,
        "merge_every_s": args.merge_every})
    rows = fleet_rows(args.rows, time.time())
    cluster = start_cluster(DURABLE)
    try:
        for name, ms in (await measure_splits(cluster, rows, args.rounds)).items():
            report.add(f"split: {name}", round(ms, 1), "ms PostgreSQL CPU per 1,000 messages")
        for name, index in INDEXES.items():
            result = await measure_insert(cluster, rows, index, args.per_commit, args.rate, args.merge_every)
            commits = latency_summary(result.commits_s)
            report.add(f"insert, {name}: CPU writer / merge / all PostgreSQL",
                       f"{result.writer_ms:.1f} / {result.merge_ms:.1f} / {result.postgres_ms:.1f}", "ms per 1,000 rows")
            report.add("  commit p50 / p99 / max", f"{commits['p50'] * 1000:.1f} / {commits['p99'] * 1000:.1f} / "
                                                  f"{commits['max'] * 1000:.1f}", "ms")
            if result.merges:
                report.add("  merges", result.merges)
    finally:
        cluster.stop()
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser("pg_textindex", __doc__)
    p.add_argument("--rows", type=positive_int, default=200_000, help="log rows (200,000)")
    p.add_argument("--per-commit", type=positive_int, default=1000, help="rows per commit (1,000)")
    p.add_argument("--rate", type=positive_float, default=10_000.0, help="rows/s offered to the writer (10,000)")
    p.add_argument("--rounds", type=positive_int, default=3, help="rounds of the word-split timing (3)")
    p.add_argument("--merge-every", type=positive_float, default=services.LOG_WORDS_MERGE_EVERY_S,
                   help="seconds between merges of step 14's pending list (the server's: %(default)s)")
    add_common_args(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_bench(parse_args(argv), "pg_textindex", run)


if __name__ == "__main__":
    raise SystemExit(main())
