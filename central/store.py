"""Write operations: each function returns a closure the batching writer runs inside a group commit.

Plain functions over the engine-neutral `WriteConn` (central/dbconn.py) so they are unit-testable
without a server. The SQL is portable (docs/architecture.md, "Storage engines"); the few
statements that differ per engine (the bulk log and metric inserts, retention) pick by
`dialect_of(conn)`, each pair side by side.
"""

from __future__ import annotations

import calendar
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from dvic_core.constants import LEVEL_NUMBERS

from .db import PARTITIONED, SQLITE_MINUTE
from .dbconn import WriteConn, dialect_of, new_row_id

WriteFn = Callable[[WriteConn], Any]


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _changes(sql: str, params: Sequence[Any]) -> WriteFn:
    """A write of one statement; its result is the number of rows the statement changed."""
    return lambda conn: conn.execute(sql, params).rowcount


def _new_row(sql: str, params: Sequence[Any]) -> WriteFn:
    """A write of one INSERT; its result is the new row's id."""
    return lambda conn: new_row_id(conn, sql, params)


def after(also: WriteFn | None, write: WriteFn) -> WriteFn:
    """`also`, then `write`, in the same commit; the result is `write`'s."""
    if also is None:
        return write

    def run(conn: WriteConn) -> Any:
        also(conn)
        return write(conn)

    return run


def create_node(
    node_id: str, name: str, kind: str, group: str, created_at: float, cert_fp: str, cert_pem: str,
    token_hash: str,
) -> WriteFn:
    def run(conn: WriteConn) -> None:
        conn.execute(
            "INSERT INTO nodes (id, name, kind, grp, created_at, cert_fp, cert_pem, token_hash, state, state_since)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'new', ?)",
            (node_id, name, kind, group, created_at, cert_fp, cert_pem, token_hash, created_at),
        )

    return run


def revoke_node(node_id: str, ts: float) -> WriteFn:
    return _changes("UPDATE nodes SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL", (ts, node_id))


def rename_node(node_id: str, name: str) -> WriteFn:
    def run(conn: WriteConn) -> None:
        conn.execute("UPDATE nodes SET name = ? WHERE id = ?", (name, node_id))

    return run


def set_maintenance(node_id: str, on: bool) -> WriteFn:
    def run(conn: WriteConn) -> None:
        conn.execute("UPDATE nodes SET maintenance = ? WHERE id = ?", (1 if on else 0, node_id))

    return run


def save_presence(node_id: str, state: str, state_since: float, last_seen: float | None) -> WriteFn:
    def run(conn: WriteConn) -> None:
        conn.execute(
            "UPDATE nodes SET state = ?, state_since = ?, last_seen = ? WHERE id = ?",
            (state, state_since, last_seen, node_id),
        )

    return run


def save_hello(node_id: str, facts: Mapping[str, Any], daemon_version: str, replica: str = "",
               now: float = 0.0) -> WriteFn:
    """The node's facts, and its new session on `replica`: returns the session's epoch (one more
    than the last session's, on any replica: of two racing sessions the newer wins)."""
    def run(conn: WriteConn) -> int:
        conn.execute(
            "UPDATE nodes SET facts = ?, daemon_version = ? WHERE id = ?",
            (_dumps(dict(facts)), daemon_version, node_id),
        )
        row = conn.execute(
            "INSERT INTO node_sessions (node_id, replica, epoch, since) VALUES (?, ?, 1, ?)"
            " ON CONFLICT (node_id) DO UPDATE SET replica = excluded.replica, epoch = node_sessions.epoch + 1,"
            " since = excluded.since RETURNING epoch", (node_id, replica, now)).fetchone()
        return int(row[0])

    return run


def end_session(node_id: str, epoch: int) -> WriteFn:
    """The node's session `epoch` is over: no replica holds it (unless a newer one took over)."""
    def run(conn: WriteConn) -> None:
        conn.execute("UPDATE node_sessions SET replica = '' WHERE node_id = ? AND epoch = ?", (node_id, epoch))

    return run


def replica_heartbeat(name: str, now: float, *, started: bool = False) -> WriteFn:
    """This replica is alive (`started`: it has just started, whatever an earlier run left)."""
    def run(conn: WriteConn) -> None:
        if started:
            conn.execute(
                "INSERT INTO replicas (name, started_at, heartbeat_at, stopped_at) VALUES (?, ?, ?, NULL)"
                " ON CONFLICT (name) DO UPDATE SET started_at = excluded.started_at,"
                " heartbeat_at = excluded.heartbeat_at, stopped_at = NULL", (name, now, now))
        else:
            conn.execute("UPDATE replicas SET heartbeat_at = ? WHERE name = ?", (now, name))

    return run


def replica_stopped(name: str, now: float) -> WriteFn:
    """This replica stops cleanly; the sessions it held are over."""
    def run(conn: WriteConn) -> None:
        conn.execute("UPDATE replicas SET stopped_at = ?, heartbeat_at = ? WHERE name = ?", (now, now, name))
        conn.execute("UPDATE node_sessions SET replica = '' WHERE replica = ?", (name,))

    return run


def merge_facts(node_id: str, facts: Mapping[str, Any]) -> WriteFn:
    def run(conn: WriteConn) -> None:
        row = conn.execute("SELECT facts FROM nodes WHERE id = ?", (node_id,)).fetchone()
        current = json.loads(row[0]) if row and row[0] else {}
        current.update(facts)
        conn.execute("UPDATE nodes SET facts = ? WHERE id = ?", (_dumps(current), node_id))

    return run


