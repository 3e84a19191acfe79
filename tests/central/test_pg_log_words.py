"""PostgreSQL's log text index since schema step 14 (docs/performance.md): the cheaper word split
gives the words and positions of step 1's, each day partition's index keeps new lines' words in a
larger pending list, searches find lines still there, and the server's `log-words` job merges it
into the index once a second, off the writer's path. Real PostgreSQL (a throw-away cluster), the
real writer and reads, a real server subprocess with a node over mutual TLS."""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

from central import db, store
from central.queries import Queries
from tests.support.database import opened_store
from tests.support.fake_node import FakeNode
from tests.support.postgres import Cluster
from tests.support.server import CentralServer
from tests.support.wait import async_wait_for

# The messages the two word splits are compared on: log-like text, every kind of ASCII
# punctuation and control character, and text mixing scripts, non-ASCII punctuation and spaces.
FIXED = [
    "GET host.example.com/var/log/x.log took 12.3 ms (id=57452, value=424.55)",
    "  leading and trailing  \t\r\n", "a--b__c..d//e\\\\f::g", "'quoted' \"double\" `back` <tag> &amp;",
    "valve\u2014open 3\u00b7retries \u00e9tat \u00abcritique\u00bb \u3000gripper\u3000stalled",
    "no\u00a0break a\u2009thin \x01ctl\x7fdel", "", "   ", "!!!", "x" * 3000 + " after a long word",
    "\u0645\u0631\u062d\u0628\u0627\u060c \u0639\u0627\u0644\u0645 \u0661\u0662\u0663", "\u6e29\u5ea6\uff1a\u9ad8\u3002\u7535\u538b\uff0c\u4f4e",
    "emoji \U0001f525fire\U0001f525 and \u00bd half", "caf\u00e9 CAF\u00c9 Stra\u00dfe",
]
# Characters drawn for the random messages: letters, digits, spaces and punctuation of several scripts.
ALPHABET = ("abcXYZ019 \t\n.,;:=/-_()[]{}'\"!?@#$%^&*+<>|~`\\"
            "\u00e9\u00df\u00e7\u00a0\u00b7\u00ab\u00bb\u2014\u2013\u2009\u3000\u3001\u3002\u6e29\u5ea6"
            "\u0645\u0631\u060c\u0661\u00bd\u00b2\u2160\U0001f525")


def _messages() -> list[str]:
    rng = random.Random(20261206)
    return FIXED + ["".join(rng.choices(ALPHABET, k=rng.randint(1, 80))) for _ in range(3000)]


async def test_step_14_splits_every_message_into_the_words_and_positions_of_step_1(pg_cluster: Cluster) -> None:
    conn = await asyncpg.connect(pg_cluster.url())
    try:
        before = db._PG_LOG_WORDS_V1.format(msg="m")
        after = db.PG_LOG_WORDS.format(msg="m")
        assert before != after
        differ = await conn.fetch(
            f"SELECT m, CAST({before} AS TEXT) AS v1, CAST({after} AS TEXT) AS v12 FROM unnest(CAST($1 AS TEXT[])) m"
            f" WHERE {before} IS DISTINCT FROM {after}", _messages())
    finally:
        await conn.close()
    assert [dict(row) for row in differ] == []


