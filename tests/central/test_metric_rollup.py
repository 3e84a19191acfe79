"""SQLite's one-minute aggregates rolled up from the raw samples (store.MetricRollup): every minute
in metrics_1m is exactly the min/avg/max/count of its raw samples, each sample counted once, also
when a rollup pass is cut short (the process gone between two commits, or killed -9 by the kernel
mid-commit), and readers see the same minutes before, during and after a pass."""

from __future__ import annotations

import asyncio
import math
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from central import db, store
from central.dbconn import WriterConn
from central.queries import Queries
from central.store import MetricRollup
from central.writer import Writer
from tests.support.procs import kill_process
from tests.support.server import REPO
from tests.support.wait import wait_for

Minute = tuple[float, float, float, int]  # min, avg, max, count
NAMES = ("cpu", "temp")


def raw_minutes(path: Path) -> dict[tuple[str, str, int], Minute]:
    """What metrics_1m must hold: the raw samples' minutes, computed here in Python."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT node_id, name, ts, value FROM metrics_raw").fetchall()
    finally:
        conn.close()
    values: dict[tuple[str, str, int], list[float]] = {}
    for node, name, ts, value in rows:
        values.setdefault((node, name, math.floor(ts / 60) * 60), []).append(value)
    return {key: (min(v), sum(v) / len(v), max(v), len(v)) for key, v in values.items()}


def stored_minutes(path: Path) -> dict[tuple[str, str, int], Minute]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT node_id, name, bucket, min, avg, max, count FROM metrics_1m").fetchall()
    finally:
        conn.close()
    return {(node, name, bucket): (low, avg, high, count) for node, name, bucket, low, avg, high, count in rows}


def assert_same_minutes(got: dict[Any, Minute], want: dict[Any, Minute]) -> None:
    assert got.keys() == want.keys()
    for key, (low, avg, high, count) in want.items():
        assert (got[key][0], got[key][2], got[key][3]) == (low, high, count), key  # exact: nothing counted twice
        assert got[key][1] == pytest.approx(avg, rel=1e-12), key


def rollup_state(path: Path) -> tuple[int, int, str | None]:
    conn = sqlite3.connect(path)
    try:
        done, upto, node = conn.execute("SELECT done, upto, node FROM metrics_rollup").fetchone()
    finally:
        conn.close()
    return done, upto, node


def samples(rnd: random.Random, count: int, start: float) -> list[tuple[str, str, float, float]]:
    """Samples of 12 nodes over three minutes, some in the same minute as others of their commit,
    and a few of a node whose clock is far off (1969: a negative ts)."""
    out = []
    for _ in range(count):
        node = f"node-{rnd.randrange(12):02d}"
        ts = -30.5 - rnd.randrange(100) if rnd.random() < 0.05 else start + round(rnd.uniform(0, 180), 3)
        out.append((node, rnd.choice(NAMES), ts, round(rnd.uniform(-50, 150), 2)))
    return out


def commit(conn: WriterConn, rollup: MetricRollup, rows: list[tuple[str, str, float, float]] | None = None,
           *, everything: bool = False) -> None:
    """One commit as the writer makes it: the samples, then the rollup's part."""
    conn.begin()
    if rows:
        store.insert_metric_rows(rows)(conn)
    rollup.before_commit(conn, everything=everything)
    conn.commit()
    rollup.committed()


def started(path: Path, rollup: MetricRollup) -> WriterConn:
    conn = db.connect_writer(path)
    conn.begin()
    rollup.start(conn)
    conn.commit()
    rollup.committed()
    return conn


async def minutes_read(path: Path, node: str) -> dict[tuple[str, str, int], tuple[float, float, float]]:
    """What GET /api/v1/nodes/NODE/metrics?step=60 reads, keyed as metrics_1m."""
    reads = await db.open_reads(path)
    try:
        series = await Queries(reads).metrics(node, None, -3600, 4_000_000_000, 60)
    finally:
        await reads.close()
    return {(node, name, int(b)): (low, avg, high) for name, points in series.items() for b, low, avg, high in points}


async def assert_reads_match_raw(path: Path) -> None:
    want = raw_minutes(path)
    for node in {key[0] for key in want}:
        got = await minutes_read(path, node)
        mine = {key: minute for key, minute in want.items() if key[0] == node}
        assert got.keys() == mine.keys(), node
        for key, (low, avg, high, _) in mine.items():
            assert (got[key][0], got[key][2]) == (low, high) and got[key][1] == pytest.approx(avg, rel=1e-12), key


async def test_a_pass_cut_short_goes_on_where_it_stopped_and_rolls_each_sample_once(migrated_db: Path) -> None:
    path, rnd = migrated_db, random.Random(18)
    start = 1_700_000_000.0
    rollup = MetricRollup(every_s=0, slice_rows=5)
    conn = started(path, rollup)
    for _ in range(3):
        commit(conn, rollup, samples(rnd, 40, start))
    done, upto, node = rollup_state(path)
    assert done < upto and node is not None, "no pass under way"
    assert stored_minutes(path) != raw_minutes(path)  # part rolled, part not
    await assert_reads_match_raw(path)  # readers add the rest
    conn.close()  # the process is gone: its accumulator with it

    # `dvic-central migrate` rolls up what is left in one statement (on a copy here).
    copy = path.with_name("copy.sqlite3")
    shutil.copy(path, copy)
    conn = db.connect_writer(copy)
    conn.begin()
    store.roll_up_metrics(conn)
    conn.commit()
    conn.close()
    assert_same_minutes(stored_minutes(copy), raw_minutes(copy))

    # Samples another writer left (a server killed with samples committed and not rolled).
    other = db.connect_writer(path)
    other.begin()
    store.insert_metric_rows(samples(rnd, 30, start))(other)
    other.commit()
    other.close()
    await assert_reads_match_raw(path)

    rollup = MetricRollup(every_s=0, slice_rows=5)
    conn = started(path, rollup)
    assert rollup_state(path) == (done, upto, node)  # the pass goes on where it stopped
    for _ in range(4):
        commit(conn, rollup, samples(rnd, 40, start))
        await assert_reads_match_raw(path)
    commit(conn, rollup, everything=True)  # (what the writer does when it closes)
    conn.close()
    assert rollup.passes > 1
    done, upto, node = rollup_state(path)
    assert done == upto == sqlite3.connect(path).execute("SELECT max(rowid) FROM metrics_raw").fetchone()[0]
    assert node is None
    assert_same_minutes(stored_minutes(path), raw_minutes(path))
    await assert_reads_match_raw(path)


