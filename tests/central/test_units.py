"""Plain-function parts of the server: message validation (shared vectors), writer, bus, retention, PKI."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import pytest

from central import db, store
from central.bus import Bus
from central.messages import ProtocolError, metric_series, parse_node_message
from central.pki import CertificateAuthority, pem_fingerprint
from central.queries import Queries, QueryError, encode_cursor, log_query
from central.store import MetricRollup
from central.writer import SETTLE_PER_TURN, StorageError, Writer

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "node_messages.json").read_text())


@pytest.mark.parametrize("message", VECTORS["valid"], ids=lambda m: m["type"])
def test_valid_vectors_are_accepted(message):
    parsed = parse_node_message(json.dumps(message))
    assert parsed["type"] == message["type"]


@pytest.mark.parametrize("case", VECTORS["invalid"], ids=lambda c: c["frame"][:30])
def test_invalid_vectors_are_refused_with_their_close_code(case):
    with pytest.raises(ProtocolError) as info:
        parse_node_message(case["frame"])
    assert info.value.close_code == case["close"]
    assert info.value.message


def test_metric_series_derivation():
    sample = parse_node_message(json.dumps(VECTORS["valid"][1]))
    assert metric_series(sample) == {
        "cpu": 12.5, "load1": 0.5, "mem": 50.0, "swap": 0.0, "disk": 25.0, "temp": 48.3,
        "uptime": 12345.0, "procs": 143.0, "net_rx": 123456.0, "net_tx": 654321.0,
    }



async def test_writer_groups_commits_and_isolates_a_failing_write(migrated_db: Path):
    path = migrated_db
    writer = Writer(path, commit_interval=0.05)
    await writer.start()
    try:
        def bad(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO events (ts, node_id, kind, message) VALUES (1, 'n', 'k', 'ok')")
            raise ValueError("refused on purpose")

        ops = [writer.submit(store.insert_event(time.time(), "n", "k", f"e{i}", {})) for i in range(200)]
        results = await asyncio.gather(*ops, writer.submit(bad), return_exceptions=True)
        assert isinstance(results[-1], ValueError)
        assert all(isinstance(r, int) for r in results[:-1])
        assert writer.commits < 20  # 201 writes, grouped
    finally:
        await writer.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 200  # the bad one left nothing


async def test_writer_reports_a_full_disk_and_keeps_running(migrated_db: Path):
    path = migrated_db
    writer = Writer(path, commit_interval=0.0)
    await writer.start()
    try:
        line = {"seq": 1, "ts": 1.0, "source": "demo", "level": "INFO", "msg": "kept"}
        assert await writer.submit(store.insert_logs("n", [line])) == 1
        pages = await writer.submit(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
        # A real SQLITE_FULL: cap the database at its current size.
        await writer.submit(lambda c: c.execute(f"PRAGMA max_page_count={pages}"))
        big = [{**line, "seq": i, "msg": "x" * 4000} for i in range(2, 400)]
        with pytest.raises(StorageError, match="full"):
            await writer.submit(store.insert_logs("n", big))
        with pytest.raises(StorageError, match="full"):
            await writer.add_logs("n", big)  # the merged path of node batches says the same
        await writer.submit(lambda c: c.execute("PRAGMA max_page_count=1073741823"))
        assert await writer.submit(store.insert_logs("n", big)) == len(big)
    finally:
        await writer.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM logs").fetchone()[0] == 399


def _line(seq: int, msg: str) -> dict:
    return {"seq": seq, "ts": 1000.0 + seq, "source": "demo", "demo": "cam", "level": "WARNING", "msg": msg}


async def test_writer_merges_log_batches_exactly_once_and_keeps_any_text_whole(migrated_db: Path):
    path = migrated_db
    writer = Writer(path, commit_interval=0.05)
    await writer.start()
    texts = ["plain", "\x00starts with NUL", "mid\x00dle", "ünïcödé 日本語 🚀", 'quote " and \\ backslash', "line\nbreak"]
    try:
        batches = [writer.add_logs(f"node-{n}", [_line(i, f"{t} #{n}") for i, t in enumerate(texts, 1)])
                   for n in range(20)]
        await asyncio.gather(*batches)
        assert writer.commits <= 3  # twenty node batches, one or two commits
        # A replay (a daemon that missed the ack) is stored once; a new line in the same batch is kept.
        await writer.add_logs("node-0", [_line(1, "plain #0"), _line(7, "new")])
    finally:
        await writer.close()
    conn = sqlite3.connect(path)
    stored = dict(conn.execute("SELECT seq, msg FROM logs WHERE node_id = 'node-3'").fetchall())
    assert stored == {i: f"{t} #3" for i, t in enumerate(texts, 1)}
    assert conn.execute("SELECT count(*) FROM logs").fetchone()[0] == 20 * len(texts) + 1
    assert conn.execute("SELECT level, demo, ts FROM logs WHERE node_id = 'node-0' AND seq = 7").fetchone() == (30, "cam", 1007.0)


async def test_metric_samples_of_one_commit_add_up_in_their_minute(migrated_db: Path):
    """All samples of a commit go in as one statement per table: samples of the same node, series
    and minute in that one statement still fold into one min/avg/max row, as do later ones."""
    path = migrated_db
    writer = Writer(path, commit_interval=0.05)
    await writer.start()
    minute = 60 * 29_000_000
    try:
        for ts, cpu in ((minute + 1, 10.0), (minute + 2, 30.0), (minute + 61, 5.0)):
            writer.add_metrics("a", ts, {"cpu": cpu, "temp": 40.0 + cpu})
        writer.add_metrics("b", minute + 3, {"cpu": 99.5})
        await writer.submit(lambda conn: None)  # after the samples' commit
        writer.add_metrics("a", minute + 4, {"cpu": 20.0})
        await writer.submit(lambda conn: None)
    finally:
        await writer.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM metrics_raw").fetchone()[0] == 8
    assert conn.execute("SELECT ts, value FROM metrics_raw WHERE node_id = 'b'").fetchall() == [(minute + 3.0, 99.5)]
    rows = conn.execute("SELECT node_id, name, bucket, min, avg, max, count FROM metrics_1m ORDER BY 1, 2, 3").fetchall()
    assert rows == [
        ("a", "cpu", minute, 10.0, 20.0, 30.0, 3), ("a", "cpu", minute + 60, 5.0, 5.0, 5.0, 1),
        ("a", "temp", minute, 50.0, 60.0, 70.0, 2), ("a", "temp", minute + 60, 45.0, 45.0, 45.0, 1),
        ("b", "cpu", minute, 99.5, 99.5, 99.5, 1),
    ]


async def test_a_big_commit_settles_every_batch_in_order_across_loop_turns(migrated_db: Path):
    """More node batches than are settled per loop turn: every one is stored and told so, the loop
    keeps turning while they are (other tasks run between chunks), and a write awaited in the same
    commit is answered before them."""
    path = migrated_db
    writer = Writer(path, commit_interval=0.05)
    await writer.start()
    told: list[int] = []
    told_at_turn: list[int] = []
    turns = 0

    async def count_turns() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    counter = asyncio.create_task(count_turns())
    try:
        committed = asyncio.get_running_loop().create_future()
        nodes = 3 * SETTLE_PER_TURN + 5
        for n in range(nodes):
            def done(error: Exception | None, n: int = n) -> None:
                assert error is None
                told.append(n)
                told_at_turn.append(turns)
                if len(told) == nodes:
                    committed.set_result(None)
            await writer.queue_logs(f"node-{n}", [_line(1, f"line of {n}")], done)

        async def told_once_written() -> int:
            await writer.submit(lambda conn: None)  # in the same commit
            return len(told)

        write = asyncio.create_task(told_once_written())
        await asyncio.wait_for(committed, 10)
        assert len(set(told_at_turn)) == 4  # four chunks, each in a turn of its own
        assert await write < nodes  # an awaited write does not wait for the node batches
    finally:
        counter.cancel()
        await writer.close()
    assert told == list(range(nodes))
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM logs").fetchone()[0] == nodes


def test_rows_are_sent_to_sqlite_as_the_json_of_one_array():
    rows = [(f"n{i % 7}", i, 1.5 * i, "demo", "", "cam", 20, f"m\\u {i} ü \\") for i in range(2 * store.ROWS_PER_DUMP + 3)]
    assert json.loads(store._json_array(rows)) == [list(r) for r in rows]
    assert store._json_array(rows[:3]) == store._dumps(rows[:3])


async def test_a_log_batch_that_cannot_be_stored_fails_alone(migrated_db: Path):
    path = migrated_db
    writer = Writer(path, commit_interval=0.05)
    await writer.start()
    try:
        bad = {**_line(1, "x"), "msg": b"bytes are not text"}  # past validation only by a bug
        results = await asyncio.gather(
            writer.add_logs("good-1", [_line(1, "kept")]),
            writer.add_logs("bad", [bad]),
            writer.add_logs("good-2", [_line(1, "kept too")]),
            return_exceptions=True,
        )
    finally:
        await writer.close()
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], TypeError)
    conn = sqlite3.connect(path)
    assert sorted(r[0] for r in conn.execute("SELECT node_id FROM logs")) == ["good-1", "good-2"]


async def _until(condition, what: str, timeout: float = 10.0) -> None:
    """Waits for `condition()` on the event loop, with a deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def test_urgent_writes_do_not_wait_for_the_commit_interval(migrated_db: Path):
    """An hour between commits: a plain write is held back for it, an urgent one commits at once and
    takes the held-back write with it (submission order kept). 30 s deadlines only guard a hang."""
    path = migrated_db
    writer = Writer(path, commit_interval=3600)
    await writer.start()

    def event(msg: str):
        return store.insert_event(time.time(), "n", "k", msg, {})

    try:
        first = await asyncio.wait_for(writer.submit(event("first"), urgent=True), 30)
        assert writer.commits == 1
        # A plain write after a commit waits for the interval...
        held = asyncio.ensure_future(writer.submit(event("held")))
        await _until(lambda: writer.holding_back, "the writer to hold the plain write back")
        assert not held.done() and writer.commits == 1
        # ...until an urgent one comes: one commit for both, in order.
        urgent = await asyncio.wait_for(writer.submit(event("urgent"), urgent=True), 30)
        assert held.done() and held.result() < urgent and first < held.result()
        assert writer.commits == 2 and not writer.holding_back
        # An urgent write queued behind a plain one: no hold-back at all (submit_later too).
        writer.submit_later(event("later"), urgent=True)
        await asyncio.wait_for(asyncio.gather(writer.submit(event("plain")), writer.submit(event("u"), urgent=True)), 30)
        assert writer.commits == 3
        # Node log batches keep the spacing; closing the writer ends the wait and stores them.
        logs = asyncio.ensure_future(writer.add_logs("node", [_line(1, "batched")]))
        await _until(lambda: writer.holding_back, "the writer to hold the log batch back")
        assert not logs.done()
    finally:
        await asyncio.wait_for(writer.close(), 30)
    assert logs.done() and logs.exception() is None
    conn = sqlite3.connect(path)
    assert [r[0] for r in conn.execute("SELECT message FROM events ORDER BY id")] == [
        "first", "held", "urgent", "later", "plain", "u"]
    assert conn.execute("SELECT msg FROM logs").fetchall() == [("batched",)]


