"""Fixtures of the server tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from central import db
from tests.support.postgres import Cluster, PostgresUnavailable, shared_cluster


@pytest.fixture
async def migrated_db(tmp_path: Path) -> Path:
    """A real SQLite database in tmp_path with the server's current schema, closed."""
    path = tmp_path / "central.sqlite3"
    await db.create(path)
    return path


@pytest.fixture(scope="session")
def pg_cluster() -> Cluster:
    """This test process's throw-away PostgreSQL cluster (tests/support/postgres.py)."""
    try:
        return shared_cluster()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
