"""bench.failover at a tiny size: replicas on PostgreSQL, one killed -9. What must hold whatever the
machine's speed is checked (nothing lost, stored twice, missed by the subscriber on a survivor, or
shown offline; every node of the killed replica connected again); the times are only measured."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench.benchkit import run_bench


@pytest.mark.timeout(240)
def test_failover_bench_smoke(tmp_path: Path) -> None:
    doc = run_bench("bench.failover", tmp_path, "--nodes", "24", "--replicas", "3", "--duration", "14",
                    "--kill-after", "6", "--procs", "1", timeout=230)
    figures = doc["figures"]
    for name in ("nodes connected", "every node online as the last replica shows it, after the go",
                 "every node listed online by a survivor after the kill", "nodes that could not reconnect",
                 "acked lines missing from the database", "lines stored twice",
                 "acked lines the subscriber on a survivor never got",
                 "nodes still shown offline at the end of the sending"):
        assert figures[name]["ok"] is True, (name, figures[name])
    assert figures["nodes shown offline after the kill, until they reconnected"]["value"] == 0  # fast here
    moved = figures["all 8 nodes of the killed replica connected to another (loss -> welcome)"]
    assert isinstance(moved["value"], float), moved  # a time: every one of them is connected again
