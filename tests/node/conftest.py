"""Fixtures for the node daemon tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.pki import Pki, make_pki

# test modules import node_support too: make this folder importable whatever pytest's import mode
sys.path.insert(0, str(Path(__file__).parent))
from demo_support import DemoRig, DemoServer, demo_node, new_tag  # noqa: E402


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def rig(pki: Pki, tmp_path: Path) -> AsyncIterator[DemoRig]:
    """A stand-in server for supervised demos and a node for it (tests/node/demo_support.py)."""
    async with DemoServer(pki) as srv:
        yield DemoRig(srv, demo_node(srv, tmp_path), new_tag())


@pytest.fixture
def logs_dir(tmp_path: Path) -> Path:
    """An empty directory for demos' log files (the daemon's --log-dir)."""
    directory = tmp_path / "logs"
    directory.mkdir()
    return directory


@pytest.fixture
def demo_proc() -> Iterator[subprocess.Popen[bytes]]:
    """A running process that stands for a demo (its files name its pid)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()
