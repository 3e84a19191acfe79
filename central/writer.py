"""The one batching writer: every write to the database goes through here (group commit).

Callers submit small functions that run against a `WriteConn` (store.py's `WriteFn`s: the SQL is
there; this module only opens, commits and rolls back); the writer runs all queued
functions in one transaction on its own thread, commits, and only then resolves each caller's
future. So "awaited" means "durably committed", which is what a node's ack promises.

Why a dedicated thread with the standard `sqlite3` instead of aiosqlite here: a group commit is
then one thread hop for the whole batch instead of one per statement, which is what makes
tens of thousands of log lines per second cheap. Reads use aiosqlite (see `queries.py`).
On PostgreSQL the same thread drives an asyncpg connection on a private event loop
(dbconn.PgWriteConn): the batching, the savepoint per write and acks-after-commit are the same.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .db import connect_writer
from .dbconn import DatabaseUnavailable, Target, WriteConn, WriterConn
from .store import FtsIndexer, LogRow, MetricRollup, WriteFn, insert_log_rows, insert_metric_rows, log_rows

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_BATCH_OPS = 2000
QUEUE_LIMIT = 20000
# Log rows waiting for the next commit; past this, queue_logs waits (backpressure on the nodes).
PENDING_LOG_ROWS_LIMIT = 50_000
# Log batches whose owners are told of their commit per turn of the event loop (_settle_log_batches).
SETTLE_PER_TURN = 256


class StorageError(Exception):
    """The database could not commit (disk full, I/O error...). Nothing in the batch was stored."""


@dataclass
class _Op:
    fn: WriteFn
    future: asyncio.Future[Any]
    urgent: bool = False


# Told once a log batch's commit is over: None when the lines are stored, else why they are not.
LogsDone = Callable[[Exception | None], None]


@dataclass
class _LogBatch:
    rows: list[LogRow]
    done: LogsDone
    error: Exception | None = None


class Writer:
    def __init__(self, path: Target | Path | str, commit_interval: float = 0.02,
                 rollup: MetricRollup | None = None) -> None:
        self.path = path
        self.fts = FtsIndexer()
        # SQLite's one-minute metric aggregates, rolled up from the raw samples at commits.
        self.rollup = rollup or MetricRollup()
        self.commit_interval = commit_interval
        self._queue: asyncio.Queue[_Op | None] = asyncio.Queue(QUEUE_LIMIT)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dvic-writer")
        self._conn: WriterConn | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread_id: int | None = None
        self.commits = 0
        self.ops = 0
        # For GET /metrics (docs/alerts.md): log lines and metric samples taken, and how long the
        # last commit took (with the lines and rows waiting, the writer's lag).
        self.log_rows_total = 0
        self.metric_samples_total = 0
        self.last_commit_s = 0.0
        self._background: set[asyncio.Future[Any]] = set()
        self._metrics: list[tuple[str, str, float, float]] = []
        self._logs: list[_LogBatch] = []
        self._log_rows_pending = 0
        self._logs_taken = asyncio.Event()
        self._urgent_queued = 0  # urgent ops in the queue, not yet taken into a batch
        self._spacing: asyncio.Future[None] | None = None  # set while a batch is held back for the interval
        self._closing = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._open)
        self._task = asyncio.create_task(self._run(), name="dvic-writer")

    def _open(self) -> None:
        conn = connect_writer(self.path)
        if conn.dialect == "sqlite":
            try:
                started = time.monotonic()
                conn.begin()
                self.rollup.start(conn)
                conn.commit()
                self.rollup.committed()
            except BaseException:
                conn.close()
                raise
            if time.monotonic() - started > 1:
                log.info("metric samples not rolled up yet reloaded in %.1f s", time.monotonic() - started)
        self._conn = conn
        self._thread_id = threading.get_ident()

    @property
    def queued(self) -> tuple[int, int]:
        """(writes waiting for a commit, log lines waiting for a commit)."""
        return self._queue.qsize(), self._log_rows_pending

    @property
    def holding_back(self) -> bool:
        """True while the writer holds a batch back for `commit_interval` (diagnostics, tests)."""
        return self._spacing is not None and not self._spacing.done()

    async def close(self) -> None:
        # Nobody gains from spacing commits any more: what is queued commits at once.
        self._closing = True
        self._end_hold_back()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._task is not None:
            await self._queue.put(None)
            await self._task
            self._task = None
        loop = asyncio.get_running_loop()
        if self._conn is not None:
            if self._conn.dialect == "sqlite":
                await loop.run_in_executor(self._executor, self._roll_up_everything)
            await loop.run_in_executor(self._executor, self._conn.close)
            self._conn = None
        self._executor.shutdown(wait=True)

    def _roll_up_everything(self) -> None:
        """At a clean stop: every metric sample's minute into metrics_1m (a start after a crash
        would rebuild the accumulator from the raw rows instead)."""
        try:
            self._apply([], roll_up_everything=True)
        except StorageError:
            pass  # logged; the samples stay in metrics_raw, and the next start rolls them up

    async def submit(self, fn: Callable[[WriteConn], T], *, urgent: bool = False) -> T:
        """Run `fn` inside the next group commit; returns its result once committed.

        An exception raised by `fn` is re-raised here and undoes only that function's changes.
        A failed commit raises StorageError for every function in the batch.

        `urgent`: an operator is waiting on this write (a command, its runs' states and output, a
        shell): the next commit starts as soon as the writer is free instead of after
        `commit_interval`, and a writer holding a batch back for the interval commits at once.
        Everything queued goes in that commit, in submission order, as always. Urgent writes still
        group: those arriving while a commit runs go together in the next one.
        """
        if self._task is None:
            raise StorageError("the writer is not running")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Op(fn, future, urgent))
        if urgent:
            self._urgent_queued += 1
            self._end_hold_back()
        return await future

    async def barrier(self) -> None:
        """Returns once everything queued before this call (writes, log batches) is committed: one
        commit takes every waiting log batch. Raises StorageError as `submit`."""
        await self.submit(_nothing)

    def add_metrics(self, node_id: str, ts: float, series: dict[str, float]) -> None:
        """Queue metric samples for the next commit without waiting for it.

        Samples are history, acknowledged to nobody: gathering every request's samples into one
        pair of statements per commit is what lets thousands of keep-alives a second through.
        """
        if not series:
            return
        first = not self._metrics
        self.metric_samples_total += len(series)
        self._metrics.extend((node_id, name, ts, value) for name, value in series.items())
        if first:
            self.submit_later(_nothing)  # make sure a commit comes soon, even if nothing else is queued

    async def add_logs(self, node_id: str, lines: list[dict[str, Any]]) -> None:
        """Store a node's validated log batch; returns once it is committed."""
        committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def done(error: Exception | None) -> None:
            if committed.done():
                return
            if error is None:
                committed.set_result(None)
            else:
                committed.set_exception(error)

        await self.queue_logs(node_id, lines, done)
        await committed

    async def queue_logs(self, node_id: str, lines: list[dict[str, Any]], done: LogsDone) -> None:
        """Queue a node's validated log batch for the next commit; `done` is called once it is over.

        Waits only while too many lines are already waiting (backpressure). Every batch waiting
        for a commit is inserted by one statement (see store.insert_log_rows): at thousands of
        small node batches a second, per-batch statements would cost the writer thread a GIL
        hand-over per row. A plain callback rather than a future per batch: settling thousands
        of futures per commit was a tenth of the event loop's time.
        """
        if self._task is None:
            raise StorageError("the writer is not running")
        while self._log_rows_pending >= PENDING_LOG_ROWS_LIMIT:
            self._logs_taken.clear()
            await self._logs_taken.wait()
        batch = _LogBatch(log_rows(node_id, lines), done)
        first = not self._logs
        self._logs.append(batch)
        self._log_rows_pending += len(batch.rows)
        self.log_rows_total += len(batch.rows)
        if first:
            self.submit_later(_nothing)  # make sure a commit comes soon

    def submit_later(self, fn: WriteFn, *, urgent: bool = False) -> None:
        """Queue a write without waiting for its commit (state worth keeping, nobody waiting on it).

        Writes still commit in submission order with the rest; a failure is logged. `urgent` as
        for `submit`.
        """
        task = asyncio.ensure_future(self.submit(fn, urgent=urgent))
        self._background.add(task)
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Future[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background write failed: %s", task.exception())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last_commit = -math.inf  # the first commit never waits (monotonic() may start near 0)
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            batch = [first]
            # Space commits a little so a busy server batches more per transaction (node logs and
            # metrics); an urgent write, queued or arriving meanwhile, ends the wait.
            wait = self.commit_interval - (time.monotonic() - last_commit)
            if wait > 0 and not self._urgent_queued and not self._closing:
                await self._hold_back(loop, wait)
            while len(batch) < MAX_BATCH_OPS:
                try:
                    op = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if op is None:
                    stopping = True
                    break
                batch.append(op)
            self._urgent_queued -= sum(1 for op in batch if op.urgent)
            live = [op for op in batch if not op.future.cancelled()]
            fns: list[Callable[[WriterConn], Any]] = [op.fn for op in live]
            # Metric samples and waiting log batches go first, each as one write.
            samples, self._metrics = self._metrics, []
            if samples:
                fns.insert(0, insert_metric_rows(samples))
            logs, self._logs = self._logs, []
            if logs:
                self._log_rows_pending = 0
                self._logs_taken.set()
                fns.insert(0, _insert_log_batches(logs))
            commit_started = time.monotonic()
            try:
                results = await loop.run_in_executor(self._executor, self._apply, fns)
            except StorageError as exc:
                for op in live:
                    if not op.future.done():
                        op.future.set_exception(exc)
                logs_failure: Exception | None = exc
            else:
                logs_failure = None
                if logs:
                    ok, value = results.pop(0)
                    logs_failure = None if ok else value
                if samples:
                    ok, value = results.pop(0)
                    if not ok:
                        log.error("metric samples not stored: %s", value)
                for op, (ok, value) in zip(live, results, strict=True):
                    if op.future.done():
                        continue
                    if ok:
                        op.future.set_result(value)
                    else:
                        op.future.set_exception(value)
            # Whoever awaits a write (an operator's command, a shell) hears at once; the node
            # batches, told over several loop turns, after them.
            await _settle_log_batches(logs, logs_failure)
            last_commit = time.monotonic()
            self.last_commit_s = last_commit - commit_started

    async def _hold_back(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        """Waits `seconds`, or less if an urgent write comes or the writer closes."""
        self._spacing = loop.create_future()
        timer = loop.call_later(seconds, self._end_hold_back)
        try:
            await self._spacing
        finally:
            timer.cancel()
            self._spacing = None

    def _end_hold_back(self) -> None:
        if self._spacing is not None and not self._spacing.done():
            self._spacing.set_result(None)

    def _apply(self, fns: list[Callable[[WriterConn], Any]], *,
               roll_up_everything: bool = False) -> list[tuple[bool, Any]]:
        conn = self._conn
        assert conn is not None
        results: list[tuple[bool, Any]] = []
        failures: tuple[type[BaseException], ...] = (*conn.errors, DatabaseUnavailable)
        # Per write, the savepoint verbs run as statements: the same text on both engines, and on
        # SQLite straight into sqlite3 (the writer's hot path costs what it did).
        try:
            conn.begin()
            for fn in fns:
                conn.execute("SAVEPOINT op")
                try:
                    value = fn(conn)
                except Exception as exc:  # one bad write must not sink the others
                    if not conn.in_transaction:
                        # The engine rolled the whole transaction back (e.g. disk full, connection
                        # lost): the batch is lost.
                        raise StorageError(f"database write failed: {exc}") from exc
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    if conn.storage_failure(exc):
                        log.error("database write failed: %s", exc)
                        exc = StorageError(f"database write failed: {exc}")
                    results.append((False, exc))
                else:
                    conn.execute("RELEASE op")
                    results.append((True, value))
            self.fts.before_commit(conn)
            self.rollup.before_commit(conn, everything=roll_up_everything)
            conn.commit()
            self.fts.committed()
            self.rollup.committed()
        except StorageError:
            self.fts.rolled_back()
            self.rollup.rolled_back()
            self._give_up(conn)
            log.error("database transaction rolled back; %d writes failed", len(fns))
            raise
        except failures as exc:
            self.fts.rolled_back()
            self.rollup.rolled_back()
            self._give_up(conn)
            log.error("database commit failed: %s", exc)
            raise StorageError(f"database commit failed: {exc}") from exc
        self.commits += 1
        self.ops += len(fns)
        return results

    @staticmethod
    def _give_up(conn: WriterConn) -> None:
        """Leave the failed transaction (if the engine has not already)."""
        gone: tuple[type[BaseException], ...] = (*conn.errors, DatabaseUnavailable)
        try:
            conn.rollback()
        except gone:  # the connection is gone: nothing to roll back
            pass


def _insert_log_batches(batches: list[_LogBatch]) -> Callable[[WriterConn], Any]:
    """All waiting log batches in one statement; if that fails, batch by batch, so one bad batch
    fails alone (its node gets no ack and resends) instead of failing every node's lines."""

    def run(conn: WriterConn) -> Any:
        try:
            insert_log_rows(conn, [row for batch in batches for row in batch.rows])
        except Exception as exc:
            if not conn.in_transaction or conn.storage_failure(exc):
                raise
            conn.execute("ROLLBACK TO op")
            for batch in batches:
                conn.execute("SAVEPOINT one")
                try:
                    insert_log_rows(conn, batch.rows)
                except Exception as one_exc:
                    if not conn.in_transaction or conn.storage_failure(one_exc):
                        raise
                    conn.execute("ROLLBACK TO one")
                    batch.error = one_exc
                conn.execute("RELEASE one")

    return run


async def _settle_log_batches(batches: list[_LogBatch], failure: Exception | None) -> None:
    """After the commit: tell each batch's owner whether its lines are stored.

    A few hundred owners per turn of the event loop: each one wakes a node session that sends an
    ack, and the nodes answer an ack with their waiting lines. Settling a commit of 2,000 nodes
    in one turn made one burst of acks, then one burst of frames, and held the loop (everyone's
    live lines, shells, API calls) for 100-200 ms at a time.
    """
    for start in range(0, len(batches), SETTLE_PER_TURN):
        if start:
            await asyncio.sleep(0)  # let the loop read sockets between chunks
        for batch in batches[start:start + SETTLE_PER_TURN]:
            try:
                batch.done(failure or batch.error)
            except Exception:  # one owner's bug must not keep the others from hearing
                log.exception("log batch callback failed")


def _nothing(conn: WriteConn) -> None:
    """A no-op write: asks the writer for a commit (see Writer.add_metrics)."""
