"""Fixtures for the remote-control CLI tests: the real `dvic` commands against the real server."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.server import CentralServer
from tests.tui_remote.clikit import DvicRunner, clean_env


@pytest.fixture
def dvic_env(tmp_path: Path) -> dict[str, str]:
    """An environment with an empty config dir and no inherited DVIC_* settings."""
    return clean_env(tmp_path)


@pytest.fixture
def dvic(central_server: CentralServer, dvic_env: dict[str, str]) -> DvicRunner:
    """Runs `dvic` sub-commands as the admin (or another token) against `central_server`."""
    return DvicRunner(central_server, dvic_env)
