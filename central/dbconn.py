"""The engine-neutral connections: what a write (store.py's `WriteFn`) and a read (queries.py) get,
whether the database is the embedded SQLite file or a PostgreSQL server (docs/architecture.md,
"Storage engines").

- Writes: `WriteConn`, synchronous (`execute(sql, params)` -> cursor with `rowcount`, `fetchone()`,
  `fetchall()`; `executemany`; `dialect`). On SQLite it IS the writer thread's `sqlite3.Connection`
  (a subclass adding `dialect` and the transaction verbs), so the writer's hot path costs what it
  did. On PostgreSQL the writer thread owns a private event loop and an asyncpg connection and
  runs each call to completion on it (that thread does nothing else).
- Reads: `ReadDB`, asynchronous, today's call shape:
  `async with db.execute(sql, params) as cur: await cur.fetchall()`; rows have index and key
  access. SQLite: one read-only aiosqlite connection; PostgreSQL: an asyncpg pool.

SQL is written once with `?` placeholders; the PostgreSQL side turns them into `$1..$n`
(`numbered`). The few statements that must differ per engine pick by `dialect_of(conn)` (writes)
or `db.dialect` (reads).

This module runs statements it is handed and the transaction verbs; it holds no other SQL
(tests/central/test_sql_placement.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import sqlite3
import sys
import urllib.parse
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import aiosqlite

Dialect = Literal["sqlite", "postgresql"]


def _asyncpg() -> Any:
    """asyncpg, imported on first use: an installation on SQLite never loads it (2 MB of a server's RSS)."""
    import asyncpg

    return asyncpg


def conflicts() -> tuple[type[Exception], ...]:
    """What a write that broke a UNIQUE, FOREIGN KEY or NOT NULL rule (a name taken...) raises from
    Writer.submit to its caller, on either engine, the rest of the group commit unharmed: `except
    conflicts():`. asyncpg's error is named only once asyncpg is loaded (no PostgreSQL write ran before)."""
    pg = sys.modules.get("asyncpg")
    if pg is None:
        return (sqlite3.IntegrityError,)
    return (sqlite3.IntegrityError, pg.IntegrityConstraintViolationError)


# -- where the database is ----------------------------------------------------------------------
class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached or opened; the message names it (password masked)."""


@dataclass(frozen=True)
class Target:
    """A database the server uses: the SQLite file at `path`, or the PostgreSQL server at `url`."""

    dialect: Dialect
    path: Path | None = None
    url: str = ""

    @property
    def masked(self) -> str:
        """How to name it in messages and logs: the URL with its password replaced by ***."""
        return mask_url(self.url) if self.dialect == "postgresql" else f"sqlite:{self.path}"


def target(where: Target | Path | str) -> Target:
    """`where` as a Target: a Path or `sqlite:PATH` is a SQLite file, `postgresql://...` a server."""
    if isinstance(where, Target):
        return where
    if isinstance(where, Path):
        return Target("sqlite", path=where)
    if where.startswith(("postgresql://", "postgres://")):
        return Target("postgresql", url=where)
    if where.startswith("sqlite:"):
        return Target("sqlite", path=Path(where.removeprefix("sqlite:")).expanduser())
    raise ValueError(f"database: expected postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE or sqlite:PATH,"
                     f" got {mask_url(where)!r}")


def mask_url(url: str) -> str:
    """`url` with the password (if any) shown as ***."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable database URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


# -- placeholders --------------------------------------------------------------------------------
_TOKENS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|\?|[^'\"?-]+|-")


@functools.lru_cache(maxsize=2048)
def numbered(sql: str) -> str:
    """`?` placeholders as PostgreSQL's `$1..$n`, leaving quoted strings, names and comments alone."""
    out: list[str] = []
    n = 0
    for token in _TOKENS.findall(sql):
        if token == "?":
            n += 1
            out.append(f"${n}")
        else:
            out.append(token)
    return "".join(out)


# -- the writer's side -----------------------------------------------------------------------------
class WriteCursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def __iter__(self) -> Iterator[Any]: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class WriteConn(Protocol):
    """What a WriteFn gets: run statements inside the writer's transaction. A plain
    `sqlite3.Connection` is one (tests and benchmarks hand theirs to WriteFns); `dialect_of` tells
    the engine."""

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> WriteCursor: ...

    def executemany(self, sql: str, params: Iterable[Sequence[Any]], /) -> WriteCursor: ...


def dialect_of(conn: WriteConn) -> str:
    """"sqlite" or "postgresql": for the few statements that differ per engine."""
    return getattr(conn, "dialect", "sqlite")


class WriterConn(WriteConn, Protocol):
    """The writer's own view: a transaction's start and end, and how to tell a storage failure.
    (Savepoints are statements, `SAVEPOINT x` / `ROLLBACK TO x` / `RELEASE x`: the same text on
    both engines.)"""

    @property
    def dialect(self) -> str: ...

    errors: tuple[type[BaseException], ...]

    @property
    def in_transaction(self) -> bool: ...

    def begin(self) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def storage_failure(self, exc: BaseException) -> bool: ...

    def close(self) -> None: ...


def new_row_id(conn: WriteConn, insert: str, params: Sequence[Any]) -> int:
    """Run one INSERT into a table keyed by `id`; the new row's id (RETURNING, on both engines;
    never `lastrowid`, which PostgreSQL has not)."""
    return int(conn.execute(insert + " RETURNING id", params).fetchone()[0])


# Primary SQLite result codes that mean "the storage is unwell", not "this write was wrong":
# BUSY, NOMEM, READONLY, IOERR, CORRUPT, FULL, CANTOPEN.
_SQLITE_STORAGE_CODES = {5, 7, 8, 10, 11, 13, 14}


class _TransactionVerbs:
    """The writer's transaction verbs, the same on both engines: each connection runs a verb its own
    way (`_verb`) and says how a write transaction begins (`BEGIN`)."""

    __slots__ = ()
    BEGIN = "BEGIN"
    if TYPE_CHECKING:  # (sqlite3's own attribute; PgWriteConn's property)
        @property
        def in_transaction(self) -> bool: ...

    def _verb(self, sql: str) -> None:
        raise NotImplementedError

    def begin(self) -> None:
        self._verb(self.BEGIN)

    def commit(self) -> None:
        self._verb("COMMIT")

    def rollback(self) -> None:
        if self.in_transaction:
            self._verb("ROLLBACK")


class SqliteWriteConn(_TransactionVerbs, sqlite3.Connection):
    """The writer's sqlite3 connection itself (made by `sqlite3.connect(factory=...)`): statements
    go straight to sqlite3, as before; only the transaction verbs are methods."""

    # No instance __dict__: every `conn.execute` of every write then finds the method as fast as
    # on sqlite3.Connection itself.
    __slots__ = ()
    dialect = "sqlite"
    errors: tuple[type[BaseException], ...] = (sqlite3.Error,)
    BEGIN = "BEGIN IMMEDIATE"

    def _verb(self, sql: str) -> None:
        self.execute(sql)

    def storage_failure(self, exc: BaseException) -> bool:
        code = getattr(exc, "sqlite_errorcode", None)
        return isinstance(exc, sqlite3.OperationalError) and code is not None and (code & 0xFF) in _SQLITE_STORAGE_CODES


# SQLSTATE classes that mean the server or the link is unwell, not that the statement was wrong:
# connection exception, insufficient resources (disk full...), operator intervention (shutdown),
# system error, internal error.
_PG_STORAGE_CLASSES = ("08", "53", "57", "58", "XX")
# Prepared statements kept per writer connection (the writer runs the same few hundred texts).
_PG_STATEMENTS = 512
# Longest a writer statement may take before the writer gives up on the connection.
PG_COMMAND_TIMEOUT_S = 60.0


def _pg_errors() -> tuple[type[BaseException], ...]:
    asyncpg = _asyncpg()
    return (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, asyncio.TimeoutError)


def _text_safe(params: Sequence[Any]) -> Sequence[Any]:
    """PostgreSQL text cannot hold NUL (SQLite's can): a NUL in a text parameter is stored as
    U+FFFD instead of failing the write (docs/operations.md, "PostgreSQL")."""
    if any(isinstance(p, str) and "\x00" in p for p in params):
        return [p.replace("\x00", "\ufffd") if isinstance(p, str) else p for p in params]
    return params


def _status_count(status: str | None) -> int:
    """Rows a command touched, from its status tag ("INSERT 0 5", "UPDATE 3", "DELETE 0"...)."""
    if not status:
        return -1
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else -1


# Statements that read or change rows (prepared once, then cached per connection).
_ROWS_STATEMENT = re.compile(r"\s*(SELECT|WITH|INSERT|UPDATE|DELETE)\b", re.IGNORECASE)


class _Rows:
    """A finished statement's rows and row count (a WriteCursor)."""

    __slots__ = ("_rows", "rowcount")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Any]:
        return self._rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)


