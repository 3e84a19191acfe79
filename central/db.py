"""Schema and migrations for both engines (the database is created and brought up to date on
start), the SQLite connection settings (`configure`), and opening the writer's and the reads'
connections for a database `Target` (central/dbconn.py: an SQLite file or a PostgreSQL URL).

The schema is one list of steps (`MIGRATIONS`). Each step is DDL in a portable subset, rendered
as is for SQLite and by `postgresql_ddl` for PostgreSQL (BIGINT for INTEGER, DOUBLE PRECISION for
REAL, identity ids...), plus per-engine parts only where the engines differ for real (SQLite's
FTS5 table and its triggers, PostgreSQL's text-search index). SQLite keeps the version in
PRAGMA user_version; PostgreSQL in the table `schema_version`, each step in one transaction, under
an advisory lock so replicas starting together migrate once.

SQL lives in a few modules: this one (schema, PRAGMAs), store.py (writes) and queries.py (reads);
tests/central/test_sql_placement.py keeps it there."""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import aiosqlite

from .dbconn import (
    DatabaseUnavailable,
    PgWriteConn,
    ReadDB,
    SqliteReadDB,
    Target,
    WriterConn,
    connect_sqlite_writer,
    mask_url,
    open_pg_reads,
    target,
)


@dataclass(frozen=True)
class Step:
    """One schema step: portable DDL for both engines, then each engine's own part."""

    both: str = ""
    sqlite: str = ""
    postgresql: str = ""

    def render(self, dialect: str) -> str:
        if dialect == "sqlite":
            return self.both + self.sqlite
        return postgresql_ddl(self.both) + self.postgresql


# PostgreSQL's own text search over log lines (SQLite's is the FTS5 table logs_fts): an expression
# index the log query's `to_tsvector('simple', msg) @@ ...` uses (queries.log_query). 'simple':
# lower-cased words, no stemming, as FTS5's unicode61 tokenizer does.
LOGS_SEARCH_PG = """
    CREATE INDEX logs_search ON logs USING GIN (to_tsvector('simple', msg));
    """

DB_FILE = "dvic.sqlite3"