async def test_bus_cuts_off_a_slow_subscriber_without_blocking_others():
    bus = Bus(client_queue_limit=10)
    slow, fast = bus.subscribe(), bus.subscribe()
    for i in range(10):
        bus.publish({"type": "node", "i": i})
        await fast.queue.get()
    assert not slow.too_slow.is_set()
    bus.publish({"type": "node", "i": 10})
    assert slow.too_slow.is_set() and not fast.too_slow.is_set()
    assert fast.queue.qsize() == 1


async def test_retention_trims_old_rows_and_caps_logs(migrated_db: Path):
    path = migrated_db
    # Samples rolled up into their minutes at every commit: retention deletes rolled samples only.
    writer = Writer(path, rollup=MetricRollup(every_s=0))
    await writer.start()
    now = time.time()
    try:
        lines = [{"seq": i, "ts": now - (100_000 if i <= 5 else 0), "source": "demo", "level": "INFO",
                  "msg": f"m{i}"} for i in range(1, 21)]
        await writer.submit(store.insert_logs("n", lines))
        await writer.submit(store.insert_metrics("n", now - 200_000, {"cpu": 1.0}))
        await writer.submit(store.insert_metrics("n", now, {"cpu": 2.0}))
        deleted = await writer.submit(store.apply_retention(now, 86_400, 30 * 86_400, 86_400, 10, 86_400, 86_400))
    finally:
        await writer.close()
    conn = sqlite3.connect(path)
    seqs = [r[0] for r in conn.execute("SELECT seq FROM logs ORDER BY seq")]
    assert seqs == list(range(11, 21))  # 5 too old, then the oldest beyond 10 rows
    assert deleted["metrics_raw"] == 1
    # Full-text index follows deletions.
    assert conn.execute("SELECT count(*) FROM logs_fts WHERE logs_fts MATCH 'm3'").fetchone()[0] == 0


