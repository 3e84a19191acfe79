"""bench.migrate at a tiny size: it moves every line and reports its rates."""

from __future__ import annotations

from pathlib import Path

from tests.bench.benchkit import measured, run_bench


def test_migrate_bench_smoke(tmp_path: Path) -> None:
    doc = run_bench("bench.migrate", tmp_path, "--lines", "3000", "--nodes", "5", timeout=180)
    figures = doc["figures"]
    assert figures["move: log lines moved"]["value"] == 3000
    assert figures["move: rows"]["value"] > 3000  # the nodes and samples too
    measured(figures, "move: rows/s", "rows/s")
    measured(figures, "direct COPY of the log rows: rows/s", "rows/s")
