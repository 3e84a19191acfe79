"""`dvic-central migrate --from sqlite:PATH --to postgresql://...`: an installation on the embedded
SQLite file moves to PostgreSQL (docs/operations.md "Outgrowing one server").

The source is first brought to this release's schema (what the server does at start), the target
is made with the same schema; then every table is copied in one PostgreSQL transaction, parents
before children, with binary COPY in batches, the identity sequences moved past the copied ids,
and each table's row count compared with the source's before the commit. Either everything is
there or nothing is: a failure leaves the target as it was and the source untouched. The target
must be empty; the CA, keys, recordings and artifacts stay in the data dir, which the server on
PostgreSQL keeps using.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import db, store
from ..dbconn import DatabaseUnavailable, mask_url
from . import queries

BATCH_ROWS = 5000
ONLY_IN_TARGET = {"schema_version"}  # PostgreSQL's record of the schema (SQLite: PRAGMA user_version)


class TransferError(RuntimeError):
    """The move cannot be made; the message says why and what to do. Nothing was changed."""


@dataclass(frozen=True)
class Moved:
    table: str
    rows: int


Progress = Callable[[str, int], None]


async def move(source: Path, url: str, *, batch: int = BATCH_ROWS, progress: Progress | None = None) -> list[Moved]:
    """Copy the SQLite database at `source` (a file that exists: `run` checks) into the empty
    PostgreSQL database at `url`."""
    await db.create(source)  # this release's schema (as the server's start would)
    await asyncio.to_thread(_roll_up_metrics, source)
    await db.create(url)
    import asyncpg

    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    conn = await asyncpg.connect(url)
    try:
        order, columns = await _plan(src, conn)
        days = {table: queries.sqlite_days(src, table, column) for table, column in db.PARTITIONED.items()
                if table in columns}
        await asyncio.to_thread(_make_days, url, days)
        moved: list[Moved] = []
        async with conn.transaction():
            for table in order:
                moved.append(await _copy(src, conn, table, columns[table], batch, progress))
            for table, column in await queries.pg_identity_columns(conn):
                await queries.pg_follow_identity(conn, table, column)
            for done in moved:
                copied = await queries.pg_count(conn, done.table)
                if copied != done.rows:
                    raise TransferError(f"table {done.table}: {done.rows} rows read, {copied} in the target:"
                                        " nothing was kept")
        return moved
    finally:
        await conn.close()
        src.close()


async def _plan(src: sqlite3.Connection, conn: Any) -> tuple[list[str], dict[str, list[tuple[str, str]]]]:
    """(the tables in copy order, their target columns); refuses a target that holds data or lacks a
    table of the source."""
    source_tables = queries.sqlite_tables(src)
    target = await queries.pg_tables(conn)
    missing = [t for t in source_tables if t not in target]
    if missing:
        raise TransferError(f"the target has no table {', '.join(missing)}: is the source from a newer release?")
    for table in source_tables:
        if await queries.pg_has_rows(conn, table):
            raise TransferError(f"the target database already holds data (table {table}): give an empty database;"
                                " nothing was copied")
    order = _parents_first(source_tables, await queries.pg_references(conn))
    source_columns = {t: set(queries.sqlite_columns(src, t)) for t in source_tables}
    return order, {t: [(name, kind) for name, kind in target[t] if name in source_columns[t]] for t in order}


def _roll_up_metrics(source: Path) -> None:
    """The source's metric samples not rolled up into their minutes yet (a server that was killed
    leaves some: store.MetricRollup) rolled up, so the minutes copied are whole: PostgreSQL keeps
    its minutes up to date at each commit and reads no samples for them."""
    conn = db.connect_writer(source)
    try:
        conn.begin()
        store.roll_up_metrics(conn)
        conn.commit()
    finally:
        conn.close()


def _make_days(url: str, days: dict[str, list[int]]) -> None:
    """A day partition for every day the source's history covers (else old rows would all land in
    the DEFAULT partition, which retention trims row by row instead of dropping days). Committed
    before the copy: a failed move leaves empty partitions, which retention drops in time."""
    conn = db.connect_writer(url)
    try:
        conn.begin()
        for table, wanted in days.items():
            store.ensure_day_partitions(conn, table, wanted)
        conn.commit()
    finally:
        conn.close()


def _parents_first(tables: list[str], references: list[tuple[str, str]]) -> list[str]:
    """`tables` ordered so a table comes after every table its foreign keys point to."""
    wanted = set(tables)
    parents = {t: {p for c, p in references if c == t and p != t and p in wanted} for t in tables}
    order: list[str] = []
    while parents:
        ready = sorted(t for t, ps in parents.items() if not ps - set(order))
        if not ready:
            raise TransferError(f"foreign keys form a cycle among {', '.join(sorted(parents))}")
        order += ready
        for t in ready:
            del parents[t]
    return order


async def _copy(src: sqlite3.Connection, conn: Any, table: str, columns: list[tuple[str, str]], batch: int,
                progress: Progress | None) -> Moved:
    names = [name for name, _ in columns]
    convert = [_CONVERTERS.get(kind, _as_is) for _, kind in columns]
    count = 0
    for rows in queries.sqlite_rows(src, table, names, batch):
        try:
            records = [tuple(None if value is None else fn(value) for fn, value in zip(convert, row, strict=True))
                       for row in rows]
        except (TypeError, ValueError) as exc:
            raise TransferError(f"table {table}: a value the target cannot hold ({exc}): nothing was kept") from None
        await conn.copy_records_to_table(table, records=records, columns=names)
        count += len(records)
        if progress is not None:
            progress(table, count)
    return Moved(table, count)


def _integer(value: Any) -> int:
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{value!r} in an integer column")
    return int(value)


def _text(value: Any) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return text.replace("\x00", "\ufffd")  # PostgreSQL text holds no NUL (the server stores U+FFFD too)


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _as_is(value: Any) -> Any:
    return value


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "bigint": _integer, "integer": _integer, "smallint": _integer,
    "double precision": float, "real": float, "numeric": float,
    "text": _text, "character varying": _text, "bytea": _bytes, "boolean": bool,
}


def describe(moved: list[Moved], seconds: float, source: Path, url: str) -> str:
    """What the command prints once the move is committed."""
    width = max((len(m.table) for m in moved), default=5)
    lines = [f"{m.table:<{width}}  {m.rows:>10,}" for m in moved if m.rows]
    total = sum(m.rows for m in moved)
    return "\n".join([*lines, f"moved {total:,} rows in {len(moved)} tables from sqlite:{source} to {mask_url(url)}"
                      f" in {seconds:.1f} s"])


def run(source: Path, url: str) -> int:
    """The command: move, then say what moved (stdout) or why nothing did (stderr, exit 1)."""
    if not source.is_file():
        print(f"dvic-central migrate: {source}: no such SQLite database (give --from sqlite:PATH, the"
              " dvic.sqlite3 of the data dir)", file=sys.stderr)
        return 1
    start = time.monotonic()

    def progress(table: str, rows: int) -> None:
        if rows % (BATCH_ROWS * 20) == 0:
            print(f"  {table}: {rows:,} rows", file=sys.stderr)

    try:
        moved = asyncio.run(move(source, url, progress=progress))
    except (TransferError, DatabaseUnavailable) as exc:
        print(f"dvic-central migrate: {exc}", file=sys.stderr)
        return 1
    print(describe(moved, time.monotonic() - start, source, url))
    return 0