# Each entry moves the schema from version i to i+1. Never edit a released step: append one.
MIGRATIONS: list[Step] = [
    Step(
        """
    CREATE TABLE nodes (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        grp TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        cert_fp TEXT UNIQUE,
        cert_pem TEXT,
        token_hash TEXT UNIQUE,
        revoked_at REAL,
        maintenance INTEGER NOT NULL DEFAULT 0,
        facts TEXT NOT NULL DEFAULT '{}',
        daemon_version TEXT NOT NULL DEFAULT '',
        last_seen REAL,
        state TEXT NOT NULL DEFAULT 'new',
        state_since REAL
    );
    CREATE TABLE logs (
        id INTEGER PRIMARY KEY,
        node_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        ts REAL NOT NULL,
        source TEXT NOT NULL,
        unit TEXT NOT NULL DEFAULT '',
        demo TEXT NOT NULL DEFAULT '',
        level INTEGER NOT NULL,
        msg TEXT NOT NULL,
        UNIQUE (node_id, seq)
    );
    CREATE INDEX logs_node_ts ON logs (node_id, ts);
    CREATE INDEX logs_ts ON logs (ts);
    CREATE TABLE metrics_raw (
        node_id TEXT NOT NULL,
        name TEXT NOT NULL,
        ts REAL NOT NULL,
        value REAL NOT NULL
    );
    CREATE INDEX metrics_raw_key ON metrics_raw (node_id, name, ts);
    CREATE INDEX metrics_raw_ts ON metrics_raw (ts);
    CREATE TABLE metrics_1m (
        node_id TEXT NOT NULL,
        name TEXT NOT NULL,
        bucket INTEGER NOT NULL,
        min REAL NOT NULL,
        avg REAL NOT NULL,
        max REAL NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (node_id, name, bucket)
    ) WITHOUT ROWID;
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        node_id TEXT NOT NULL DEFAULT '',
        kind TEXT NOT NULL,
        message TEXT NOT NULL,
        data TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX events_node_ts ON events (node_id, ts);
    CREATE TABLE demos (
        node_id TEXT NOT NULL,
        token TEXT NOT NULL,
        name TEXT NOT NULL,
        pid INTEGER,
        state TEXT NOT NULL,
        started_at REAL,
        exited_at REAL,
        header TEXT NOT NULL DEFAULT '{}',
        updated_at REAL NOT NULL,
        PRIMARY KEY (node_id, token)
    );
    CREATE TABLE operators (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        status TEXT NOT NULL,
        created_at REAL NOT NULL,
        approved_by TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE tokens (
        hash TEXT PRIMARY KEY,
        operator TEXT NOT NULL REFERENCES operators (name),
        created_at REAL NOT NULL,
        label TEXT NOT NULL DEFAULT '',
        revoked_at REAL
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        operator TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL DEFAULT '',
        status INTEGER NOT NULL DEFAULT 0,
        remote TEXT NOT NULL DEFAULT '',
        detail TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX audit_ts ON audit (ts);
    """,
        sqlite="""
    CREATE VIRTUAL TABLE logs_fts USING fts5(msg, content='logs', content_rowid='id');
    CREATE TRIGGER logs_ai AFTER INSERT ON logs BEGIN
        INSERT INTO logs_fts (rowid, msg) VALUES (new.id, new.msg);
    END;
    CREATE TRIGGER logs_ad AFTER DELETE ON logs BEGIN
        INSERT INTO logs_fts (logs_fts, rowid, msg) VALUES ('delete', old.id, old.msg);
    END;
    """,
        postgresql=LOGS_SEARCH_PG),
    # 2: remote control (commands and their per-node runs, shell sessions, tracked actions).
    Step("""
    CREATE TABLE commands (
        id TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        operator TEXT NOT NULL,
        argv TEXT,
        shell TEXT,
        timeout REAL NOT NULL,
        target TEXT NOT NULL
    );
    CREATE INDEX commands_created ON commands (created_at);
    CREATE TABLE command_runs (
        id TEXT PRIMARY KEY,
        command_id TEXT NOT NULL REFERENCES commands (id),
        node_id TEXT NOT NULL,
        state TEXT NOT NULL,
        code INTEGER,
        signal INTEGER,
        message TEXT NOT NULL DEFAULT '',
        started_at REAL,
        finished_at REAL,
        output_bytes INTEGER NOT NULL DEFAULT 0,
        truncated INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX command_runs_command ON command_runs (command_id);
    CREATE INDEX command_runs_node ON command_runs (node_id, started_at);
    CREATE TABLE command_output (
        id INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL,
        stream TEXT NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX command_output_run ON command_output (run_id, id);
    CREATE TABLE shell_sessions (
        id TEXT PRIMARY KEY,
        node_id TEXT NOT NULL,
        operator TEXT NOT NULL,
        started_at REAL NOT NULL,
        ended_at REAL,
        cols INTEGER NOT NULL,
        rows INTEGER NOT NULL,
        recording TEXT NOT NULL,
        exit_code INTEGER,
        message TEXT NOT NULL DEFAULT '',
        bytes_out INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX shell_sessions_started ON shell_sessions (started_at);
    CREATE TABLE actions (
        id TEXT PRIMARY KEY,
        node_id TEXT NOT NULL,
        operator TEXT NOT NULL,
        action TEXT NOT NULL,
        demo TEXT NOT NULL DEFAULT '',
        state TEXT NOT NULL,
        message TEXT NOT NULL DEFAULT '',
        requested_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        deadline REAL NOT NULL,
        boot_time REAL
    );
    CREATE INDEX actions_node ON actions (node_id, requested_at);
    """),
    # 3: index log lines in the FTS table once per batch (store.insert_logs), not by a per-row
    # trigger: the trigger alone halved ingest throughput.
    Step(sqlite="""
    DROP TRIGGER logs_ai;
    """),
    # 4: one per-node index on logs instead of two. With a fleet's lines interleaved, each per-node
    # index costs a scattered page write per line; UNIQUE (node_id, seq) already orders a node's
    # lines (seq grows with id for a node), so the log query reads a node's latest lines from it
    # and logs_node_ts only cost the writer a third of its time (docs/performance.md).
    Step("""
    DROP INDEX logs_node_ts;
    """),
    # 5: accounts and enrollments (docs/security.md): who enrolled a node (an operator may revoke
    # its own enrollment while the node has never connected), operator token expiry and coarse
    # last use, and the one-time code a self-registered account must tell the approving admin
    # (only its hash is kept; the row goes when the account is approved or deleted).
    Step("""
    ALTER TABLE nodes ADD COLUMN enrolled_by TEXT NOT NULL DEFAULT '';
    ALTER TABLE tokens ADD COLUMN expires_at REAL;
    ALTER TABLE tokens ADD COLUMN last_used_at REAL;
    CREATE TABLE registrations (
        name TEXT PRIMARY KEY REFERENCES operators (name),
        code_hash TEXT NOT NULL,
        remote TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL
    );
    """),
    # 6: retention deletes in short chunks, oldest first (store.apply_retention): without an index
    # on the time column each chunk of one-minute aggregates or events scanned the whole table.
    Step("""
    CREATE INDEX metrics_1m_bucket ON metrics_1m (bucket);
    CREATE INDEX events_ts ON events (ts);
    """),
    # 7: alerts (issue 15, rules half): operator rules and stock-rule tuning, alerts with their
    # lifecycle (one open alert per rule and subject: the partial unique index), each alert's history,
    # and silences (central/alerts/).
    Step("""
    CREATE TABLE alert_rules (
        name TEXT PRIMARY KEY,
        stock INTEGER NOT NULL,
        spec TEXT NOT NULL,
        updated_at REAL NOT NULL,
        updated_by TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE alerts (
        id INTEGER PRIMARY KEY,
        rule TEXT NOT NULL,
        subject TEXT NOT NULL,
        node_id TEXT,
        node TEXT,
        grp TEXT,
        kind TEXT,
        severity TEXT NOT NULL,
        state TEXT NOT NULL,
        summary TEXT NOT NULL,
        started REAL NOT NULL,
        resolved REAL,
        acked_by TEXT,
        acked_at REAL,
        ack_note TEXT,
        notified INTEGER NOT NULL DEFAULT 0,
        last_notice REAL
    );
    CREATE UNIQUE INDEX alerts_open ON alerts (rule, subject) WHERE state != 'resolved';
    CREATE INDEX alerts_started ON alerts (started);
    CREATE TABLE alert_events (
        id INTEGER PRIMARY KEY,
        alert_id INTEGER NOT NULL,
        ts REAL NOT NULL,
        what TEXT NOT NULL,
        who TEXT NOT NULL DEFAULT '',
        note TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX alert_events_alert ON alert_events (alert_id, id);
    CREATE TABLE silences (
        id INTEGER PRIMARY KEY,
        grp TEXT,
        node TEXT,
        rule TEXT,
        severity TEXT,
        starts REAL NOT NULL,
        ends REAL NOT NULL,
        note TEXT NOT NULL DEFAULT '',
        created_by TEXT NOT NULL,
        created_at REAL NOT NULL,
        removed_at REAL,
        removed_by TEXT
    );
    CREATE INDEX silences_ends ON silences (ends);
    """),
    # 8: the venue calendar (central/calendar/, docs/calendar.md): opening hours per group and their
    # dated exceptions, runbooks and their firings (one row per occurrence: UNIQUE (runbook, key)
    # is what makes a moment fire once, also across restarts), per-node step states, bookings and
    # the nodes each holds (their times copied so an overlap is one indexed lookup per node).
    Step("""
    CREATE TABLE cal_hours (
        grp TEXT PRIMARY KEY,
        zone TEXT NOT NULL,
        week TEXT NOT NULL,
        updated_at REAL NOT NULL,
        updated_by TEXT NOT NULL
    );
    CREATE TABLE cal_exceptions (
        grp TEXT NOT NULL,
        day TEXT NOT NULL,
        spans TEXT NOT NULL,
        note TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (grp, day)
    ) WITHOUT ROWID;
    CREATE TABLE runbooks (
        id INTEGER PRIMARY KEY,
        grp TEXT NOT NULL,
        name TEXT NOT NULL,
        moment TEXT NOT NULL,
        steps TEXT NOT NULL,
        catch_up_s REAL NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        created_by TEXT NOT NULL,
        deleted_at REAL,
        UNIQUE (grp, name)
    );
    CREATE TABLE firings (
        id INTEGER PRIMARY KEY,
        runbook_id INTEGER NOT NULL REFERENCES runbooks (id),
        occurrence TEXT,
        due_at REAL NOT NULL,
        state TEXT NOT NULL,
        trigger TEXT NOT NULL,
        operator TEXT NOT NULL DEFAULT '',
        started_at REAL,
        finished_at REAL,
        message TEXT NOT NULL DEFAULT '',
        UNIQUE (runbook_id, occurrence)
    );
    CREATE INDEX firings_runbook ON firings (runbook_id, due_at);
    CREATE INDEX firings_due ON firings (due_at);
    CREATE INDEX firings_state ON firings (state) WHERE state IN ('pending', 'running');
    CREATE TABLE firing_nodes (
        firing_id INTEGER NOT NULL REFERENCES firings (id),
        node_id TEXT NOT NULL,
        node_name TEXT NOT NULL,
        state TEXT NOT NULL,
        step INTEGER NOT NULL DEFAULT 0,
        message TEXT NOT NULL DEFAULT '',
        updated_at REAL NOT NULL,
        PRIMARY KEY (firing_id, node_id)
    ) WITHOUT ROWID;
    CREATE TABLE scheduler_state (
        key TEXT PRIMARY KEY,
        value REAL NOT NULL
    );
    CREATE TABLE bookings (
        id INTEGER PRIMARY KEY,
        holder TEXT NOT NULL,
        starts_at REAL NOT NULL,
        ends_at REAL NOT NULL,
        note TEXT NOT NULL DEFAULT '',
        deploy TEXT NOT NULL DEFAULT '',
        state TEXT NOT NULL,
        created_at REAL NOT NULL,
        created_by TEXT NOT NULL,
        cancelled_at REAL,
        cancelled_by TEXT NOT NULL DEFAULT '',
        deploy_state TEXT NOT NULL DEFAULT '',
        deploy_message TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX bookings_deploy ON bookings (id) WHERE deploy != '' AND deploy_state IN ('', 'applied');
    CREATE INDEX bookings_live ON bookings (ends_at, starts_at) WHERE state = 'active';
    CREATE TABLE booking_nodes (
        booking_id INTEGER NOT NULL REFERENCES bookings (id),
        node_id TEXT NOT NULL,
        starts_at REAL NOT NULL,
        ends_at REAL NOT NULL,
        live INTEGER NOT NULL DEFAULT 1,
        PRIMARY KEY (booking_id, node_id)
    ) WITHOUT ROWID;
    CREATE INDEX booking_nodes_node ON booking_nodes (node_id, ends_at) WHERE live = 1;
    """),
    # 9: demos as first-class objects (issue 14, central/demos/): the release catalog, deployments
    # (desired state per demo and scope), each node's part of a rollout, and supervised demos' status.
    Step("""
    CREATE TABLE demo_releases (
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        manifest TEXT NOT NULL,
        unpacked_bytes INTEGER NOT NULL,
        members INTEGER NOT NULL,
        published_at REAL NOT NULL,
        published_by TEXT NOT NULL,
        PRIMARY KEY (name, version)
    );
    CREATE INDEX demo_releases_sha256 ON demo_releases (sha256);
    CREATE TABLE demo_deployments (
        id TEXT PRIMARY KEY,
        demo TEXT NOT NULL,
        kind TEXT NOT NULL,
        version TEXT,
        scope TEXT NOT NULL,
        target TEXT NOT NULL,
        batch INTEGER,
        released INTEGER NOT NULL DEFAULT 0,
        previous_version TEXT,
        state TEXT NOT NULL,
        message TEXT NOT NULL DEFAULT '',
        operator TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX demo_deployments_demo ON demo_deployments (demo, created_at);
    CREATE TABLE demo_assignments (
        demo TEXT NOT NULL,
        scope TEXT NOT NULL,
        target TEXT NOT NULL,
        version TEXT,
        deployment_id TEXT NOT NULL,
        PRIMARY KEY (demo, scope, target)
    );
    CREATE TABLE demo_rollout_nodes (
        deployment_id TEXT NOT NULL,
        node_id TEXT NOT NULL,
        batch INTEGER NOT NULL,
        previous_version TEXT,
        previous_rollout TEXT,
        state TEXT NOT NULL,
        message TEXT NOT NULL DEFAULT '',
        bytes INTEGER,
        total INTEGER,
        updated_at REAL NOT NULL,
        PRIMARY KEY (deployment_id, node_id)
    );
    CREATE TABLE demo_status (
        node_id TEXT NOT NULL,
        demo TEXT NOT NULL,
        version TEXT NOT NULL,
        state TEXT NOT NULL,
        pid INTEGER,
        restarts INTEGER NOT NULL DEFAULT 0,
        since REAL,
        last_exit TEXT,
        last_heartbeat REAL,
        message TEXT NOT NULL DEFAULT '',
        updated_at REAL NOT NULL,
        PRIMARY KEY (node_id, demo)
    );
    """),
    # 10: notifications (issue 15, delivery half; docs/alerts.md "Notifications"): channels (their
    # secrets in a column no read for the API selects), routes from (group, minimum severity) to a
    # channel, and the delivery queue: one row per grouped message and channel, written before it
    # is tried, with the notices it lists.
    Step("""
    CREATE TABLE channels (
        name TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        settings TEXT NOT NULL DEFAULT '{}',
        secrets TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL,
        created_by TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE alert_routes (
        id INTEGER PRIMARY KEY,
        grp TEXT NOT NULL,
        severity TEXT NOT NULL,
        channel TEXT NOT NULL REFERENCES channels (name) ON DELETE CASCADE,
        created_at REAL NOT NULL,
        created_by TEXT NOT NULL DEFAULT '',
        UNIQUE (grp, severity, channel)
    );
    CREATE TABLE notifications (
        id INTEGER PRIMARY KEY,
        channel TEXT NOT NULL,
        group_key TEXT NOT NULL,
        kind TEXT NOT NULL,
        severity TEXT NOT NULL,
        state TEXT NOT NULL,
        sealed INTEGER NOT NULL DEFAULT 0,
        subjects INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        group_until REAL NOT NULL,
        due_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT NOT NULL DEFAULT '',
        answer TEXT NOT NULL DEFAULT '',
        updated_at REAL NOT NULL,
        sent_at REAL
    );
    CREATE INDEX notifications_open ON notifications (channel, group_key, state);
    CREATE INDEX notifications_state ON notifications (state, due_at);
    CREATE INDEX notifications_created ON notifications (created_at);
    CREATE TABLE notification_notices (
        id INTEGER PRIMARY KEY,
        notification_id INTEGER NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
        notice TEXT NOT NULL
    );
    CREATE INDEX notification_notices_of ON notification_notices (notification_id, id);
    """),
]


