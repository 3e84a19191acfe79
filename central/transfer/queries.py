"""The statements of `dvic-central migrate` (transfer/__init__.py): the source's tables and rows on
SQLite, the target's tables, columns, foreign keys and identity columns on PostgreSQL, and the copy."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from typing import Any


def sqlite_tables(conn: sqlite3.Connection) -> list[str]:
    """The source's ordinary tables (FTS5's virtual table and its shadow tables are SQLite's own
    search index: PostgreSQL builds its own)."""
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
                        " AND sql NOT LIKE 'CREATE VIRTUAL TABLE%' ORDER BY name").fetchall()
    virtual = [row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND sql LIKE 'CREATE VIRTUAL TABLE%'").fetchall()]
    return [name for (name,) in rows if not any(name.startswith(v + "_") for v in virtual)]


def sqlite_columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')]


def sqlite_days(conn: sqlite3.Connection, table: str, column: str) -> list[int]:
    """The days (their start, Unix time, UTC) the rows of `table` fall on, by `column`."""
    rows = conn.execute(f'SELECT DISTINCT CAST("{column}" / 86400 AS INTEGER) * 86400 FROM "{table}"'
                        f' WHERE "{column}" IS NOT NULL').fetchall()
    return [int(day) for (day,) in rows]


def sqlite_count(conn: sqlite3.Connection, table: str) -> int:
    return int(conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])


def sqlite_rows(conn: sqlite3.Connection, table: str, columns: Sequence[str], batch: int) -> Iterator[list[Any]]:
    """The table's rows, `batch` at a time (a full scan: in rowid, or primary key, order)."""
    names = ", ".join(f'"{c}"' for c in columns)
    cur = conn.execute(f'SELECT {names} FROM "{table}"')
    while rows := cur.fetchmany(batch):
        yield rows


async def pg_tables(conn: Any) -> dict[str, list[tuple[str, str]]]:
    """{table: [(column, data type), ...] in column order} of the target's public schema, without
    partitions (a partitioned table takes its rows through its parent)."""
    rows = await conn.fetch(
        "SELECT c.table_name, c.column_name, c.data_type FROM information_schema.columns c"
        " JOIN pg_class k ON k.relname = c.table_name AND k.relnamespace = 'public'::regnamespace"
        " WHERE c.table_schema = 'public' AND NOT k.relispartition ORDER BY c.table_name, c.ordinal_position")
    out: dict[str, list[tuple[str, str]]] = {}
    for row in rows:
        out.setdefault(row["table_name"], []).append((row["column_name"], row["data_type"]))
    return out


async def pg_references(conn: Any) -> list[tuple[str, str]]:
    """(table, table it references) for every foreign key of the public schema."""
    rows = await conn.fetch(
        "SELECT c.conrelid::regclass::text AS child, c.confrelid::regclass::text AS parent FROM pg_constraint c"
        " WHERE c.contype = 'f' AND c.connamespace = 'public'::regnamespace")
    return [(row["child"].strip('"'), row["parent"].strip('"')) for row in rows]


async def pg_has_rows(conn: Any, table: str) -> bool:
    return bool(await conn.fetchval(f'SELECT EXISTS (SELECT 1 FROM "{table}")'))


async def pg_count(conn: Any, table: str) -> int:
    return int(await conn.fetchval(f'SELECT count(*) FROM "{table}"'))


async def pg_identity_columns(conn: Any) -> list[tuple[str, str]]:
    """(table, column) of every identity column: their sequences follow the copied ids."""
    rows = await conn.fetch("SELECT table_name, column_name FROM information_schema.columns"
                            " WHERE table_schema = 'public' AND is_identity = 'YES'")
    return [(row["table_name"], row["column_name"]) for row in rows]


async def pg_follow_identity(conn: Any, table: str, column: str) -> None:
    """The next generated id comes after the largest copied one."""
    await conn.execute(
        f"SELECT setval(pg_get_serial_sequence('\"{table}\"', '{column}'),"
        f' coalesce((SELECT max("{column}") FROM "{table}"), 0) + 1, false)')
