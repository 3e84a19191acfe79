"""A real SQLite database with the server's schema and its started writer (tests and bench)."""

from __future__ import annotations

from pathlib import Path

from central import db
from central.writer import Writer


async def started_writer(path: Path, commit_interval: float = 0.02) -> Writer:
    """The database at `path` created with the current schema, and a started Writer on it."""
    await db.create(path)
    writer = Writer(path, commit_interval)
    await writer.start()
    return writer
