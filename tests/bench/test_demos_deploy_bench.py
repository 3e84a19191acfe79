"""bench.demos_deploy runs end to end at a tiny size (figures are reported, not checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_demos_deploy_smoke(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, "-m", "bench.demos_deploy", "--nodes", "2", "--size", "1", "--batch", "1",
                           "--timeout", "120", "--json", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(out.read_text())["figures"]
    assert figures["nodes healthy"]["value"] == "2/2"
    assert figures["deploy to all healthy"]["ok"] in (True, False)  # a verdict, whichever it is
    assert figures["server RSS peak"]["value"] > 1
