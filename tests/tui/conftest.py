"""Fixtures for the console and CLI tests: a fake API server and a way to run the real `dvic`."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.tui.clikit import ROOT
from tests.tui.tuifake import FakeCentral


@pytest.fixture
async def fake() -> AsyncIterator[FakeCentral]:
    server = await FakeCentral().start()
    yield server
    await server.stop()


@pytest.fixture
async def fake_tls(tmp_path: Path) -> AsyncIterator[FakeCentral]:
    server = await FakeCentral().start(tls_dir=tmp_path)
    yield server
    await server.stop()


@pytest.fixture
def dvic_env(tmp_path: Path) -> dict[str, str]:
    """An environment with an empty config dir and no inherited DVIC_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVIC_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    env["PYTHONPATH"] = str(ROOT)
    env["COLUMNS"] = "160"
    return env
