"""bench.pg_textindex at a tiny size on a real PostgreSQL: every word split and every index variant
is measured, and the merging connection runs only with step 14's index."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench.benchkit import run_bench
from tests.support.postgres import PostgresUnavailable, bindir


def test_pg_textindex_smoke(tmp_path: Path) -> None:
    try:
        bindir()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    doc = run_bench("bench.pg_textindex", tmp_path, "--rows", "3000", "--per-commit", "500", "--rate", "20000",
                    "--rounds", "1", "--merge-every", "0.1", timeout=180)
    figures = doc["figures"]
    splits = [name for name in figures if name.startswith("split: ")]
    assert len(splits) == 6 and all(figures[name]["value"] >= 0 for name in splits)
    inserts = [name for name in figures if name.startswith("insert, ")]
    assert len(inserts) == 3
    assert figures["  merges"]["value"] >= 1