async def test_migrations_refuse_a_newer_database(migrated_db: Path):
    path = migrated_db
    sqlite3.connect(path).execute(f"PRAGMA user_version={db.SCHEMA_VERSION + 1}")
    conn = await db.connect(path)
    try:
        with pytest.raises(RuntimeError, match="newer"):
            await db.migrate(conn)
    finally:
        await conn.close()


def test_ca_is_created_once_and_signs_node_and_server_certificates(tmp_path):
    ca = CertificateAuthority(tmp_path)
    again = CertificateAuthority(tmp_path)
    assert ca.fingerprint == again.fingerprint
    assert (tmp_path / "ca.key").stat().st_mode & 0o777 == 0o600
    issued = ca.issue_node("7b0c2f1e-0000-4000-8000-000000000000")
    assert pem_fingerprint(issued.cert_pem) == issued.fingerprint
    cert_path, key_path = ca.ensure_server_cert(["127.0.0.1", "demo.lab"])
    assert key_path.stat().st_mode & 0o777 == 0o600
    before = cert_path.read_bytes()
    assert ca.ensure_server_cert(["demo.lab"])[0].read_bytes() == before  # still covers it: not reissued
    ca.ensure_server_cert(["other.lab"])
    assert cert_path.read_bytes() != before


async def test_fts_index_follows_batches_and_ignores_replayed_lines(migrated_db: Path):
    path = migrated_db
    writer = Writer(path, commit_interval=0.0)
    await writer.start()
    try:
        def line(seq: int, msg: str) -> dict:
            return {"seq": seq, "ts": 1.0, "source": "demo", "level": "INFO", "msg": msg}

        assert await writer.submit(store.insert_logs("n", [line(1, "alpha one"), line(2, "beta two")])) == 2
        replay = [line(2, "beta two"), line(3, "gamma three")]
        assert await writer.submit(store.insert_logs("n", replay)) == 1
        assert await writer.submit(store.insert_logs("n", replay)) == 0
    finally:
        await writer.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM logs_fts").fetchone()[0] == 3
    found = conn.execute("SELECT l.seq FROM logs_fts f JOIN logs l ON l.id = f.rowid WHERE logs_fts MATCH 'beta'")
    assert [r[0] for r in found] == [2]


