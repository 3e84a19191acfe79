"""Fixtures of the server tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from central import db
from tests.support.postgres import Cluster, PostgresUnavailable, shared_cluster
from tests.support.replicas import Replicas
from tests.support.server import CentralServer


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


@pytest.fixture
def two_replicas(tmp_path: Path, pg_cluster: Cluster) -> Iterator[list[CentralServer]]:
    """Two real servers, r1 and r2 (`--replica`), on one fresh PostgreSQL database and one data dir
    (tests/support/replicas.py), offline after 3 s of silence."""
    with Replicas(tmp_path / "data", pg_cluster.fresh_database(), count=2, interval=1, offline_after=3) as servers:
        yield servers