def make_private(path: Path) -> None:
    """The database holds notification channels' secrets (docs/security.md): readable by the
    server's user only, as are its WAL and shared-memory files, which SQLite creates with the
    database file's mode. Creates the file when missing."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for name in (path.name, path.name + "-wal", path.name + "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(path.with_name(name), 0o600)


_C = TypeVar("_C", bound=sqlite3.Connection)

# The writer checkpoints every 64 MiB of WAL instead of 4 MiB: the pages a busy fleet rewrites at
# every commit (each node's tail in the per-node indexes) are then copied to the database once per
# checkpoint instead of sixteen times.
WAL_CHECKPOINT_PAGES = 16384


def configure(conn: _C, *, writer: bool = False, read_only: bool = False) -> _C:
    """The settings of a server connection: the writer's (`writer`), the reads' (`read_only`) or
    the one that migrates the schema (neither). Returns `conn`."""
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode is durable against process crashes (what a node ack promises); a power
    # cut can lose the last commits, which the node then resends.
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    conn.execute("PRAGMA foreign_keys=ON")
    if writer:
        # Statement and savepoint journals in memory: on disk they cost a file write per page a
        # multi-row insert touches (about a third of the writer's system calls at fleet load).
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
    if read_only:
        conn.execute("PRAGMA query_only=ON")
    return conn


def connect_writer(where: Target | Path | str) -> WriterConn:
    """The writer's connection, used on the writer's one thread: for SQLite the standard sqlite3
    connection itself; for PostgreSQL an asyncpg connection run by a private event loop."""
    found = target(where)
    if found.dialect == "sqlite":
        assert found.path is not None
        return configure(connect_sqlite_writer(found.path), writer=True)
    conn = PgWriteConn(found.url)
    conn.open()
    return conn


async def connect(path: Path, *, read_only: bool = False) -> SqliteReadDB:
    """An aiosqlite connection, configured on its own thread before it is handed out."""
    db = SqliteReadDB(
        lambda: configure(sqlite3.connect(path, isolation_level=None), read_only=read_only), iter_chunk_size=64)
    await db  # starts its thread and connects
    db.row_factory = aiosqlite.Row
    return db


async def open_reads(where: Target | Path | str) -> ReadDB:
    """The reads' connection: a read-only aiosqlite connection, or an asyncpg pool."""
    found = target(where)
    if found.dialect == "sqlite":
        assert found.path is not None
        return await connect(found.path, read_only=True)
    return await open_pg_reads(found.url)


