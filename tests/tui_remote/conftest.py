"""Fixtures for the remote-control CLI tests: the real `dvic` commands against the real server."""

from __future__ import annotations

import pytest

from tests.support.cli import DvicRunner
from tests.support.server import CentralServer


@pytest.fixture
def dvic(shared_server: CentralServer, dvic_env: dict[str, str]) -> DvicRunner:
    """Runs `dvic` sub-commands as the admin (or another token) against the module's server."""
    return DvicRunner(shared_server, dvic_env)
