"""PostgreSQL keeps logs and metrics in day partitions (db.HISTORY_PG): the days ahead are made
before their rows come, rows of a day not made yet wait in the DEFAULT partition and move into
their day when it is made, and retention drops whole expired days instead of deleting rows. A
line is still stored once per (node, seq). On a real PostgreSQL (tests/support/postgres.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from central import store
from central.dbconn import ReadDB
from central.store import DAY_S
from central.writer import Writer
from tests.support.database import opened_store
from tests.support.postgres import Cluster

NOW = 1_900_000_000.0  # far from the real clock: only the days these tests make exist
TODAY = int(NOW // DAY_S) * DAY_S


@pytest.fixture
async def pg(pg_cluster: Cluster) -> AsyncIterator[tuple[Writer, ReadDB]]:
    async with opened_store(pg_cluster.fresh_database()) as store:
        yield store


async def _rows(reads: ReadDB, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    async with reads.execute(sql, params) as cur:
        return list(await cur.fetchall())


def _lines(first: int, count: int, ts: float) -> list[dict[str, Any]]:
    return [{"seq": seq, "ts": ts, "source": "demo", "level": "INFO", "msg": f"line {seq}"}
            for seq in range(first, first + count)]


async def _where(reads: ReadDB) -> dict[str, int]:
    """Log rows per partition."""
    rows = await _rows(reads, "SELECT CAST(tableoid AS regclass)::text, count(*) FROM logs GROUP BY 1")
    return {name: count for name, count in rows}


async def test_the_days_ahead_are_made_once(pg: tuple[Writer, ReadDB]) -> None:
    writer, reads = pg
    assert await writer.submit(store.prepare_partitions(NOW)) == 3 * (PARTITION_DAYS := 4)
    assert await writer.submit(store.prepare_partitions(NOW)) == 0
    names = await _rows(reads, "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                               " WHERE i.inhparent = CAST('logs' AS regclass) ORDER BY 1")
    assert len(names) == PARTITION_DAYS + 1  # and the DEFAULT partition
    await writer.add_logs("node-a", _lines(1, 3, NOW))
    assert await _where(reads) == {"logs_p20300317": 3}


async def test_rows_waiting_in_the_default_partition_move_into_their_new_day(pg: tuple[Writer, ReadDB]) -> None:
    writer, reads = pg
    await writer.add_logs("node-a", _lines(1, 5, NOW + 10))
    writer.add_metrics("node-a", NOW + 10, {"cpu": 1.5})
    await writer.submit(store.insert_metrics("node-a", NOW + 11, {"cpu": 2.5}))
    assert await _where(reads) == {"logs_default": 5}
    await writer.submit(store.prepare_partitions(NOW))
    assert await _where(reads) == {"logs_p20300317": 5}
    assert (await _rows(reads, "SELECT count(*) FROM metrics_raw_default"))[0][0] == 0
    assert (await _rows(reads, "SELECT min, avg, max, count FROM metrics_1m"))[0] == (1.5, 2.0, 2.5, 2)
    # A replay of lines already stored (the daemon resends them with their ts): stored once.
    await writer.add_logs("node-a", _lines(3, 5, NOW + 10))
    assert [r[0] for r in await _rows(reads, "SELECT seq FROM logs ORDER BY seq")] == [1, 2, 3, 4, 5, 6, 7]


async def test_retention_drops_whole_expired_days(pg: tuple[Writer, ReadDB]) -> None:
    writer, reads = pg
    old = NOW - 40 * DAY_S
    await writer.submit(store.prepare_partitions(old))  # the days around `old` were made back then
    await writer.add_logs("node-a", _lines(1, 30, old))
    await writer.submit(store.insert_metrics("node-a", old, {"cpu": 1.0}))
    await writer.submit(store.prepare_partitions(NOW))
    await writer.add_logs("node-a", _lines(31, 4, NOW - 60))
    await writer.submit(store.insert_metrics("node-a", NOW - 60, {"cpu": 2.0}))
    trimmed = await writer.submit(store.apply_retention(
        NOW, raw_metrics_s=DAY_S, metrics_1m_s=30 * DAY_S, logs_s=30 * DAY_S, logs_max_rows=1000,
        events_s=30 * DAY_S, audit_s=30 * DAY_S))
    assert trimmed.done
    assert (trimmed["logs"], trimmed["metrics_raw"], trimmed["metrics_1m"]) == (30, 1, 1)
    assert [r[0] for r in await _rows(reads, "SELECT seq FROM logs ORDER BY seq")] == [31, 32, 33, 34]
    left = {r[0] for r in await _rows(reads, "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                                             " WHERE i.inhparent = CAST('logs' AS regclass)")}
    assert not any(name.startswith("logs_p2030020") for name in left)  # the old days are gone
    assert "logs_p20300317" in left and "logs_default" in left


async def test_a_day_partly_past_its_window_is_kept_until_all_of_it_is(pg: tuple[Writer, ReadDB]) -> None:
    writer, reads = pg
    await writer.submit(store.prepare_partitions(NOW))
    await writer.add_logs("node-a", _lines(1, 2, TODAY + 5))
    trimmed = await writer.submit(store.apply_retention(
        TODAY + DAY_S / 2 + 30 * DAY_S - DAY_S / 4, raw_metrics_s=DAY_S, metrics_1m_s=30 * DAY_S,
        logs_s=30 * DAY_S, logs_max_rows=1000, events_s=30 * DAY_S, audit_s=30 * DAY_S))
    assert trimmed.get("logs", 0) == 0
    assert (await _rows(reads, "SELECT count(*) FROM logs"))[0][0] == 2
