"""bench.alerts_delivery runs end to end at a tiny size (figures are not checked, the counts are)."""

from __future__ import annotations

from pathlib import Path

from tests.bench.benchkit import run_bench


def test_alerts_delivery_smoke(tmp_path: Path) -> None:
    doc = run_bench("bench.alerts_delivery", tmp_path, "--nodes", "60", "--sweeps", "2", "--sweep-every", "0.1", "--singles", "2",
                    "--window", "1", "--quiet", "0.3")
    figures = doc["figures"]
    assert figures["burst: messages at the receivers (hall / pager)"]["ok"] is True
    assert figures["burst: subjects in those messages"]["value"] == "60 / 60"
    assert figures["one alert, quiet 0.01 s: submit -> receiver p50"]["value"] > 0
