"""Fixtures for the node daemon tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.support.pki import Pki, make_pki

# test modules import node_support too: make this folder importable whatever pytest's import mode
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))