# A tuple, not a list: CPython's collector stops tracking a tuple of plain values the first time
# it survives a collection, so rows waiting for a commit (tens of thousands under load) are not
# walked again by every later pass (lists are, and those passes stalled the event loop).
LogRow = tuple[Any, ...]

# One statement for a whole group commit's lines: SQLite walks the JSON array itself, so the
# writer thread hands the work to SQLite once (and releases the GIL once) instead of once per row.
# Sorted by node: every node's lines then land in its index page (UNIQUE (node_id, seq)) one
# after the other, so a commit dirties each node's tail page once instead of once per batch;
# with thousands of nodes per commit that is a third less writer time (bench.writer_paths).
_INSERT_LOG_ROWS = (
    "INSERT OR IGNORE INTO logs (node_id, seq, ts, source, unit, demo, level, msg)"
    " SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, value->>6, value->>7"
    " FROM json_each(?) ORDER BY value->>0, value->>1"
)
_INSERT_LOG_ROW = (
    "INSERT OR IGNORE INTO logs (node_id, seq, ts, source, unit, demo, level, msg) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
# PostgreSQL: the same, as one array per column (unnest): one statement and one round trip per
# commit, typed arrays so the server parses no JSON.
_INSERT_LOG_ROWS_PG = (
    "INSERT INTO logs (node_id, seq, ts, source, unit, demo, level, msg)"
    " SELECT * FROM unnest(CAST(? AS TEXT[]), CAST(? AS BIGINT[]), CAST(? AS DOUBLE PRECISION[]), CAST(? AS TEXT[]),"
    " CAST(? AS TEXT[]), CAST(? AS TEXT[]), CAST(? AS BIGINT[]), CAST(? AS TEXT[]))"
    " AS r (node_id, seq, ts, source, unit, demo, level, msg)"
    " ORDER BY node_id, seq ON CONFLICT (node_id, seq, ts) DO NOTHING"
)
# PostgreSQL text cannot hold NUL: a NUL in a line is stored as U+FFFD (docs/operations.md).
_NUL_FREE = str.maketrans({"\x00": "\ufffd"})


def log_rows(node_id: str, lines: Sequence[Mapping[str, Any]]) -> list[LogRow]:
    """Validated lines as rows in the column order of `insert_log_rows`."""
    return [
        (node_id, line["seq"], line["ts"], line["source"], line.get("unit", ""), line.get("demo", ""),
         LEVEL_NUMBERS[line["level"]], line["msg"])
        for line in lines
    ]


def insert_log_rows(conn: WriteConn, rows: Sequence[LogRow]) -> int:
    """Store rows; a replayed (node, seq) is ignored, so storage is exactly once. Returns rows added."""
    if not rows:
        return 0
    if dialect_of(conn) == "postgresql":
        return _insert_log_rows_pg(conn, rows)
    # The full-text index is filled once per transaction by FtsIndexer, not here.
    if any("\x00" in row[7] for row in rows):
        # SQLite's JSON functions end a string at NUL: such (rare) lines go in one by one, whole.
        return conn.executemany(_INSERT_LOG_ROW, rows).rowcount
    return conn.execute(_INSERT_LOG_ROWS, (_json_array(rows),)).rowcount


def _insert_log_rows_pg(conn: WriteConn, rows: Sequence[LogRow]) -> int:
    columns = [list(column) for column in zip(*rows, strict=True)]
    if any("\x00" in msg for msg in columns[7]):
        columns[7] = [msg.translate(_NUL_FREE) for msg in columns[7]]
    columns[2] = [float(ts) for ts in columns[2]]
    return conn.execute(_INSERT_LOG_ROWS_PG, columns).rowcount


ROWS_PER_DUMP = 1000


def _json_array(rows: Sequence[Sequence[Any]]) -> str:
    """`_dumps(rows)`, made in slices: json.dumps holds the GIL for its whole call, and a group
    commit's 20,000 rows (30 ms) would stall the event loop thread that long."""
    if len(rows) <= ROWS_PER_DUMP:
        return _dumps(rows)
    parts = (_dumps(rows[start:start + ROWS_PER_DUMP])[1:-1] for start in range(0, len(rows), ROWS_PER_DUMP))
    return "[" + ",".join(parts) + "]"


def insert_logs(node_id: str, lines: Sequence[Mapping[str, Any]]) -> WriteFn:
    """One node's validated batch as a write of its own (node sessions use Writer.queue_logs, which merges batches)."""
    rows = log_rows(node_id, lines)
    return lambda conn: insert_log_rows(conn, rows)


class FtsIndexer:
    """Fills the log full-text index once per transaction, right before the commit.

    One INSERT ... SELECT for everything a group commit added costs a fraction of indexing each
    batch (or each row, by trigger). Log ids only grow, so "not indexed yet" is "id > mark".
    """

    def __init__(self) -> None:
        self.mark: int | None = None
        self._pending: int | None = None

    def before_commit(self, conn: WriteConn) -> None:
        if dialect_of(conn) != "sqlite":
            return  # PostgreSQL's text search is an expression index, kept up to date by the server
        if self.mark is None:
            self.mark = conn.execute("SELECT coalesce(max(id), 0) FROM logs_fts_docsize").fetchone()[0]
        top = conn.execute("SELECT coalesce(max(id), 0) FROM logs").fetchone()[0]
        if top > self.mark:
            conn.execute("INSERT INTO logs_fts (rowid, msg) SELECT id, msg FROM logs WHERE id > ?", (self.mark,))
        self._pending = top

    def committed(self) -> None:
        if self._pending is not None:
            self.mark = max(self.mark or 0, self._pending)
            self._pending = None

    def rolled_back(self) -> None:
        self._pending = None


def insert_metrics(node_id: str, ts: float, series: Mapping[str, float]) -> WriteFn:
    """One node's samples, as `insert_metric_rows`."""
    return insert_metric_rows([(node_id, name, ts, value) for name, value in series.items()])


# Like the log rows, a commit's samples go in as one JSON array per statement: one GIL release
# for all of them instead of one per sample (2,000 nodes send ~4,000 samples a second; row by
# row, a fifth of the writer thread's time went in handing the GIL back and forth). Sorted by node
# then time, the commit's samples of a node land one after the other in metrics_raw_node_ts.
_INSERT_METRICS_RAW = (
    "INSERT INTO metrics_raw (node_id, name, ts, value)"
    " SELECT value->>0, value->>1, value->>2, value->>3 FROM json_each(?) ORDER BY value->>0, value->>2"
)
# PostgreSQL: the samples as one array per column, stored and summed into their minutes by one
# statement (the arrays are sent once). The minutes are summed per key first: one statement may
# not update the same row twice there.
_INSERT_METRICS_PG = (
    "WITH s (node_id, name, ts, value) AS (SELECT * FROM unnest(CAST(? AS TEXT[]), CAST(? AS TEXT[]),"
    " CAST(? AS DOUBLE PRECISION[]), CAST(? AS DOUBLE PRECISION[]))),"
    " raw AS (INSERT INTO metrics_raw (node_id, name, ts, value) SELECT * FROM s ORDER BY node_id, ts)"
    " INSERT INTO metrics_1m (node_id, name, bucket, min, avg, max, count)"
    " SELECT node_id, name, CAST(floor(ts / 60) AS BIGINT) * 60 AS minute, min(value), avg(value), max(value),"
    " count(*) FROM s GROUP BY node_id, name, minute"
    " ON CONFLICT (node_id, name, bucket) DO UPDATE SET"
    " min = least(metrics_1m.min, excluded.min), max = greatest(metrics_1m.max, excluded.max),"
    " avg = (metrics_1m.avg * metrics_1m.count + excluded.avg * excluded.count) / (metrics_1m.count + excluded.count),"
    " count = metrics_1m.count + excluded.count"
)


def insert_metric_rows(raw: Sequence[tuple[str, str, float, float]]) -> WriteFn:
    """Many samples (node, name, ts, value) in one statement: how the writer stores a commit's worth.
    Their one-minute min/avg/max: on PostgreSQL in the same statement; on SQLite the writer's
    MetricRollup rolls them up later (readers add the samples not rolled yet: queries.metrics)."""
    def run(conn: WriteConn) -> None:
        if not raw:
            return
        if dialect_of(conn) == "postgresql":
            # (asyncpg takes an int where a double is expected: no conversion pass.)
            conn.execute(_INSERT_METRICS_PG, [[*column] for column in zip(*raw, strict=True)])
            return
        conn.execute(_INSERT_METRICS_RAW, (_json_array(raw),))

    return run


# -- SQLite's one-minute aggregates: rolled up from the raw samples --------------------------------
# A merging upsert of aggregates (min, avg, max, count) into metrics_1m; `excluded.avg` is the
# aggregate's own average. `AND true`: the SELECT's WHERE tells SQLite's parser that ON CONFLICT
# belongs to the INSERT, not to a join.
_MERGE_INTO_1M = (
    " ON CONFLICT (node_id, name, bucket) DO UPDATE SET"
    " min = min(metrics_1m.min, excluded.min), max = max(metrics_1m.max, excluded.max),"
    " avg = (metrics_1m.avg * metrics_1m.count + excluded.avg * excluded.count) / (metrics_1m.count + excluded.count),"
    " count = metrics_1m.count + excluded.count"
)
# The writer's accumulator: the aggregates of the raw rows not rolled yet, per pass (MetricRollup),
# in memory (temp_store=MEMORY) and in the writer's transactions (a rolled-back commit takes its
# part back with it). Lost with the process: rebuilt from the raw rows at start.
_ACC_TABLE = (
    "CREATE TEMP TABLE IF NOT EXISTS metrics_acc (pass INTEGER NOT NULL, node_id TEXT NOT NULL, name TEXT NOT NULL,"
    " bucket INTEGER NOT NULL, min REAL NOT NULL, sum REAL NOT NULL, max REAL NOT NULL, count INTEGER NOT NULL,"
    " PRIMARY KEY (pass, node_id, name, bucket)) WITHOUT ROWID"
)
# Raw rows with rowid in (?, ?] (and of nodes after ?, when given) added to pass ?: a commit's row
# by row (each series has about one sample per commit: summing them first cost more than it saved);
# a range to reload at start summed per minute first (a series has many samples there).
_ACC_ADD = (
    " ON CONFLICT (pass, node_id, name, bucket) DO UPDATE SET"
    " min = min(metrics_acc.min, excluded.min), max = max(metrics_acc.max, excluded.max),"
    " sum = metrics_acc.sum + excluded.sum, count = metrics_acc.count + excluded.count"
)
_ACCUMULATE = (
    "INSERT INTO temp.metrics_acc (pass, node_id, name, bucket, min, sum, max, count)"
    f" SELECT ?, node_id, name, {SQLITE_MINUTE}, value, value, value, 1"
    " FROM metrics_raw WHERE rowid > ? AND rowid <= ?{nodes}" + _ACC_ADD
)
_ACCUMULATE_GROUPED = (
    "INSERT INTO temp.metrics_acc (pass, node_id, name, bucket, min, sum, max, count)"
    f" SELECT ?, node_id, name, {SQLITE_MINUTE} AS minute, min(value), sum(value), max(value), count(*)"
    " FROM metrics_raw WHERE rowid > ? AND rowid <= ?{nodes} GROUP BY node_id, name, minute" + _ACC_ADD
)
# How many accumulated rows (pass, node, name, minute) a commit merges into metrics_1m.
ROLLUP_SLICE_ROWS = 1000
# A rollup pass starts at the first commit of each period of this many seconds (wall clock): a
# pass right after each minute's end finds most series with samples of that one minute only.
ROLLUP_EVERY_S = 60.0


def _rollup_state(conn: WriteConn) -> tuple[int, int, str | None]:
    """(done, upto, node) of metrics_rollup (schema step 13)."""
    done, upto, node = conn.execute("SELECT done, upto, node FROM metrics_rollup").fetchone()
    return int(done), int(upto), node


def _top_raw_rowid(conn: WriteConn) -> int:
    return int(conn.execute("SELECT coalesce(max(rowid), 0) FROM metrics_raw").fetchone()[0])


@dataclass
class _RollupPosition:
    """Where the writer's rollup stands (MetricRollup): raw rows up to rowid `seen` are rolled or in
    the accumulator: those of a pass under way (`flushing`, rowids up to `upto`, merged for the
    nodes up to `after`) and those since (`open`, rowids in (`upto`, `seen`])."""

    seen: int
    upto: int
    open: int
    flushing: int | None = None
    after: str | None = None
    started: float = 0.0  # when the last pass started (MetricRollup.clock)


class MetricRollup:
    """SQLite's one-minute aggregates, rolled up from the raw samples by the writer.

    Upserting each sample's minute row cost the writer more than the sample itself: every series'
    current minute sits on its own page of metrics_1m, so each sample read and wrote a page. Here
    each commit adds its raw rows to an accumulator in memory (`metrics_acc`, summed per node, series
    and minute), and once a minute a pass merges what it holds into metrics_1m, ROLLUP_SLICE_ROWS
    rows per commit (node by node), so a minute row is written about once instead of once per sample.

    Exactly once, also across kill -9: every raw row is rolled in the commit that records so in
    metrics_rollup (db step 13): a pass covers the rows up to a rowid (`upto`), node range by node
    range, and records the last node merged; at its end every row up to `upto` is `done`. The
    accumulator is lost with the process; `start` rebuilds it from the raw rows not rolled yet.
    Raw rowids only grow: retention keeps the row at `done` (store.apply_retention), so SQLite never
    hands a rolled row's rowid to a new sample. Readers add the rows not rolled yet to metrics_1m
    (queries.metrics). PostgreSQL aggregates at each commit (insert_metric_rows): no-op there.

    Used like FtsIndexer: `before_commit` in the writer's transaction, then `committed` or
    `rolled_back`.
    """

    def __init__(self, every_s: float = ROLLUP_EVERY_S, slice_rows: int = ROLLUP_SLICE_ROWS,
                 clock: Callable[[], float] = time.time) -> None:
        self.every_s = every_s
        self.slice_rows = slice_rows
        self.clock = clock  # (bench.writer_paths runs it on the samples' time)
        self._at: _RollupPosition | None = None  # None: not started, or PostgreSQL
        self._next: _RollupPosition | None = None  # the position once this transaction commits
        self.passes = 0  # passes finished (tests, diagnostics)

    def start(self, conn: WriteConn) -> None:
        """In the writer's first transaction: the accumulator made and filled with the raw rows not
        rolled yet (a pass cut short by a crash goes on where it stopped)."""
        if dialect_of(conn) != "sqlite":
            return
        conn.execute(_ACC_TABLE)
        conn.execute("DELETE FROM temp.metrics_acc")
        done, upto, node = _rollup_state(conn)
        top = _top_raw_rowid(conn)
        at = _RollupPosition(seen=top, upto=upto, open=1, started=self.clock())
        if upto > done:
            at.flushing, at.open, at.after = 1, 2, node
            _accumulate(conn, 1, done, upto, after=node, grouped=True)
        _accumulate(conn, at.open, upto, top, grouped=True)
        self._next = at

    def before_commit(self, conn: WriteConn, *, everything: bool = False) -> None:
        """Add this transaction's raw rows to the accumulator; start a pass when one is due, and
        merge one slice of the pass under way. `everything`: roll up all (the writer closing)."""
        at = self._at
        if at is None or dialect_of(conn) != "sqlite":
            return
        at = replace(at)
        top = _top_raw_rowid(conn)
        if top > at.seen:
            _accumulate(conn, at.open, at.seen, top)
            at.seen = top
        while True:
            if at.flushing is None:
                if at.seen == at.upto or not (everything or self._due(at.started)):
                    break
                conn.execute("UPDATE metrics_rollup SET upto = ?, node = NULL", (at.seen,))
                at.upto, at.flushing, at.open, at.after = at.seen, at.open, at.open + 1, None
                at.started = self.clock()
            self._merge_slice(conn, at)
            if not everything:
                break
        self._next = at

    def _due(self, started: float) -> bool:
        """A new period has begun since the last pass started."""
        if self.every_s <= 0:
            return True
        return self.clock() // self.every_s > started // self.every_s

    def _merge_slice(self, conn: WriteConn, at: _RollupPosition) -> None:
        """Merge the next nodes' rows of the pass under way into metrics_1m (about slice_rows rows,
        whole nodes), and record so; the pass's last slice also ends it."""
        assert at.flushing is not None
        where, params = _acc_rows(at.flushing, at.after)
        row = conn.execute(f"SELECT node_id FROM temp.metrics_acc WHERE {where} ORDER BY node_id LIMIT 1 OFFSET ?",
                           (*params, self.slice_rows - 1)).fetchone()
        last = row[0] if row is not None else None  # None: the rest of the pass
        where, params = _acc_rows(at.flushing, at.after, last)
        conn.execute("INSERT INTO metrics_1m (node_id, name, bucket, min, avg, max, count)"
                     f" SELECT node_id, name, bucket, min, sum / count, max, count FROM temp.metrics_acc"
                     f" WHERE {where} AND true" + _MERGE_INTO_1M, params)
        conn.execute(f"DELETE FROM temp.metrics_acc WHERE {where}", params)
        if last is not None:
            conn.execute("UPDATE metrics_rollup SET node = ?", (last,))
            at.after = last
            return
        conn.execute("UPDATE metrics_rollup SET done = upto, node = NULL")
        at.flushing, at.after = None, None
        self.passes += 1

    def committed(self) -> None:
        if self._next is not None:
            self._at, self._next = self._next, None

    def rolled_back(self) -> None:
        self._next = None


def _acc_rows(pass_id: int, after: str | None, upto: str | None = None) -> tuple[str, tuple[Any, ...]]:
    """The WHERE clause (and its parameters) of pass `pass_id`'s accumulated rows of the nodes after
    `after` up to `upto` (None: no bound)."""
    where = "pass = ?" + (" AND node_id > ?" if after is not None else "") + (" AND node_id <= ?" if upto is not None else "")
    return where, (pass_id, *(v for v in (after, upto) if v is not None))


def _accumulate(conn: WriteConn, pass_id: int, above: int, upto: int, after: str | None = None,
                grouped: bool = False) -> None:
    """The raw rows with a rowid in (above, upto] (of the nodes after `after`, if given) into the
    accumulator's pass `pass_id` (`grouped`: summed per minute first)."""
    if upto <= above:
        return
    nodes = " AND node_id > ?" if after is not None else ""
    sql = _ACCUMULATE_GROUPED if grouped else _ACCUMULATE
    conn.execute(sql.format(nodes=nodes), (pass_id, above, upto, *((after,) if after is not None else ())))


def roll_up_metrics(conn: WriteConn) -> None:
    """SQLite: every raw row not rolled up yet merged into metrics_1m now (a database leaving for
    PostgreSQL: `dvic-central migrate`; never while a writer runs, whose accumulator holds them too)."""
    if dialect_of(conn) != "sqlite":
        return
    done, upto, node = _rollup_state(conn)
    top = _top_raw_rowid(conn)
    for above, below, after in ((done, upto, node), (upto, top, None)):
        if below <= above:
            continue
        nodes, params = (" AND node_id > ?", (after,)) if after is not None else ("", ())
        conn.execute(
            "INSERT INTO metrics_1m (node_id, name, bucket, min, avg, max, count)"
            f" SELECT node_id, name, {SQLITE_MINUTE} AS minute, min(value), avg(value), max(value), count(*)"
            f" FROM metrics_raw WHERE rowid > ? AND rowid <= ?{nodes} GROUP BY node_id, name, minute"
            + _MERGE_INTO_1M, (above, below, *params))
    conn.execute("UPDATE metrics_rollup SET done = ?, upto = ?, node = NULL", (top, top))


def insert_event(ts: float, node_id: str, kind: str, message: str, data: Mapping[str, Any]) -> WriteFn:
    def run(conn: WriteConn) -> int:
        return new_row_id(conn, "INSERT INTO events (ts, node_id, kind, message, data) VALUES (?, ?, ?, ?, ?)",
                          (ts, node_id, kind, message, _dumps(dict(data))))

    return run


def upsert_demo(node_id: str, demo: Mapping[str, Any], ts: float) -> WriteFn:
    def run(conn: WriteConn) -> None:
        conn.execute(
            "INSERT INTO demos (node_id, token, name, pid, state, started_at, exited_at, header, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (node_id, token) DO UPDATE SET name = excluded.name, pid = excluded.pid,"
            " state = excluded.state, started_at = excluded.started_at, exited_at = excluded.exited_at,"
            " header = excluded.header, updated_at = excluded.updated_at",
            (
                node_id, demo["token"], demo["name"], demo.get("pid"), demo["state"], demo.get("started_at"),
                demo.get("exited_at"), _dumps(demo.get("header", {})), ts,
            ),
        )

    return run


def forget_exited_demos(before: float) -> WriteFn:
    """Exited demos last heard of before `before` (the registry forgets the same ones in memory)."""
    def run(conn: WriteConn) -> int:
        return conn.execute("DELETE FROM demos WHERE state = 'exited' AND updated_at < ?", (before,)).rowcount

    return run


def forget_demos(node_id: str, tokens: Sequence[str]) -> WriteFn:
    """These demos of one node (evicted to make room, or above the cap)."""
    def run(conn: WriteConn) -> int:
        return conn.executemany(
            "DELETE FROM demos WHERE node_id = ? AND token = ?", [(node_id, token) for token in tokens]
        ).rowcount

    return run


def upsert_demo_evicting(node_id: str, demo: Mapping[str, Any], ts: float, evicted: str | None) -> WriteFn:
    """upsert_demo, and the demo it takes the place of forgotten in the same commit."""
    return after(None if evicted is None else forget_demos(node_id, [evicted]), upsert_demo(node_id, demo, ts))


def create_operator(name: str, role: str, status: str, ts: float, approved_by: str = "") -> WriteFn:
    def run(conn: WriteConn) -> None:
        conn.execute(
            "INSERT INTO operators (name, role, status, created_at, approved_by) VALUES (?, ?, ?, ?, ?)",
            (name, role, status, ts, approved_by),
        )

    return run


def update_operator(name: str, *, role: str | None = None, status: str | None = None,
                    approved_by: str | None = None) -> WriteFn:
    def run(conn: WriteConn) -> int:
        sets: list[str] = []
        params: list[Any] = []
        for column, value in (("role", role), ("status", status), ("approved_by", approved_by)):
            if value is not None:
                sets.append(f"{column} = ?")
                params.append(value)
        if not sets:
            return 0
        params.append(name)
        return conn.execute(f"UPDATE operators SET {', '.join(sets)} WHERE name = ?", params).rowcount

    return run


def add_token(token_hash: str, operator: str, ts: float, label: str = "") -> WriteFn:
    def run(conn: WriteConn) -> None:
        conn.execute(
            "INSERT INTO tokens (hash, operator, created_at, label) VALUES (?, ?, ?, ?)",
            (token_hash, operator, ts, label),
        )

    return run


def revoke_tokens(operator: str, ts: float) -> WriteFn:
    return _changes("UPDATE tokens SET revoked_at = ? WHERE operator = ? AND revoked_at IS NULL", (ts, operator))


def insert_audit(ts: float, operator: str, action: str, target: str, status: int, remote: str,
                 detail: Mapping[str, Any]) -> WriteFn:
    def run(conn: WriteConn) -> int:
        return new_row_id(
            conn, "INSERT INTO audit (ts, operator, action, target, status, remote, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (ts, operator, action, target, status, remote, _dumps(dict(detail))))

    return run


# -- accounts and enrollments (schema step 5; the rules are in accounts.py) ---------------------
def add_registration(name: str, code_hash: str, remote: str, ts: float) -> WriteFn:
    return _changes("INSERT INTO registrations (name, code_hash, remote, created_at) VALUES (?, ?, ?, ?)",
                    (name, code_hash, remote, ts))


def drop_registration(name: str) -> WriteFn:
    return _changes("DELETE FROM registrations WHERE name = ?", (name,))


def delete_operator(name: str) -> WriteFn:
    """Remove an account with its tokens; its name becomes free. The audit trail keeps its rows."""

    def run(conn: WriteConn) -> int:
        conn.execute("DELETE FROM registrations WHERE name = ?", (name,))
        conn.execute("DELETE FROM tokens WHERE operator = ?", (name,))
        return conn.execute("DELETE FROM operators WHERE name = ?", (name,)).rowcount

    return run


def set_token_expiry(token_hash: str, expires_at: float | None) -> WriteFn:
    return _changes("UPDATE tokens SET expires_at = ? WHERE hash = ?", (expires_at, token_hash))


def touch_token(token_hash: str, ts: float) -> WriteFn:
    return _changes("UPDATE tokens SET last_used_at = ? WHERE hash = ?", (ts, token_hash))


def set_enrolled_by(node_id: str, by: str) -> WriteFn:
    return _changes("UPDATE nodes SET enrolled_by = ? WHERE id = ?", (by, node_id))


# -- remote control: commands and their runs, shell sessions, tracked actions --------------------
def lose_unfinished_runs(ts: float) -> WriteFn:
    """At start-up: runs a previous server process left unfinished can never finish now."""
    return _changes("UPDATE command_runs SET state = 'lost', message = 'the server restarted during the command',"
                    " finished_at = ? WHERE state IN ('pending', 'running')", (ts,))


def create_command(command_id: str, created_at: float, operator: str, argv: list[str] | None, shell: str | None,
                   timeout: float, target: str, runs: Sequence[tuple[str, str]]) -> WriteFn:
    """A command and its runs, given as (run id, node id), each in state pending."""

    def run(conn: WriteConn) -> None:
        conn.execute(
            "INSERT INTO commands (id, created_at, operator, argv, shell, timeout, target) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (command_id, created_at, operator, json.dumps(argv) if argv is not None else None, shell, timeout,
             target),
        )
        conn.executemany("INSERT INTO command_runs (id, command_id, node_id, state) VALUES (?, ?, ?, 'pending')",
                         [(run_id, command_id, node_id) for run_id, node_id in runs])

    return run


def save_run(current: Callable[[], Mapping[str, Any]]) -> WriteFn:
    """A run's state as it is when the write runs (`current`: `commands.Run.view`). Read then, not
    when queued: a write queued without waiting (the run started) may commit after the run ended,
    and must then store the end, not the start over it."""

    def run(conn: WriteConn) -> int:
        row = current()
        return conn.execute(
            "UPDATE command_runs SET state = ?, code = ?, signal = ?, message = ?, started_at = ?, finished_at = ?,"
            " output_bytes = ?, truncated = ? WHERE id = ?",
            (row["state"], row["code"], row["signal"], row["message"], row["started_at"], row["finished_at"],
             row["output_bytes"], int(row["truncated"]), row["run_id"]),
        ).rowcount

    return run


def add_command_output(run_id: str, stream: str, data: str) -> WriteFn:
    """A piece of a run's output; the result is its id (the `chunk` clients order output by)."""
    return _new_row("INSERT INTO command_output (run_id, stream, data) VALUES (?, ?, ?)", (run_id, stream, data))


def open_shell_session(session_id: str, node_id: str, operator: str, started_at: float, cols: int, rows: int,
                       recording: str) -> WriteFn:
    return _changes(
        "INSERT INTO shell_sessions (id, node_id, operator, started_at, cols, rows, recording)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)", (session_id, node_id, operator, started_at, cols, rows, recording))


def end_shell_session(session_id: str, ended_at: float, exit_code: int | None, message: str,
                      bytes_out: int) -> WriteFn:
    return _changes("UPDATE shell_sessions SET ended_at = ?, exit_code = ?, message = ?, bytes_out = ? WHERE id = ?",
                    (ended_at, exit_code, message, bytes_out, session_id))


def lose_unfinished_actions(ts: float) -> WriteFn:
    """At start-up: actions a previous server process was tracking cannot be followed any more."""
    return _changes("UPDATE actions SET state = 'lost', message = 'the server restarted while it was pending',"
                    " updated_at = ? WHERE state IN ('requested', 'in_progress')", (ts,))


def insert_action(action: Mapping[str, Any]) -> WriteFn:
    """A new tracked action, its fields named as the columns (as `dataclasses.asdict(actions.Action)`)."""
    columns = ("id", "node_id", "operator", "action", "demo", "state", "message", "requested_at", "updated_at",
               "deadline", "boot_time")
    return _changes(f"INSERT INTO actions ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                    tuple(action[column] for column in columns))


def update_action(action_id: str, state: str, message: str, updated_at: float) -> WriteFn:
    return _changes("UPDATE actions SET state = ?, message = ?, updated_at = ? WHERE id = ?",
                    (state, message, updated_at, action_id))


class Trimmed(dict[str, int]):
    """Rows deleted per table by `apply_retention`; `done` is False when its time budget ran out
    with expired rows left (the caller comes back for them in a later commit)."""

    done: bool = True
    seconds: float = 0.0  # time spent deleting


def apply_retention(now: float, raw_metrics_s: float, metrics_1m_s: float, logs_s: float, logs_max_rows: int,
                    events_s: float, audit_s: float, chunk: int = 500,
                    time_budget: float | None = None) -> WriteFn:
    """Delete what is past its window, `chunk` rows per statement, until nothing expired is left
    or `time_budget` seconds are spent: the caller keeps each commit short by giving a budget and
    coming back until `done` (services.trim_expired)."""

    def run(conn: WriteConn) -> Trimmed:
        started = time.perf_counter()
        deleted = Trimmed()

        def trim(table: str, source: str, where: str, params: Iterable[Any], key: str) -> bool:
            """Delete from `source` (`table` or one of its partitions) chunk by chunk; False if the
            time budget ran out first."""
            sql = f"DELETE FROM {source} WHERE ({key}) IN (SELECT {key} FROM {source} WHERE {where} LIMIT {chunk})"
            args = tuple(params)
            while True:
                count = conn.execute(sql, args).rowcount
                deleted[table] = deleted.get(table, 0) + count
                if count < chunk:
                    return True
                if time_budget is not None and time.perf_counter() - started >= time_budget:
                    deleted.done = False
                    return False

        indexed = _last_indexed_log(conn)
        windows = {"metrics_raw": now - raw_metrics_s, "metrics_1m": now - metrics_1m_s, "logs": now - logs_s}
        raw_expired: tuple[str, Callable[[], tuple[Any, ...]]] = ("ts < ?", lambda: (windows["metrics_raw"],))
        if dialect_of(conn) == "sqlite":
            # metrics_raw has no key of its own: its row address. Only samples rolled up into
            # metrics_1m, and never the one at `done` (MetricRollup: rowids must only grow).
            where = {"metrics_raw": ("metrics_raw", "rowid"), "metrics_1m": ("metrics_1m", "node_id, name, bucket"),
                     "logs": ("logs", "id")}
            rolled = _rollup_state(conn)[0]
            raw_expired = ("ts < ? AND rowid < ?", lambda: (windows["metrics_raw"], rolled))
        else:
            # PostgreSQL: whole days past their window go at once, by dropping their partitions
            # (a day is kept until all of it is expired); what is left to delete row by row is in
            # the DEFAULT partitions (rows outside the days made).
            ensure_partitions(conn, now)
            for table, cutoff in windows.items():
                deleted[table] = deleted.get(table, 0) + _drop_partitions_before(conn, table, cutoff)
            where = {table: (f"{table}_default", "ctid") for table in windows}
        steps: list[tuple[str, str, str, Callable[[], Iterable[Any]], str]] = [
            ("metrics_raw", *where["metrics_raw"], raw_expired[1], raw_expired[0]),
            ("metrics_1m", *where["metrics_1m"], lambda: (windows["metrics_1m"],),
             "bucket < CAST(? AS DOUBLE PRECISION)"),
            ("logs", *where["logs"], lambda: (windows["logs"], indexed), "ts < ? AND id <= ?"),
            # ids grow with arrival, so beyond the cap the oldest rows have the smallest ids.
            ("logs", "logs", "id", lambda: (_logs_cap_cutoff(conn, logs_max_rows), indexed), "id <= ? AND id <= ?"),
            ("events", "events", "id", lambda: (now - events_s,), "ts < ?"),
            ("audit", "audit", "id", lambda: (now - audit_s,), "ts < ?"),
        ]
        for table, source, key, params, condition in steps:
            if not trim(table, source, condition, params(), key):
                break
        deleted.seconds = time.perf_counter() - started
        return deleted

    return run


# -- PostgreSQL's day partitions of logs and metrics (db.HISTORY_PG) --------------------------------
DAY_S = 86_400
# Days made ahead of today (and yesterday, for clocks a little behind): a line's day exists before
# its first line comes, so the DEFAULT partition only takes the odd far-off timestamp.
PARTITION_DAYS_AHEAD = 2
PARTITION_LOCK = 0x64766970  # advisory lock key while making partitions ("dvip"; db.MIGRATION_LOCK is "dvic")
_PARTITION_NAME = re.compile(r"_p(\d{8})$")


def partition_days(conn: WriteConn, table: str) -> dict[int, str]:
    """The day partitions of `table`: day start (Unix time, UTC) -> partition name."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = CAST(CAST(? AS TEXT) AS regclass)", (table,)).fetchall()
    days: dict[int, str] = {}
    for (name,) in rows:
        found = _PARTITION_NAME.search(name)
        if found and name == f"{table}_p{found.group(1)}":
            days[calendar.timegm(time.strptime(found.group(1), "%Y%m%d"))] = name
    return days


def ensure_partitions(conn: WriteConn, now: float) -> int:
    """Make the day partitions of yesterday, today and PARTITION_DAYS_AHEAD days on (PostgreSQL; a
    no-op on SQLite). Rows of a new day already in the DEFAULT partition move into it. Returns the
    partitions made."""
    if dialect_of(conn) == "sqlite":
        return 0
    # Replicas starting together would each create the same partitions (and deadlock on the
    # parents' locks): one at a time, until this transaction commits; the next then finds them.
    conn.execute("SELECT pg_advisory_xact_lock(?)", (PARTITION_LOCK,))
    today = int(now // DAY_S) * DAY_S
    made = 0
    for table, column in PARTITIONED.items():
        have = partition_days(conn, table)
        for day in range(today - DAY_S, today + (PARTITION_DAYS_AHEAD + 1) * DAY_S, DAY_S):
            if day not in have:
                _make_partition(conn, table, column, day)
                made += 1
    return made


def _make_partition(conn: WriteConn, table: str, column: str, day: int) -> None:
    name = f"{table}_p{time.strftime('%Y%m%d', time.gmtime(day))}"
    default, bounds = f"{table}_default", f"{column} >= {day} AND {column} < {day + DAY_S}"
    create = f"CREATE TABLE {name} PARTITION OF {table} FOR VALUES FROM ({day}) TO ({day + DAY_S})"
    if conn.execute(f"SELECT 1 FROM {default} WHERE {bounds} LIMIT 1").fetchone() is None:
        conn.execute(create)
        return
    # The DEFAULT partition may not keep rows of a range given to a new partition: move them.
    conn.execute(f"CREATE TEMP TABLE dvic_moving (LIKE {table})")
    conn.execute(f"WITH moved AS (DELETE FROM {default} WHERE {bounds} RETURNING *)"
                 " INSERT INTO dvic_moving SELECT * FROM moved")
    conn.execute(create)
    conn.execute(f"INSERT INTO {table} SELECT * FROM dvic_moving")
    conn.execute("DROP TABLE dvic_moving")


def _drop_partitions_before(conn: WriteConn, table: str, cutoff: float) -> int:
    """Drop the day partitions of `table` wholly before `cutoff`; the rows they held (the
    planner's estimate once the table has been analyzed, else counted)."""
    rows = 0
    for day, name in sorted(partition_days(conn, table).items()):
        if day + DAY_S > cutoff:
            break
        estimate = conn.execute("SELECT reltuples FROM pg_class WHERE oid = CAST(CAST(? AS TEXT) AS regclass)",
                                (name,)).fetchone()[0]
        if estimate is None or estimate < 0:
            estimate = conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
        conn.execute(f"DROP TABLE {name}")
        rows += int(estimate)
    return rows


def ensure_day_partitions(conn: WriteConn, table: str, days: Iterable[int]) -> int:
    """The day partitions of `table` for these days (day starts, Unix time, UTC) that do not exist
    yet: for rows older than ensure_partitions' window (`dvic-central migrate` moving history).
    Returns the partitions made."""
    have = partition_days(conn, table)
    made = 0
    for day in sorted(set(days) - set(have)):
        _make_partition(conn, table, PARTITIONED[table], day)
        made += 1
    return made


def prepare_partitions(now: float) -> WriteFn:
    """ensure_partitions as a write (at start; then each retention pass makes the days ahead)."""
    return lambda conn: ensure_partitions(conn, now)


def _last_indexed_log(conn: WriteConn) -> int:
    """The newest log id retention may delete. SQLite: only rows already in the full-text index
    (FtsIndexer fills it at commit): deleting a row the index has not seen would feed it a
    'delete' for a document it does not hold. PostgreSQL's index is kept by the server: any."""
    if dialect_of(conn) != "sqlite":
        return 2**63 - 1
    return int(conn.execute("SELECT coalesce(max(id), 0) FROM logs_fts_docsize").fetchone()[0])


def _logs_cap_cutoff(conn: WriteConn, logs_max_rows: int) -> int:
    """The highest log id to delete so that at most `logs_max_rows` remain (0: nothing to delete)."""
    low, high = conn.execute("SELECT min(id), max(id) FROM logs").fetchone()
    if high is None or high - low + 1 <= logs_max_rows:
        return 0
    return int(high - logs_max_rows)
