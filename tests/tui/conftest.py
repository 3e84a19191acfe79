"""Fixtures for the console and CLI tests: a fake API server and a way to run the real `dvic`."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tuifake import FakeCentral

ROOT = Path(__file__).resolve().parents[2]


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


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def dvic_env(tmp_path: Path) -> dict[str, str]:
    """An environment with an empty config dir and no inherited DVIC_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVIC_")}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "xdg")
    env["PYTHONPATH"] = str(ROOT)
    env["COLUMNS"] = "160"
    return env


async def run_dvic(env: dict[str, str], *args: str, stdin: bytes | None = None, limit: float = 30) -> Result:
    """Runs the real `dvic` command (`python -m tui`) as a subprocess."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tui", *args, env=env, cwd=str(ROOT),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), limit)
    return Result(proc.returncode or 0, out.decode(), err.decode())
