"""Fixtures for the node daemon tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.pki import Pki, make_pki

# test modules import node_support too: make this folder importable whatever pytest's import mode
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


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
