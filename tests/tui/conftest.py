"""Fixtures for the console and CLI tests: a fake API server and a way to run the real `dvic`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.tui.tuifake import FakeCentral
from tests.tui_remote.clikit import clean_env


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
    return clean_env(tmp_path)
