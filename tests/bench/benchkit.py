"""Running a benchmark end to end at a tiny size, and reading the figures it wrote."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def run_bench(module: str, tmp_path: Path, *args: str, timeout: float = 90) -> dict[str, Any]:
    """`python3 -m MODULE ARGS --json FILE`, which must succeed and report figures: the JSON document."""
    out = tmp_path / "figures.json"
    result = subprocess.run([sys.executable, "-m", module, *args, "--json", str(out)], cwd=REPO,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout + result.stderr
    doc = json.loads(out.read_text())
    assert doc["figures"], doc
    return doc


def measured(figures: dict[str, Any], name: str, unit: str) -> float:
    """The value of a measured figure (a CPU share, a rate, a size), checked to be one: present, a finite
    number that is not negative, in `unit`. Whether it is high or low is not checked (timing)."""
    figure = figures[name]
    value = figure["value"]
    assert isinstance(value, int | float) and not isinstance(value, bool), figure
    assert math.isfinite(value) and value >= 0, figure
    assert figure["unit"] == unit, figure
    return float(value)