SCHEMA_VERSION = len(MIGRATIONS)

# -- PostgreSQL rendering of the portable DDL -------------------------------------------------------
_PG_TYPES = [
    # An SQLite rowid alias: a generated 64-bit id (a value given explicitly is still taken).
    (re.compile(r"\bINTEGER PRIMARY KEY\b"), "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    # Timestamps in ms, sizes, counts: 64 bits (SQLite's INTEGER is 64-bit).
    (re.compile(r"\bINTEGER\b"), "BIGINT"),
    (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b"), "BYTEA"),
    # A clustering hint of SQLite's; PostgreSQL tables have no rowid to drop.
    (re.compile(r"\)\s*WITHOUT ROWID"), ")"),
]


def postgresql_ddl(portable: str) -> str:
    """Portable DDL as PostgreSQL takes it."""
    for pattern, replacement in _PG_TYPES:
        portable = pattern.sub(replacement, portable)
    return portable


# -- creating and migrating --------------------------------------------------------------------------
async def create(where: Target | Path | str) -> None:
    """The database at `where` (an SQLite file, made if missing, or a PostgreSQL database) brought to
    SCHEMA_VERSION."""
    found = target(where)
    if found.dialect == "sqlite":
        assert found.path is not None
        conn = await connect(found.path)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        return
    await migrate_postgresql(found.url)


def _too_new(version: int) -> RuntimeError:
    return RuntimeError(
        f"database schema version {version} is newer than this server ({SCHEMA_VERSION}): upgrade the server")


async def migrate(db: aiosqlite.Connection) -> int:
    """Bring an SQLite schema to SCHEMA_VERSION; refuse a database from a newer release."""
    async with db.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise _too_new(version)
    for step in range(version, SCHEMA_VERSION):
        await db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(MIGRATIONS[step].render("sqlite")):
                await db.execute(statement)
            await db.execute(f"PRAGMA user_version={step + 1}")
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
    return SCHEMA_VERSION


# Key of the advisory lock held while migrating (any fixed number the application owns).
MIGRATION_LOCK = 0x64766963  # "dvic"


async def migrate_postgresql(url: str) -> int:
    """Bring a PostgreSQL schema to SCHEMA_VERSION, one transaction per step, under an advisory lock
    (two replicas starting at once: the second waits, then finds the work done)."""
    import asyncpg

    try:
        conn = await asyncpg.connect(url, timeout=10)
    except Exception as exc:
        raise DatabaseUnavailable(f"cannot connect to {mask_url(url)}: {str(exc).strip() or type(exc).__name__}") \
            from exc
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        try:
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
            version = await conn.fetchval("SELECT max(version) FROM schema_version") or 0
            if version > SCHEMA_VERSION:
                raise _too_new(version)
            for step in range(version, SCHEMA_VERSION):
                async with conn.transaction():
                    for statement in _statements(MIGRATIONS[step].render("postgresql")):
                        await conn.execute(statement)
                    await conn.execute("DELETE FROM schema_version")
                    await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", step + 1)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    finally:
        await conn.close()
    return SCHEMA_VERSION


async def prepare(where: Target) -> None:
    """At server start: the database made if missing (SQLite: a private file) and migrated."""
    if where.dialect == "sqlite":
        assert where.path is not None
        make_private(where.path)
    await create(where)


def _statements(script: str) -> list[str]:
    """Split a migration into statements (triggers contain ';' inside BEGIN ... END)."""
    out: list[str] = []
    buf = ""
    for part in script.split(";"):
        buf += part + ";"
        if buf.strip(" \n;") and _complete(buf):
            out.append(buf.strip())
            buf = ""
    return [s for s in out if s.strip(" \n;")]


def _complete(sql: str) -> bool:
    return sqlite3.complete_statement(sql)