class PgWriteConn(_TransactionVerbs):
    """The writer's PostgreSQL connection: an asyncpg connection driven by a private event loop
    owned by the writer thread. Every call runs to completion before it returns. A lost connection
    is made again at the next transaction (the batch in flight fails: its callers are not told
    it was stored, nodes keep their spools)."""

    dialect = "postgresql"

    def __init__(self, url: str) -> None:
        self.url = url
        self.errors = _pg_errors()
        self._loop = asyncio.new_event_loop()
        self._conn: Any = None
        self._statements: OrderedDict[str, Any] = OrderedDict()

    def open(self) -> None:
        try:
            self._conn = self._loop.run_until_complete(
                _asyncpg().connect(self.url, command_timeout=PG_COMMAND_TIMEOUT_S, timeout=10))
        except Exception as exc:
            raise DatabaseUnavailable(f"cannot connect to {mask_url(self.url)}: {_reason(exc)}") from exc
        self._statements.clear()

    @property
    def in_transaction(self) -> bool:
        return self._conn is not None and not self._conn.is_closed() and bool(self._conn.is_in_transaction())

    def _run(self, coro: Any) -> Any:
        return self._loop.run_until_complete(coro)

    def _prepared(self, sql: str) -> Any:
        stmt = self._statements.get(sql)
        if stmt is None:
            stmt = self._run(self._conn.prepare(numbered(sql)))
            self._statements[sql] = stmt
            if len(self._statements) > _PG_STATEMENTS:
                self._statements.popitem(last=False)
        else:
            self._statements.move_to_end(sql)
        return stmt

    def execute(self, sql: str, params: Sequence[Any] = (), /) -> _Rows:
        if not params and not _ROWS_STATEMENT.match(sql):
            # DDL, savepoints: run once in the simple protocol, never kept as prepared statements
            # (a partition made or dropped, a temporary table, would leave stale ones behind).
            return _Rows([], _status_count(self._run(self._conn.execute(sql))))
        stmt = self._prepared(sql)
        rows = self._run(stmt.fetch(*_text_safe(params)))
        return _Rows(rows, _status_count(stmt.get_statusmsg()))

    def executemany(self, sql: str, params: Iterable[Sequence[Any]], /) -> _Rows:
        stmt = self._prepared(sql)
        count = 0
        for one in params:
            self._run(stmt.fetch(*_text_safe(one)))
            count += max(0, _status_count(stmt.get_statusmsg()))
        return _Rows([], count)

    def _verb(self, sql: str) -> None:
        self._run(self._conn.execute(sql))

    def begin(self) -> None:
        if self._conn is None or self._conn.is_closed():
            self.open()  # raises DatabaseUnavailable while the server is away
        super().begin()

    def storage_failure(self, exc: BaseException) -> bool:
        return unavailable(exc)

    def close(self) -> None:
        try:
            if self._conn is not None and not self._conn.is_closed():
                self._run(self._conn.close(timeout=5))
        except Exception:  # closing a connection the server already dropped
            pass
        finally:
            self._conn = None
            self._loop.close()


