"""The store on both engines: the same writes through the real writer and the same reads through
the read connection, on a real SQLite file and on a real PostgreSQL database (a throw-away cluster,
tests/support/postgres.py). What must not differ: logs stored once per (node, seq), new ids,
metric aggregates, full-text search, retention, a failed write failing alone."""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from central import store
from central.dbconn import ReadDB, Target, conflicts, target
from central.queries import Queries
from central.writer import Writer
from tests.support.database import opened_store
from tests.support.postgres import Cluster


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    """A migrated database of each engine."""
    if request.param == "sqlite":
        path = tmp_path / "store.sqlite3"
        return target(path)
    cluster: Cluster = request.getfixturevalue("pg_cluster")
    return target(cluster.fresh_database())


@pytest.fixture
async def opened(engine: Target) -> AsyncIterator[tuple[Writer, ReadDB]]:
    async with opened_store(engine) as store:
        yield store


def _lines(first: int, count: int, msg: str = "frame {seq} done") -> list[dict[str, Any]]:
    return [{"seq": seq, "ts": 1_700_000_000 + seq, "source": "demo", "level": "INFO", "unit": "", "demo": "cam",
             "msg": msg.format(seq=seq)} for seq in range(first, first + count)]


async def _rows(reads: ReadDB, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    async with reads.execute(sql, params) as cur:
        return list(await cur.fetchall())


async def test_log_lines_are_stored_once_per_node_and_seq(opened: tuple[Writer, ReadDB]) -> None:
    writer, reads = opened
    await writer.add_logs("node-a", _lines(1, 50))
    await writer.add_logs("node-a", _lines(40, 20))  # a replay overlapping the first batch
    await writer.add_logs("node-b", _lines(1, 5))
    assert (await _rows(reads, "SELECT count(*) FROM logs WHERE node_id = ?", ("node-a",)))[0][0] == 59
    queries = Queries(reads)
    assert await queries.last_seq("node-a") == 59
    page = await queries.logs(node_ids=["node-a"], limit=10)
    assert [line["seq"] for line in page.items] == list(range(59, 49, -1))
    assert page.items[0]["level"] == "INFO" and page.items[0]["demo"] == "cam"
    older = await queries.logs(node_ids=["node-a"], limit=10, cursor=page.next_cursor)
    assert older.items[0]["seq"] == 49


async def test_full_text_search_matches_words_and_a_prefix_safely(opened: tuple[Writer, ReadDB]) -> None:
    writer, reads = opened
    lines = _lines(1, 4)
    lines[0]["msg"] = "camera warmup finished"
    lines[1]["msg"] = "Camera failed: sensor_timeout after 3 tries"
    lines[2]["msg"] = "the projector is warm"
    lines[3]["msg"] = 'quote " and -minus OR *star*'
    await writer.add_logs("node-a", lines)
    queries = Queries(reads)

    async def found(text: str) -> list[int]:
        return sorted(line["seq"] for line in (await queries.logs(text=text)).items)

    assert await found("camera") == [1, 2]
    assert await found("CAMERA warm") == [1]  # every word, the last one as a prefix
    assert await found("warm") == [1, 3]
    assert await found("sensor_timeout") == [2]
    assert await found('"minus OR') == [4]  # the user's quotes and operators are words, not syntax
    assert await found("nothing-like-this") == []
    lines = _lines(5, 1, msg="GET host.example.com/var/log/x.log took 12.3 ms")
    await writer.add_logs("node-a", lines)
    # Parts of names, paths and numbers are words on both engines (as FTS5 splits them).
    assert await found("example") == await found("log x") == await found("12") == await found("example.com") == [5]


async def test_search_splits_words_at_any_punctuation_and_white_space_as_fts5_does(opened: tuple[Writer, ReadDB]) -> None:
    """Non-ASCII punctuation and spaces split words as ASCII ones do, on both engines (PostgreSQL's
    index leaves white space to its parser since schema step 14: the same words as before)."""
    writer, reads = opened
    lines = _lines(1, 5)
    lines[0]["msg"] = "valve\u2014open after 3\u00b7retries"  # em dash, middle dot
    lines[1]["msg"] = "\u00e9tat \u00abcritique\u00bb \u3000gripper\u3000stalled"  # guillemets, ideographic space
    lines[2]["msg"] = "tab\tseparated\r\nlines \x01ctl\x7fdel"
    lines[3]["msg"] = "no\u00a0break space, a\u2009thin one"
    lines[4]["msg"] = "valve open"
    await writer.add_logs("node-a", lines)
    queries = Queries(reads)

    async def found(text: str) -> list[int]:
        return sorted(line["seq"] for line in (await queries.logs(text=text)).items)

    assert await found("open") == [1, 5]
    assert await found("valve_open") == [1, 5]  # a phrase: the words next to each other
    assert await found("retries 3") == [1]
    assert await found("critique") == await found("gripper stalled") == [2]
    assert await found("separated lines") == await found("ctl") == await found("del") == [3]
    assert await found("break") == await found("thin one") == [4]


@pytest.mark.parametrize("roll_up_every_s", [math.inf, 0.0])
async def test_metric_samples_aggregate_per_minute_across_commits(opened: tuple[Writer, ReadDB],
                                                                  roll_up_every_s: float) -> None:
    """The same minutes whether SQLite has rolled the samples up into metrics_1m yet or not (the
    reads add those it has not: store.MetricRollup); PostgreSQL keeps metrics_1m up to date."""
    writer, reads = opened
    writer.rollup.every_s = roll_up_every_s
    minute = 1_700_000_040  # a multiple of 60
    writer.add_metrics("node-a", minute + 1, {"cpu": 10.0, "load": 1})
    await writer.submit(store.insert_metrics("node-a", minute + 2, {"cpu": 30.0}))
    await writer.submit(store.insert_metrics("node-a", minute + 61, {"cpu": 5.0}))
    queries = Queries(reads)
    per_minute = await queries.metrics("node-a", ["cpu"], minute - 60, minute + 180, 60)
    assert per_minute == {"cpu": [[minute, 10.0, 20.0, 30.0], [minute + 60, 5.0, 5.0, 5.0]]}
    raw = await queries.metrics("node-a", None, minute, minute + 120, 10)
    assert raw["cpu"] == [[minute, 10.0, 20.0, 30.0], [minute + 60, 5.0, 5.0, 5.0]]
    assert raw["load"] == [[minute, 1.0, 1.0, 1.0]]


async def test_new_rows_get_growing_ids(opened: tuple[Writer, ReadDB]) -> None:
    writer, _ = opened
    first = await writer.submit(store.insert_event(time.time(), "node-a", "state", "online", {"a": 1}))
    second = await writer.submit(store.insert_event(time.time(), "", "server", "started", {}))
    audit = await writer.submit(store.insert_audit(time.time(), "admin", "login", "", 200, "127.0.0.1", {}))
    assert 0 < first < second and audit > 0
    await writer.submit(store.create_command("c1", time.time(), "admin", ["true"], None, 10.0, "node-a",
                                             [("r1", "node-a")]))
    chunks = [await writer.submit(store.add_command_output("r1", "stdout", f"part {i}")) for i in range(3)]
    assert chunks == sorted(chunks) and len(set(chunks)) == 3


async def test_a_failed_write_fails_alone_and_the_commit_keeps_the_rest(opened: tuple[Writer, ReadDB]) -> None:
    writer, reads = opened
    now = time.time()
    await writer.submit(store.create_operator("alice", "operator", "active", now))
    with pytest.raises(conflicts()):
        await writer.submit(store.create_operator("alice", "admin", "active", now))
    await writer.submit(store.create_operator("bob", "viewer", "active", now))
    names = [row["name"] for row in await Queries(reads).operators()]
    assert names == ["alice", "bob"]
    assert (await Queries(reads).operator("alice"))["role"] == "operator"  # type: ignore[index]


async def test_a_command_history_counts_its_successful_runs(opened: tuple[Writer, ReadDB]) -> None:
    writer, reads = opened
    now = time.time()
    await writer.submit(store.create_command("c1", now, "admin", ["uptime"], None, 5.0, "all",
                                             [("r1", "n1"), ("r2", "n2")]))
    view = {"run_id": "r1", "state": "exited", "code": 0, "signal": None, "message": "", "started_at": now,
            "finished_at": now + 1, "output_bytes": 3, "truncated": False}
    assert await writer.submit(store.save_run(lambda: view)) == 1
    assert await writer.submit(store.add_command_output("r1", "stdout", "up\n")) > 0
    recent = await Queries(reads).recent_commands(None, 10)
    assert [(row["id"], row["nodes"], row["ok"], row["argv"]) for row in recent] == [("c1", 2, 1, ["uptime"])]
    command = await Queries(reads).command("c1")
    assert command is not None
    assert [run["output"] for run in command["runs"] if run["id"] == "r1"][0][0]["data"] == "up\n"


async def test_retention_deletes_what_is_past_its_window(opened: tuple[Writer, ReadDB]) -> None:
    writer, reads = opened
    writer.rollup.every_s = 0  # SQLite: samples rolled up at every commit (retention deletes rolled ones only)
    now = 1_800_000_000.0
    old, fresh = now - 10 * 86_400, now - 60
    await writer.add_logs("node-a", [{**line, "ts": old} for line in _lines(1, 30)]
                          + [{**line, "ts": fresh} for line in _lines(31, 5)])
    await writer.submit(store.insert_metrics("node-a", old, {"cpu": 1.0}))
    await writer.submit(store.insert_metrics("node-a", fresh, {"cpu": 2.0}))
    await writer.submit(store.insert_event(old, "node-a", "state", "old", {}))
    trimmed = await writer.submit(store.apply_retention(
        now, raw_metrics_s=86_400, metrics_1m_s=7 * 86_400, logs_s=7 * 86_400, logs_max_rows=1000,
        events_s=7 * 86_400, audit_s=7 * 86_400, chunk=7))
    assert trimmed.done
    assert dict(trimmed) == {"metrics_raw": 1, "metrics_1m": 1, "logs": 30, "events": 1, "audit": 0}
    assert [row[0] for row in await _rows(reads, "SELECT seq FROM logs ORDER BY seq")] == list(range(31, 36))
    assert (await _rows(reads, "SELECT count(*) FROM metrics_raw"))[0][0] == 1


async def test_a_line_with_a_nul_is_stored(opened: tuple[Writer, ReadDB], engine: Target) -> None:
    """SQLite keeps the NUL; PostgreSQL text cannot hold one: it becomes U+FFFD (docs/operations.md)."""
    writer, reads = opened
    await writer.add_logs("node-a", _lines(1, 2, msg="before\x00after {seq}"))
    msgs = [row[0] for row in await _rows(reads, "SELECT msg FROM logs ORDER BY seq")]
    nul = "\x00" if engine.dialect == "sqlite" else "\ufffd"
    assert msgs == [f"before{nul}after 1", f"before{nul}after 2"]


async def test_command_output_with_a_nul_is_stored(opened: tuple[Writer, ReadDB], engine: Target) -> None:
    writer, reads = opened
    await writer.submit(store.create_command("c1", time.time(), "admin", ["cat"], None, 5.0, "n1", [("r1", "n1")]))
    assert await writer.submit(store.add_command_output("r1", "stdout", "bin\x00ary")) > 0
    nul = "\x00" if engine.dialect == "sqlite" else "\ufffd"
    assert [row[0] for row in await _rows(reads, "SELECT data FROM command_output")] == [f"bin{nul}ary"]


async def test_facts_merge_and_json_columns_round_trip(opened: tuple[Writer, ReadDB]) -> None:
    writer, reads = opened
    now = time.time()
    await writer.submit(store.create_node("n1", "one", "desktop", "hall", now, "fp1", "pem", "th1"))
    await writer.submit(store.save_hello("n1", {"os": "linux"}, "1.2"))
    await writer.submit(store.merge_facts("n1", {"disk": 42}))
    node = (await Queries(reads).nodes())[0]
    assert json.loads(node["facts"]) == {"os": "linux", "disk": 42} and node["daemon_version"] == "1.2"
