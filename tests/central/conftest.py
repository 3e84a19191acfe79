"""Fixtures of the server tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from central import db


@pytest.fixture
async def migrated_db(tmp_path: Path) -> Path:
    """A real SQLite database in tmp_path with the server's current schema, closed."""
    path = tmp_path / "central.sqlite3"
    await db.create(path)
    return path
