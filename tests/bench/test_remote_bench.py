"""bench.remote runs end to end at a tiny size, counts results and leaves no daemon behind (no timing checks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.remote import percentiles
from tests.bench.benchkit import REPO
from tests.support.procs import pids_where


def daemons_under(path: Path) -> list[int]:
    """Pids of processes whose command line names a file under `path` (the fleet's bundles)."""
    return pids_where(lambda cmd: str(path).encode() in cmd and b"dvic_node.py" in cmd)


@pytest.mark.timeout(180)
def test_remote_bench_smoke(tmp_path: Path) -> None:
    work = tmp_path / "work"
    out = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.remote", "--runs", "3", "--cli-runs", "1", "--keystrokes", "6",
         "--nodes", "3", "--repeats", "1", "--online-timeout", "90", "--work-dir", str(work), "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=170)
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads(out.read_text())
    assert doc["api_run_ms"]["n"] == 3 and doc["cli_run_ms"]["n"] == 1 and doc["cli_imports_ms"]["n"] == 1
    assert doc["shell_echo_ms"]["n"] == 6 and doc["local_pty_echo_ms"]["n"] == 6
    assert doc["fleet_nodes"] == 3 and doc["fleet_exited"] == [3]
    assert len(doc["fleet_api_s"]) == 1 and len(doc["fleet_cli_s"]) == 1
    assert "added by server + daemon" in result.stdout
    assert daemons_under(work) == [], "a fleet daemon outlived the benchmark"
    assert os.listdir(work)  # the work dir was given: kept for inspection


def test_bad_sizes_are_refused_plainly() -> None:
    result = subprocess.run([sys.executable, "-m", "bench.remote", "--nodes", "-1"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--nodes must be >= 0, got -1" in result.stderr


def test_missing_daemon_interpreter_is_refused_before_starting(tmp_path: Path) -> None:
    work = tmp_path / "work"
    result = subprocess.run([sys.executable, "-m", "bench.remote", "--python", str(tmp_path / "nopython"),
                             "--work-dir", str(work)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"--python {tmp_path / 'nopython'}: no such executable" in result.stderr
    assert not work.exists()  # nothing was started or created


def test_percentiles_nearest_rank() -> None:
    stats = percentiles([i / 1000 for i in range(1, 101)])  # 1..100 ms
    assert stats["n"] == 100
    assert stats["p50"] == pytest.approx(50) and stats["p99"] == pytest.approx(99)
    assert stats["max"] == pytest.approx(100)
    assert percentiles([]) == {}
