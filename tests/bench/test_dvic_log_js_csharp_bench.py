"""bench.dvic_log_js_csharp runs end to end at a tiny size, so it does not rot (figures are not checked)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_dvic_log_js_csharp_smoke(tmp_path: Path) -> None:
    if not (shutil.which("node") and shutil.which("mcs") and shutil.which("mono")):
        pytest.skip("node, mcs and mono are needed")
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.dvic_log_js_csharp", "--records", "4000", "--repeat", "1", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(out.read_text())["figures"]
    assert sorted(figures) == sorted(
        f"{name}, {t} thread(s)" for name in ("python LogFile.write", "javascript log.info", "c# Logger.Info (mono)")
        for t in (1, 4)
    )  # fmt: skip
    assert all(rate > 0 for rate in figures.values())