async def test_late_samples_merge_into_a_minute_already_rolled(migrated_db: Path) -> None:
    path = migrated_db
    minute = 1_700_000_040
    rollup = MetricRollup(every_s=0)
    conn = started(path, rollup)
    commit(conn, rollup, [("a", "cpu", minute + 1, 10.0), ("a", "cpu", minute + 2, 30.0)])
    assert stored_minutes(path) == {("a", "cpu", minute): (10.0, 20.0, 30.0, 2)}
    commit(conn, rollup, [("a", "cpu", minute + 59.5, 50.0)])  # late: its minute is in metrics_1m already
    conn.close()
    assert stored_minutes(path) == {("a", "cpu", minute): (10.0, 30.0, 50.0, 3)}


def test_retention_keeps_the_samples_not_rolled_up_yet(migrated_db: Path) -> None:
    """A sample whose minute is not in metrics_1m yet stays, however old it is (a node with its clock
    a day behind): deleted now, a restart would rebuild the accumulator without it."""
    path, now = migrated_db, 1_800_000_000.0
    rollup = MetricRollup(every_s=math.inf)  # no pass until told
    conn = started(path, rollup)
    commit(conn, rollup, [("a", "cpu", now - 3 * 86_400, 1.0), ("a", "cpu", now, 2.0)])
    conn.begin()
    trimmed = store.apply_retention(now, 86_400, 30 * 86_400, 30 * 86_400, 1000, 86_400, 86_400)(conn)
    conn.commit()
    assert trimmed["metrics_raw"] == 0
    rollup.every_s = 0
    commit(conn, rollup, [("a", "cpu", now + 1, 3.0)])  # rolls both up
    conn.begin()
    trimmed = store.apply_retention(now, 86_400, 30 * 86_400, 30 * 86_400, 1000, 86_400, 86_400)(conn)
    conn.commit()
    conn.close()
    assert trimmed["metrics_raw"] == 1
    assert stored_minutes(path)[("a", "cpu", int(now - 3 * 86_400) // 60 * 60)] == (1.0, 1.0, 1.0, 1)


# A real writer (central.writer.Writer) feeding samples of 40 nodes and rolling at every commit, a
# few rows per slice: a pass spans many commits. Writes "commit N" to its progress file per commit.
_WRITER_PROCESS = """
import asyncio, random, sys
from pathlib import Path
from central.store import MetricRollup
from central.writer import Writer
from central.writer import Writer

async def main(path, progress, seed):
    writer = Writer(Path(path), commit_interval=0.002, rollup=MetricRollup(every_s=0, slice_rows=7))
    await writer.start()
    rnd, n = random.Random(int(seed)), 0
    with open(progress, "a") as out:
        while True:
            for node in range(40):
                ts = 1_700_000_000 + n * 0.7 + rnd.random()
                writer.add_metrics(f"node-{node:02d}", ts, {"cpu": rnd.uniform(0, 100), "temp": rnd.uniform(30, 90)})
            await writer.barrier()
            n += 1
            out.write(f"commit {n}\\n")
            out.flush()

asyncio.run(main(*sys.argv[1:]))
"""


@pytest.fixture
def writer_process(migrated_db: Path) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def run(round_no: int) -> tuple[subprocess.Popen[bytes], Path]:
        progress = migrated_db.with_name(f"progress-{round_no}")
        proc = subprocess.Popen([sys.executable, "-c", _WRITER_PROCESS, str(migrated_db), str(progress), str(round_no)],
                                cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL)
        procs.append(proc)
        return proc, progress

    yield run
    for proc in procs:
        kill_process(proc)


def commits(progress: Path, proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is not None:
        raise AssertionError(f"the writer process exited with {proc.returncode}")
    return progress.read_text().count("commit") if progress.exists() else 0


def test_a_writer_killed_mid_pass_again_and_again_counts_every_sample_once(migrated_db: Path,
                                                                         writer_process: Any) -> None:
    path, cut_short = migrated_db, 0
    for round_no in range(6):
        proc, progress = writer_process(round_no)
        wanted = 8 + 5 * round_no
        wait_for(lambda p=proc, f=progress, n=wanted: commits(f, p) >= n, 60, f"{wanted} commits of the writer")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        done, upto, _ = rollup_state(path)
        cut_short += upto > done
    assert cut_short, "no kill landed while a pass was under way"
    asyncio.run(_start_and_close(path))  # the writer's start reloads the rest, its clean stop rolls it up
    assert_same_minutes(stored_minutes(path), raw_minutes(path))


async def _start_and_close(path: Path) -> None:
    writer = Writer(path)
    await writer.start()
    await writer.close()
