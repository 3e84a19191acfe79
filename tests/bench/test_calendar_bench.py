"""bench.calendar runs at a tiny size (figures are not checked, only that there are some)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_calendar_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    result = subprocess.run([sys.executable, "-m", "bench.calendar", "--bookings", "400", "--runbooks", "20",
                             "--queries", "3", "--idle-seconds", "0.5", "--cli-runs", "1", "--json", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(out.read_text())["figures"]
    assert figures["GET /bookings?at=now: median"]["value"] > 0
    assert figures["bookings holding at now (rows answered)"]["value"] > 0
    assert figures["scheduler wake-up (scan and next sleep, real Scheduler), median of 50"]["value"] >= 0
