"""A real database with the server's schema and its started writer (tests and bench)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from central import db
from central.dbconn import ReadDB, Target
from central.writer import Writer


async def started_writer(path: Path, commit_interval: float = 0.02) -> Writer:
    """The database at `path` created with the current schema, and a started Writer on it."""
    await db.create(path)
    writer = Writer(path, commit_interval)
    await writer.start()
    return writer


@asynccontextmanager
async def opened_store(where: Target | Path | str, commit_interval: float = 0.005) -> AsyncIterator[tuple[Writer, ReadDB]]:
    """The database at `where` (either engine) with the current schema, a started Writer and the
    server's reads on it; both closed at the end."""
    await db.create(where)
    writer = Writer(where, commit_interval=commit_interval)
    await writer.start()
    reads = await db.open_reads(where)
    try:
        yield writer, reads
    finally:
        await writer.close()
        await reads.close()