async def _pending_lines(url: str) -> int:
    """Lines whose words wait in the pending lists of logs_search (every partition's), by pgstattuple."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
        return int(await conn.fetchval(
            "SELECT coalesce(sum((pgstatginindex(i.inhrelid)).pending_tuples), 0) FROM pg_inherits i"
            " WHERE i.inhparent = CAST('logs_search' AS regclass)"))
    finally:
        await conn.close()


def _lines(first: int, count: int, msg: str) -> list[dict[str, Any]]:
    return [{"seq": seq, "ts": time.time(), "source": "demo", "level": "INFO", "unit": "", "demo": "cam",
             "msg": msg.format(seq=seq)} for seq in range(first, first + count)]


async def test_lines_waiting_in_the_pending_list_are_found_and_merging_keeps_them_found(pg_cluster: Cluster) -> None:
    url = pg_cluster.fresh_database()
    async with opened_store(url) as (writer, reads):
        await writer.add_logs("node-a", _lines(1, 200, "frame {seq} from host.example.com"))
        await writer.add_logs("node-b", _lines(1, 3, "sensor_timeout on arm {seq}"))
        # Far below the 16 MB limit: the writer has merged nothing, the words wait in the pending list.
        assert await _pending_lines(url) == 203
        queries = Queries(reads)

        async def found(text: str) -> list[tuple[str, int]]:
            return sorted((line["node"], line["seq"]) for line in (await queries.logs(text=text, limit=500)).items)

        expected = {"example": [("node-a", seq) for seq in range(1, 201)],
                    "sensor_timeout arm": [("node-b", 1), ("node-b", 2), ("node-b", 3)],
                    "17 frame": [("node-a", 17)], "timeout sensor": [("node-b", 1), ("node-b", 2), ("node-b", 3)]}
        assert {text: await found(text) for text in expected} == expected
        assert await db.merge_log_words(reads) > 0
        assert await _pending_lines(url) == 0
        assert {text: await found(text) for text in expected} == expected
        assert await db.merge_log_words(reads) == 0  # nothing left


async def test_every_day_partition_keeps_the_larger_pending_list(pg_cluster: Cluster) -> None:
    url = pg_cluster.fresh_database()
    async with opened_store(url) as (writer, _):
        await writer.submit(store.prepare_partitions(time.time()))  # as the server does at start
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch(
                "SELECT t.relname AS part, x.reloptions, pg_get_indexdef(x.oid) AS def FROM pg_inherits i"
                " JOIN pg_class x ON x.oid = i.inhrelid JOIN pg_index p ON p.indexrelid = x.oid"
                " JOIN pg_class t ON t.oid = p.indrelid WHERE i.inhparent = CAST('logs_search' AS regclass)")
        finally:
            await conn.close()
    parts = {row["part"] for row in rows}
    assert "logs_default" in parts and len(parts) >= 5  # yesterday, today, the days ahead, the DEFAULT one
    for row in rows:
        assert row["reloptions"] == ["gin_pending_list_limit=16384"], dict(row)
        assert "[^[:alnum:][:space:]]+" in row["def"], dict(row)


async def test_a_database_from_before_the_step_moves_to_the_new_index_and_finds_its_lines(pg_cluster: Cluster) -> None:
    step = next(i for i, one in enumerate(db.MIGRATIONS) if "gin_pending_list_limit" in one.postgresql)
    url = pg_cluster.create_database()
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            for before in db.MIGRATIONS[:step]:
                for statement in db._statements(before.render("postgresql")):
                    await conn.execute(statement)
            await conn.execute("CREATE TABLE schema_version (version BIGINT NOT NULL)")
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", step)
            await conn.execute("INSERT INTO logs (node_id, seq, ts, source, level, msg) SELECT 'node-a', g, 1e9 + g,"
                               " 'demo', 20, 'valve ' || g || ' at host.example.com' FROM generate_series(1, 500) g")
    finally:
        await conn.close()
    assert await db.migrate_postgresql(url) == db.SCHEMA_VERSION
    async with opened_store(url) as (_, reads):
        page = await Queries(reads).logs(text="42 example")
        assert [line["seq"] for line in page.items] == [42]


async def test_the_server_merges_the_pending_words_off_the_writers_path(tmp_path: Path, pg_cluster: Cluster) -> None:
    url = pg_cluster.fresh_database()
    with CentralServer(tmp_path / "central", database=url) as server:
        async with FakeNode(server.enroll("pi-words")) as node:
            await node.connect()
            await node.hello()
            for _ in range(5):
                await node.send_logs([node.line(f"line {i} of a batch") for i in range(40)])
        assert server.query("SELECT count(*) FROM logs") == [(200,)]
        # The writer merges nothing below the limit: what empties the pending list is the server's job.
        await async_wait_for(_merged(url), 30, "the log-words job to merge the pending list")
        assert "runs log-words" in server.log()
        status, found = server.api("GET", "/api/v1/logs?q=batch%2017")
        assert status == 200 and [line["msg"] for line in found["lines"]] == ["line 17 of a batch"] * 5


def _merged(url: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await _pending_lines(url) == 0

    return check
