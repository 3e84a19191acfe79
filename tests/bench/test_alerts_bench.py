"""bench.alerts_eval runs end to end at a tiny size (figures are reported, not checked)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_alerts_eval_smoke(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, "-m", "bench.alerts_eval", "--nodes", "40", "--passes", "2",
                           "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads(out.read_text())
    figures = doc["figures"]
    assert doc["params"]["rules"] == 20
    per_pass = figures["CPU per full pass (median)"]
    assert per_pass["unit"] == "ms" and math.isfinite(per_pass["value"]) and per_pass["value"] > 0
    assert figures["share of one core at one pass every 10 s"]["ok"] in (True, False)  # a verdict
    assert figures["  commits for it"]["value"] == 1  # a hall going dark is one commit
    assert figures["notices handed to the sink"]["value"] >= 20  # 10 offline alerts opened, then resolved