def unavailable(exc: BaseException) -> bool:
    """True when `exc` says the PostgreSQL server or the link to it is unwell (not the statement)."""
    state = getattr(exc, "sqlstate", None)
    if isinstance(state, str):
        return state[:2] in _PG_STORAGE_CLASSES
    pg = sys.modules.get("asyncpg")
    link_errors = (pg.InterfaceError,) if pg is not None else ()
    return isinstance(exc, (*link_errors, OSError, asyncio.TimeoutError, DatabaseUnavailable))


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def connect_sqlite_writer(path: Path) -> SqliteWriteConn:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=True, factory=SqliteWriteConn)
    assert isinstance(conn, SqliteWriteConn)
    return conn


# -- the read side ---------------------------------------------------------------------------------
class ReadCursor(Protocol):
    async def fetchone(self) -> Any: ...

    async def fetchall(self) -> Iterable[Any]: ...

    def __aiter__(self) -> AsyncIterator[Any]: ...


class ReadDB(Protocol):
    """What queries get: `async with db.execute(sql, params) as cur: rows = await cur.fetchall()`."""

    @property
    def dialect(self) -> str: ...

    def execute(self, sql: str, parameters: Iterable[Any] | None = None, /) -> contextlib.AbstractAsyncContextManager[Any]: ...

    async def close(self) -> None: ...


class SqliteReadDB(aiosqlite.Connection):
    """aiosqlite's connection itself, naming its dialect."""

    dialect = "sqlite"


class _FetchedCursor:
    """Rows already fetched, behind aiosqlite's cursor calls."""

    __slots__ = ("_rows",)

    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows

    async def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    async def fetchall(self) -> list[Any]:
        return self._rows

    async def __aiter__(self) -> AsyncIterator[Any]:
        for row in self._rows:
            yield row


class PgReadDB:
    """Reads over an asyncpg pool. Each statement runs on a pooled connection in autocommit, so a
    read sees everything committed before it started (as SQLite's WAL readers do)."""

    dialect = "postgresql"

    def __init__(self, pool: Any, url: str) -> None:
        self.pool = pool
        self.url = url

    @contextlib.asynccontextmanager
    async def execute(self, sql: str, parameters: Iterable[Any] | None = None, /) -> AsyncIterator[_FetchedCursor]:
        try:
            rows = await self.pool.fetch(numbered(sql), *_text_safe(tuple(parameters or ())))
        except Exception as exc:
            if not unavailable(exc):
                raise
            raise DatabaseUnavailable(f"the database {mask_url(self.url)} is unavailable: {_reason(exc)}") from exc
        yield _FetchedCursor(rows)

    async def close(self) -> None:
        await self.pool.close()


async def open_pg_reads(url: str, *, min_size: int = 1, max_size: int = 8) -> PgReadDB:
    try:
        pool = await _asyncpg().create_pool(url, min_size=min_size, max_size=max_size, timeout=10,
                                         command_timeout=PG_COMMAND_TIMEOUT_S)
    except Exception as exc:
        raise DatabaseUnavailable(f"cannot connect to {mask_url(url)}: {_reason(exc)}") from exc
    return PgReadDB(pool, url)
