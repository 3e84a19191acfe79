"""Shared fixtures: real central servers (subprocesses) and an environment for the real `dvic`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import clean_env
from tests.support.server import CentralServer


@pytest.fixture
def central_server(tmp_path: Path) -> Iterator[CentralServer]:
    """A server of the test's own: for a test that restarts it or changes what every test would see
    (a release, an account's role, a whole-fleet view)."""
    with CentralServer(tmp_path / "central") as server:
        yield server


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CentralServer]:
    """One server for the tests of a module that only read, or enroll nodes and accounts of names
    no other test of the module uses (a server start costs one to two seconds)."""
    with CentralServer(tmp_path_factory.mktemp("shared") / "central") as server:
        yield server


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CentralServer]:
    """A server that lets people ask for an account (self-registration is off by default), shared
    by a module's tests as `shared_server` is."""
    with CentralServer(tmp_path_factory.mktemp("open") / "central", extra_args=("--self-register",)) as server:
        yield server


@pytest.fixture
def fast_central_server(tmp_path: Path) -> Iterator[CentralServer]:
    """Short interval and offline window, for presence tests."""
    with CentralServer(tmp_path / "central", interval=1.0, offline_after=2.0) as server:
        yield server


@pytest.fixture
def dvic_env(tmp_path: Path) -> dict[str, str]:
    """An environment for `dvic` with an empty config dir and no inherited DVIC_* settings."""
    return clean_env(tmp_path)
