"""Fixtures of the notification tests: a real migrated database with central's writer, real HTTP
receivers started per test (tests/support/receivers.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.receivers import HttpReceiver

from .helpers import Database, close_database, open_database


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    database = await open_database(tmp_path / "central")
    try:
        yield database
    finally:
        await close_database(database)


@pytest.fixture
def receiver() -> Iterator[HttpReceiver]:
    with HttpReceiver() as server:
        yield server


@pytest.fixture
def second_receiver() -> Iterator[HttpReceiver]:
    """Another receiver, for a test that sends to two."""
    with HttpReceiver() as server:
        yield server
