"""The daemon stays one standard-library file that runs on Python 3.8."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_support import interpreters

from tests.support.daemon import NODE_SCRIPT


def imported_modules() -> dict[str, bool]:
    """Top-level modules the daemon imports -> whether the import is guarded by `except ImportError`."""
    tree = ast.parse(NODE_SCRIPT.read_text())
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id == "ImportError" for h in node.handlers):
            guarded |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    out: dict[str, bool] = {}
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            out[top] = out.get(top, True) and id(node) in guarded
    return out


def test_only_standard_library_imports_and_psutil_is_optional() -> None:
    mods = imported_modules()
    third_party = {m for m in mods if m not in sys.stdlib_module_names}
    assert third_party == {"psutil"}, third_party
    assert mods["psutil"] is True  # only inside try/except ImportError


def test_vermin_says_python_3_8_is_enough() -> None:
    # The test extra installs vermin beside this interpreter, which need not be on PATH.
    vermin = shutil.which("vermin") or shutil.which("vermin", path=str(Path(sys.executable).parent))
    if not vermin:
        pytest.skip("vermin not installed")
    out = subprocess.run([vermin, "-t=3.8-", "--no-tips", "--violations", str(NODE_SCRIPT)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("python", interpreters())
def test_runs_and_shows_its_options(python: str) -> None:
    out = subprocess.run([python, str(NODE_SCRIPT), "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    for option in ("--config", "--state-dir", "--log-dir", "-v"):
        assert option in out.stdout
