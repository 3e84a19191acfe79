"""Retention keeps up: a backlog of expired rows is trimmed in one pass, a slice per commit, on a
real SQLite file through the real writer (security review M3)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from central import store
from central.bus import Bus
from central.config import Retention
from central.registry import Registry
from central.services import say_if_behind, trim_expired
from central.writer import Writer

DAY = 86_400.0
EXPIRED = 120_000  # raw samples and log lines past their window (the old code deleted 20,000 a minute)
EXPIRED_OTHER = 30_000  # one-minute aggregates and events



def _fill(path: Path, now: float, *, old_logs: int, fresh_logs: int, old_samples: int, fresh_samples: int,
          old_others: int = 0) -> None:
    """Rows straight into the file (as a server that was down, or fell behind, would leave them),
    logs full-text indexed as the writer indexes them. `old_others`: expired one-minute aggregates
    and events; `fresh_samples` also makes as many fresh aggregates."""
    conn = sqlite3.connect(path)
    old = now - 3 * DAY  # past the raw samples' window (24 h)
    ancient = now - 100 * DAY  # past every window
    conn.executemany(
        "INSERT INTO metrics_raw (node_id, name, ts, value) VALUES ('n', 'cpu', ?, 1)",
        [(old + i / 1000,) for i in range(old_samples)] + [(now - i / 1000,) for i in range(fresh_samples)])
    conn.executemany(
        "INSERT INTO metrics_1m (node_id, name, bucket, min, avg, max, count) VALUES (?, 'cpu', ?, 1, 1, 1, 1)",
        [(f"n{i % 100}", int(ancient) - 60 * (i // 100)) for i in range(old_others)]
        + [(f"n{i}", int(now)) for i in range(fresh_samples)])
    conn.executemany(
        "INSERT INTO logs (node_id, seq, ts, source, level, msg) VALUES ('n', ?, ?, 'demo', 20, ?)",
        [(i, ancient + i / 1000, f"old line {i}") for i in range(1, old_logs + 1)]
        + [(old_logs + i, now, f"fresh line {i}") for i in range(1, fresh_logs + 1)])
    conn.execute("INSERT INTO logs_fts (rowid, msg) SELECT id, msg FROM logs")
    conn.executemany("INSERT INTO events (ts, node_id, kind, message) VALUES (?, 'n', 'state', 'x')",
                     [(ancient + i,) for i in range(old_others)] + [(now,)])
    # The samples' minutes were rolled up (store.MetricRollup; retention deletes rolled samples only).
    conn.execute("UPDATE metrics_rollup SET done = (SELECT coalesce(max(rowid), 0) FROM metrics_raw),"
                 " upto = (SELECT coalesce(max(rowid), 0) FROM metrics_raw)")
    conn.commit()
    conn.close()


def _count(path: Path, sql: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


async def test_a_backlog_of_expired_rows_is_trimmed_in_one_pass_and_fresh_rows_stay(migrated_db: Path):
    path = migrated_db
    now = time.time()
    _fill(path, now, old_logs=EXPIRED, fresh_logs=500, old_samples=EXPIRED, fresh_samples=700,
          old_others=EXPIRED_OTHER)
    writer = Writer(path)
    await writer.start()
    try:
        # Short slices: the pass takes many commits, and a write an operator waits on gets
        # through between two of them instead of after the whole pass.
        sweep = asyncio.ensure_future(trim_expired(writer, Retention(), now, slice_s=0.02))
        await asyncio.sleep(0)
        operator_write = asyncio.ensure_future(writer.submit(store.insert_event(now, "", "test", "mid-pass", {})))
        await asyncio.wait_for(operator_write, 60)
        assert not sweep.done(), "the operator's write waited for the whole pass"
        trimmed = await asyncio.wait_for(sweep, 120)
    finally:
        await writer.close()
    assert trimmed.done
    assert trimmed["metrics_raw"] == EXPIRED and trimmed["logs"] == EXPIRED
    assert trimmed["metrics_1m"] == EXPIRED_OTHER and trimmed["events"] == EXPIRED_OTHER
    assert _count(path, "SELECT count(*) FROM metrics_raw") == 700
    assert _count(path, "SELECT count(*) FROM metrics_1m") == 700
    assert _count(path, "SELECT count(*) FROM logs") == 500
    assert _count(path, "SELECT count(*) FROM logs WHERE msg LIKE 'fresh line %'") == 500
    assert _count(path, "SELECT count(*) FROM events") == 2  # the fresh one and the operator's
    # The full-text index followed: no old line is found, every fresh one is.
    assert _count(path, "SELECT count(*) FROM logs_fts WHERE logs_fts MATCH 'old'") == 0
    assert _count(path, "SELECT count(*) FROM logs_fts WHERE logs_fts MATCH 'fresh'") == 500


async def test_the_logs_row_cap_is_reached_in_one_pass(migrated_db: Path):
    path = migrated_db
    now = time.time()
    _fill(path, now, old_logs=0, fresh_logs=EXPIRED, old_samples=0, fresh_samples=0)
    writer = Writer(path)
    await writer.start()
    try:
        trimmed = await asyncio.wait_for(
            trim_expired(writer, Retention(logs_max_rows=10_000), now, slice_s=0.02), 120)
    finally:
        await writer.close()
    assert trimmed.done and trimmed["logs"] == EXPIRED - 10_000
    conn = sqlite3.connect(path)
    try:
        # The newest 10,000 lines stay.
        assert conn.execute("SELECT count(*), min(seq), max(seq) FROM logs").fetchone() == (
            10_000, EXPIRED - 10_000 + 1, EXPIRED)
    finally:
        conn.close()


@contextlib.contextmanager
def _samples(path: Path, now: float, *, old: int, fresh: int) -> Iterator[sqlite3.Connection]:
    """A migrated database holding `old` expired raw samples and `fresh` ones (no log lines), open."""
    _fill(path, now, old_logs=0, fresh_logs=0, old_samples=old, fresh_samples=fresh)
    conn = sqlite3.connect(path)
    try:
        yield conn
    finally:
        conn.close()


def test_one_call_without_a_time_budget_deletes_everything_expired(migrated_db: Path):
    """What the review ran (store.apply_retention called once): 20,000 rows of 100,000 went."""
    now = time.time()
    with _samples(migrated_db, now, old=100_000, fresh=10) as conn:
        deleted = store.apply_retention(now, DAY, 30 * DAY, 30 * DAY, 5_000_000, 90 * DAY, 365 * DAY)(conn)
        conn.commit()
        assert deleted["metrics_raw"] == 100_000
        assert conn.execute("SELECT count(*) FROM metrics_raw").fetchone()[0] == 10


def test_a_time_budget_stops_a_call_early_and_says_so(migrated_db: Path):
    now = time.time()
    with _samples(migrated_db, now, old=5_000, fresh=1) as conn:
        run = store.apply_retention(now, DAY, 30 * DAY, 30 * DAY, 5_000_000, 90 * DAY, 365 * DAY,
                                    chunk=100, time_budget=0.0)
        first = run(conn)
        assert not first.done and first["metrics_raw"] == 100  # one chunk, then the budget is spent
        calls = 1
        while not run(conn).done:
            calls += 1
        assert calls > 1 and conn.execute("SELECT count(*) FROM metrics_raw").fetchone()[0] == 1  # the fresh one


async def test_a_pass_that_cannot_finish_says_retention_is_behind_until_it_catches_up(migrated_db: Path, caplog):
    path = migrated_db
    now = time.time()
    _fill(path, now, old_logs=0, fresh_logs=0, old_samples=20_000, fresh_samples=0)
    writer = Writer(path)
    await writer.start()
    bus = Bus()
    watcher = bus.subscribe()
    registry = Registry(writer, bus, offline_after=15, keepalive_interval=5)
    try:
        # A pass given no time at all stops after its first slice, with expired rows left.
        trimmed = await trim_expired(writer, Retention(), now, slice_s=0.0, max_pass_s=0.0)
        assert not trimmed.done and 0 < trimmed["metrics_raw"] < 20_000
        behind = await say_if_behind(registry, False, trimmed)
        assert behind and "retention is behind" in caplog.text
        behind = await say_if_behind(registry, behind, trimmed)  # still behind: logged, no new event
        trimmed = await trim_expired(writer, Retention(), now)
        assert trimmed.done
        assert not await say_if_behind(registry, behind, trimmed)
    finally:
        await writer.close()
        bus.unsubscribe(watcher)
    conn = sqlite3.connect(path)
    try:
        events = conn.execute("SELECT node_id, message FROM events WHERE kind = 'retention' ORDER BY id").fetchall()
    finally:
        conn.close()
    assert events == [("", "retention is behind: expired rows remain after a full pass"),
                      ("", "retention caught up")]
    # Operators watching the live stream see both.
    frames = [json.loads(watcher.queue.get_nowait()) for _ in range(watcher.queue.qsize())]
    assert [f["event"]["message"] for f in frames if f["type"] == "event"] == [m for _, m in events]
