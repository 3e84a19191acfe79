"""The connection settings db.configure gives each of the server's connections, and the remote-control
writes of store.py (commands, runs, output, shells, actions) through the real writer and SQLite."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from central import db, store
from central.actions import Action
from central.writer import Writer


@pytest.fixture
async def writer(migrated_db: Path) -> AsyncIterator[Writer]:
    writer = Writer(migrated_db, commit_interval=0.05)
    await writer.start()
    try:
        yield writer
    finally:
        await writer.close()


def _pragma(conn: sqlite3.Connection, name: str) -> Any:
    return conn.execute(f"PRAGMA {name}").fetchone()[0]


async def test_each_connection_gets_its_settings(migrated_db: Path, writer: Writer) -> None:
    reader = await db.connect(migrated_db, read_only=True)
    try:
        async with reader.execute("PRAGMA query_only") as cur:
            assert (await cur.fetchone())[0] == 1
        async with reader.execute("PRAGMA foreign_keys") as cur:
            assert (await cur.fetchone())[0] == 1
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            await reader.execute("DELETE FROM logs")
    finally:
        await reader.close()
    settings = await writer.submit(lambda conn: {name: _pragma(conn, name) for name in (
        "journal_mode", "synchronous", "busy_timeout", "foreign_keys", "temp_store", "wal_autocheckpoint",
        "query_only")})
    # synchronous 1 = NORMAL, temp_store 2 = MEMORY
    assert settings == {"journal_mode": "wal", "synchronous": 1, "busy_timeout": 5000, "foreign_keys": 1,
                        "temp_store": 2, "wal_autocheckpoint": db.WAL_CHECKPOINT_PAGES, "query_only": 0}


def _row(path: Path, sql: str, *params: Any) -> tuple[Any, ...]:
    conn = sqlite3.connect(path)
    try:
        return tuple(conn.execute(sql, params).fetchone())
    finally:
        conn.close()


async def test_a_run_state_queued_without_waiting_stores_the_state_at_its_commit(
        migrated_db: Path, writer: Writer) -> None:
    """The run's start is written without waiting (commands.CommandHub.on_message); if the run ends
    before that write commits, the row must end up with the end, not the start."""
    await writer.submit(store.create_command("c1", time.time(), "alice", ["true"], None, 5.0, "pi-1",
                                             [("r1", "n1")]))
    run = {"run_id": "r1", "state": "running", "code": None, "signal": None, "message": "", "started_at": 1.0,
           "finished_at": None, "output_bytes": 0, "truncated": False}
    writer.submit_later(store.save_run(lambda: dict(run)))
    run.update(state="exited", code=0, finished_at=2.0, output_bytes=3, truncated=True)
    chunk = await writer.submit(store.add_command_output("r1", "stdout", "ok\n"), urgent=True)
    assert chunk > 0
    assert _row(migrated_db, "SELECT state, code, finished_at, output_bytes, truncated FROM command_runs"
                          " WHERE id = 'r1'") == ("exited", 0, 2.0, 3, 1)
    assert _row(migrated_db, "SELECT argv, target FROM commands WHERE id = 'c1'") == ('["true"]', "pi-1")
    assert _row(migrated_db, "SELECT id, data FROM command_output") == (chunk, "ok\n")
    assert await writer.submit(store.lose_unfinished_runs(3.0)) == 0  # nothing left running


async def test_unfinished_runs_and_actions_are_lost_at_start(migrated_db: Path, writer: Writer) -> None:
    await writer.submit(store.create_command("c1", 1.0, "alice", None, "uptime", 5.0, "all",
                                             [("r1", "n1"), ("r2", "n2")]))
    action = Action("a1", "n1", "pi-1", "alice", "reboot", "", "requested", "", 1.0, 1.0, 601.0, boot_time=7.0)
    await writer.submit(store.insert_action(dataclasses.asdict(action)))
    assert await asyncio.gather(writer.submit(store.lose_unfinished_runs(9.0)),
                                writer.submit(store.lose_unfinished_actions(9.0))) == [2, 1]
    assert _row(migrated_db, "SELECT count(*) FROM command_runs WHERE state = 'lost' AND finished_at = 9.0") == (2,)
    assert _row(migrated_db, "SELECT state, updated_at, boot_time FROM actions") == ("lost", 9.0, 7.0)
    await writer.submit(store.update_action("a1", "done", "back", 10.0))
    assert _row(migrated_db, "SELECT state, message, updated_at FROM actions") == ("done", "back", 10.0)


async def test_a_shell_session_row_opens_and_ends(migrated_db: Path, writer: Writer) -> None:
    await writer.submit(store.open_shell_session("s1", "n1", "alice", 1.0, 80, 24, "s1.cast"))
    await writer.submit(store.end_shell_session("s1", 2.0, 0, "shell exited", 42))
    assert _row(migrated_db, "SELECT node_id, cols, rows, recording, ended_at, exit_code, message, bytes_out"
                          " FROM shell_sessions") == ("n1", 80, 24, "s1.cast", 2.0, 0, "shell exited", 42)
