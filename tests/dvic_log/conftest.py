"""Fixtures for the dvic_log tests: every test writes into its own temporary log directory."""

import os
import sys
from pathlib import Path

import pytest

# The tests import their small toolkit from this directory whatever pytest's import mode is.
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture
def log_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh directory set as $DVIC_LOG_DIR, with no size cap override."""
    directory = tmp_path / "logs"
    directory.mkdir()
    monkeypatch.setenv("DVIC_LOG_DIR", str(directory))
    monkeypatch.delenv("DVIC_LOG_MAX_BYTES", raising=False)
    monkeypatch.delenv("DVIC_LOG_KEEP_DAYS", raising=False)
    return directory
