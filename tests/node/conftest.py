"""Fixtures for the node daemon tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# test modules import node_support too: make this folder importable whatever pytest's import mode
sys.path.insert(0, str(Path(__file__).parent))
from node_support import Pki, make_pki  # noqa: E402


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes several seconds by nature (a kill grace, a deadline)")
