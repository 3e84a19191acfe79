"""Shared fixtures: a real central server subprocess per test that asks for one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import CentralServer


@pytest.fixture
def central_server(tmp_path: Path) -> Iterator[CentralServer]:
    server = CentralServer(tmp_path / "central").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fast_central_server(tmp_path: Path) -> Iterator[CentralServer]:
    """Short interval and offline window, for presence tests."""
    server = CentralServer(tmp_path / "central", interval=1.0, offline_after=2.0).start()
    try:
        yield server
    finally:
        server.stop()
