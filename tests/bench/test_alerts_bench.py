"""bench.alerts_eval runs end to end at a tiny size (figures are reported, not checked)."""

from __future__ import annotations

from pathlib import Path

from tests.bench.benchkit import measured, run_bench


def test_alerts_eval_smoke(tmp_path: Path) -> None:
    doc = run_bench("bench.alerts_eval", tmp_path, "--nodes", "40", "--passes", "2")
    figures = doc["figures"]
    assert doc["params"]["rules"] == 20
    assert measured(figures, "CPU per full pass (median)", "ms") > 0
    measured(figures, "share of one core at one pass every 10 s", "%")
    assert figures["share of one core at one pass every 10 s"]["ok"] in (True, False)  # a verdict
    measured(figures, "log rules: CPU per line", "µs")
    assert figures["  commits for it"]["value"] == 1  # a hall going dark is one commit
    assert figures["notices handed to the sink"]["value"] >= 20  # 10 offline alerts opened, then resolved
