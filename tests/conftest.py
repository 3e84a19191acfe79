"""Shared fixtures: real central servers (subprocesses) and an environment for the real `dvic`."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import clean_env
from tests.support.server import CentralServer


def pytest_configure(config: pytest.Config) -> None:
    """Demo log files of the whole run go to a directory of its own, not to /tmp (dvic_log's and the
    daemon's default), where this machine's own daemon (./up.sh) would ship them as its demos'.
    Tests that need a directory of their own still set DVIC_LOG_DIR themselves.

    Under pytest-xdist each worker gets a directory of its own inside the run's, so no two tests
    running at once share one; the run's directory (made by the controller) goes at the end."""
    if "DVIC_LOG_DIR" not in os.environ:
        os.environ["DVIC_LOG_DIR"] = os.environ[_RUN_LOG_DIR_VAR] = _RUN_LOG_DIR[0] = \
            tempfile.mkdtemp(prefix="dvic-test-logs.")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker and os.environ["DVIC_LOG_DIR"] == os.environ.get(_RUN_LOG_DIR_VAR):
        own = Path(os.environ["DVIC_LOG_DIR"]) / worker
        own.mkdir(exist_ok=True)
        os.environ["DVIC_LOG_DIR"] = str(own)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _RUN_LOG_DIR[0]:
        shutil.rmtree(_RUN_LOG_DIR[0], ignore_errors=True)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """A report's captured log may hold a lone surrogate (tests log odd text on purpose): an xdist worker
    sends its reports as UTF-8, which cannot carry one, and the worker would die with every test it had
    left. Show such characters escaped (\\udcff) instead; nothing else of the report changes."""
    report.sections = [(title, _utf8_safe(text)) for title, text in report.sections]


def _utf8_safe(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


_RUN_LOG_DIR = [""]  # made by this process: removed by it at the end
# The run's directory as the controller made it, inherited by the xdist workers it starts.
_RUN_LOG_DIR_VAR = "DVIC_TEST_RUN_LOG_DIR"


@pytest.fixture
def central_server(tmp_path: Path) -> Iterator[CentralServer]:
    """A server of the test's own: for a test that restarts it or changes what every test would see
    (a release, an account's role, a whole-fleet view)."""
    with CentralServer(tmp_path / "central") as server:
        yield server


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CentralServer]:
    """One server for the tests of a module that only read, or enroll nodes and accounts of names
    no other test of the module uses (a server start costs one to two seconds)."""
    with CentralServer(tmp_path_factory.mktemp("shared") / "central") as server:
        yield server


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CentralServer]:
    """A server that lets people ask for an account (self-registration is off by default), shared
    by a module's tests as `shared_server` is."""
    with CentralServer(tmp_path_factory.mktemp("open") / "central", extra_args=("--self-register",)) as server:
        yield server


@pytest.fixture
def fast_central_server(tmp_path: Path) -> Iterator[CentralServer]:
    """Short interval and offline window, for presence tests."""
    with CentralServer(tmp_path / "central", interval=1.0, offline_after=2.0) as server:
        yield server


@pytest.fixture
def dvic_env(tmp_path: Path) -> dict[str, str]:
    """An environment for `dvic` with an empty config dir and no inherited DVIC_* settings."""
    return clean_env(tmp_path)
