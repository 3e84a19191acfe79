"""Servers the console and CLI tests share the set-up of (tests/conftest.py has the plain ones)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import CentralServer


@pytest.fixture
def quiet_server(tmp_path: Path) -> Iterator[CentralServer]:
    """A server of the test's own with a long offline window: a scripted node sends only what the test
    says, and keep-alive nodes stay online through the test."""
    with CentralServer(tmp_path / "central", offline_after=300.0) as server:
        yield server


@pytest.fixture
def alerting_server(tmp_path: Path) -> Iterator[CentralServer]:
    """A quiet server that evaluates alerts every 0.5 s: a test's alert fires without a wait."""
    with CentralServer(tmp_path / "central", offline_after=60.0, extra_args=("--alerts-interval", "0.5")) as server:
        yield server
