"""bench.console runs end to end at a tiny size (the figures themselves are not checked)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.bench.benchkit import REPO, measured, run_bench


def test_console_bench_smoke(tmp_path: Path) -> None:
    figures = run_bench("bench.console", tmp_path, "--nodes", "6", "--interval", "1", "--settle", "1.5",
                        "--measure", "1", "--keys", "3", "--key-gap", "0.1", "--procs", "1", timeout=120)["figures"]
    assert figures["simulated nodes connected"]["value"] == "6 of 6"
    assert figures["start-up to the first paint of the fleet with rows"]["value"] > 0, figures
    # CPU is read in clock ticks (10 ms): six quiet nodes for one second may cost less than one.
    measured(figures, "console CPU, following the live fleet", "% of one core")
    assert measured(figures, "console RSS", "MB") > 1  # sampled from the running console
    assert figures["  key presses timed"]["value"] == 3, figures
    # The console really drew on its terminal. (While following, a small quiet fleet may change
    # so few cells that the rate rounds to 0 KiB/s: cells are repainted only when they change.)
    assert figures["  terminal output before that (start-up, first paints)"]["value"] > 0
    measured(figures, "terminal output", "KiB/s")


def test_console_bench_rejects_bad_options() -> None:
    result = subprocess.run([sys.executable, "-m", "bench.console", "--nodes", "0"], cwd=REPO,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "--nodes" in result.stderr and "expected an integer >= 1" in result.stderr
    result = subprocess.run([sys.executable, "-m", "bench.console", "--nodes", "1", "--procs", "2"], cwd=REPO,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "more processes than nodes" in result.stderr
