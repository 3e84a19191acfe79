"""bench.node_frames runs at a tiny size (figures are not checked, only that there are some)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_node_frames_smoke(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    result = subprocess.run([sys.executable, "-m", "bench.node_frames", "--lines", "5", "--rounds", "2",
                             "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(out.read_text())["figures"]
    assert figures["logs x5: a line"]["value"] > 0 and figures["logs x5: the schema alone"]["value"] > 0
