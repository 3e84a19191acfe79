"""Fixtures for the remote-control CLI tests: the real `dvic` commands against the real server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.server import CentralServer
from tests.tui_remote.clikit import DvicRunner


@pytest.fixture
def dvic_env(tmp_path: Path) -> dict[str, str]:
    """An environment with an empty config dir and no inherited DVIC_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVIC_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    env["COLUMNS"] = "160"
    return env


@pytest.fixture
def dvic(central_server: CentralServer, dvic_env: dict[str, str]) -> DvicRunner:
    """Runs `dvic` sub-commands as the admin (or another token) against `central_server`."""
    return DvicRunner(central_server, dvic_env)
