"""bench.demo_supervise runs end to end at a tiny size (figures are reported, not checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_demo_supervise_smoke(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, "-m", "bench.demo_supervise", "--demos", "2", "--kills", "2",
                           "--minutes", "0.05", "--warmup", "0", "--json", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(out.read_text())["figures"]
    assert figures["daemon RSS at the end"]["value"] > 1
    assert figures["first restart after kill -9 (max)"]["value"] > 0
    assert figures["first restart after kill -9 (max)"]["ok"] in (True, False)  # a verdict, whichever it is