async def test_bus_sends_one_log_frame_per_subscriber_per_flush():
    bus = Bus(flush_interval=0.01)
    everyone, only_a = bus.subscribe(), bus.subscribe()
    everyone.log_nodes, only_a.log_nodes = frozenset({"*"}), frozenset({"a"})
    for i in range(3):
        bus.publish_logs("a", [{"node": "a", "seq": i}])
        bus.publish_logs("b", [{"node": "b", "seq": i}])
    frame_all = json.loads(await asyncio.wait_for(everyone.queue.get(), 2))
    frame_a = json.loads(await asyncio.wait_for(only_a.queue.get(), 2))
    assert "node" not in frame_all and len(frame_all["lines"]) == 6
    assert frame_a["node"] == "a" and [x["seq"] for x in frame_a["lines"]] == [0, 1, 2]
    assert everyone.queue.empty() and only_a.queue.empty()


def test_an_oversized_metrics_sample_is_refused_by_its_frame_size():
    small = parse_node_message(json.dumps({"type": "metrics", "ts": 1.0, "throttled": "x" * 1000}))
    assert small["throttled"] == "x" * 1000
    with pytest.raises(ProtocolError, match="larger than 64 KiB") as info:
        parse_node_message(json.dumps({"type": "metrics", "ts": 1.0, "throttled": "x" * 70_000}))
    assert info.value.close_code == 4001


async def test_one_nodes_latest_lines_come_from_its_index_without_a_sort(migrated_db: Path):
    path = migrated_db
    writer = Writer(path, commit_interval=0.001)
    await writer.start()
    try:
        for first in range(1, 301, 50):  # two nodes interleaved, as a fleet writes them
            for node in ("node-a", "node-b"):
                await writer.add_logs(node, [_line(seq, f"{node} {seq}") for seq in range(first, first + 50)])
    finally:
        await writer.close()
    conn = await db.connect(path)
    try:
        queries = Queries(conn)
        for window in ({}, {"since": 1100.0, "until": 1200.0}, {"cursor": encode_cursor(100, "seq")}):
            sql, params = log_query(node_ids=["node-a"], limit=5, **window)
            async with conn.execute("EXPLAIN QUERY PLAN " + sql, params) as cur:
                plan = " ".join(str(row[-1]) for row in await cur.fetchall())
            assert "sqlite_autoindex_logs" in plan and "TEMP B-TREE" not in plan, plan
        seen: list[int] = []
        cursor = None
        while True:  # newest first, every line once, pages by seq
            page = await queries.logs(node_ids=["node-a"], cursor=cursor, limit=70)
            seen += [line["seq"] for line in page.items]
            assert all(line["msg"] == f"node-a {line['seq']}" for line in page.items)
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == list(range(300, 0, -1))
        # Lines ordered by seq are ordered by id too (the order the index stands in for).
        ids = [line["id"] for line in (await queries.logs(node_ids=["node-b"], limit=300)).items]
        assert ids == sorted(ids, reverse=True)
        # A node's seq cursor means nothing across nodes: refused, not misread.
        page = await queries.logs(node_ids=["node-a"], limit=10)
        with pytest.raises(QueryError, match="cursor"):
            await queries.logs(node_ids=["node-a", "node-b"], cursor=page.next_cursor)
        # An id cursor (several nodes' pages) still works for one node.
        both = await queries.logs(node_ids=["node-a", "node-b"], limit=10)
        rest = await queries.logs(node_ids=["node-a"], cursor=both.next_cursor, limit=500)
        assert rest.items and all(line["id"] < both.items[-1]["id"] for line in rest.items)
    finally:
        await conn.close()
