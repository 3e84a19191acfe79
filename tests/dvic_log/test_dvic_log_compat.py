"""dvic_log on the oldest supported Python: the stand-alone checks under 3.8, and a vermin scan."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dvic_log_testkit import LIB_DIR

from tests.support.daemon import PY38

HERE = Path(__file__).resolve().parent
PACKAGE = LIB_DIR / "dvic_log"


def run_compat_checks(python: str, work: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVIC_LOG_", "PYTHON"))}
    return subprocess.run(
        [python, str(HERE / "compat_check.py"), str(LIB_DIR), str(work)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.skipif(not PY38.exists(), reason=f"{PY38} not installed")
def test_the_library_works_on_python_3_8(tmp_path: Path):
    result = run_compat_checks(str(PY38), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "python 3.8" in result.stdout and "7 of 7 checks passed" in result.stdout


def test_the_compat_checks_pass_on_this_python(tmp_path: Path):
    # Keeps the stand-alone script honest where 3.8 is missing (it must fail when the library breaks).
    result = run_compat_checks(sys.executable, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def _vermin() -> str | None:
    beside = Path(sys.executable).with_name("vermin")
    return str(beside) if beside.exists() else shutil.which("vermin")


def test_vermin_finds_nothing_newer_than_python_3_8():
    vermin = _vermin()
    if vermin is None:
        pytest.skip("vermin not installed")
    # compat_check.py loads tests/support/wait.py under 3.8 too
    files = sorted(str(p) for p in PACKAGE.glob("*.py")) + [str(HERE / "compat_check.py"),
                                                            str(HERE.parent / "support" / "wait.py")]
    result = subprocess.run(
        [vermin, "-t=3.8-", "--no-tips", "--violations", *files], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_package_uses_only_the_standard_library():
    # Every import in the package must resolve on a bare interpreter: run one with no site-packages.
    code = "import dvic_log, dvic_log.__main__, dvic_log._run; print('ok')"
    result = subprocess.run(
        [sys.executable, "-S", "-I", "-c", f"import sys; sys.path.insert(0, {str(LIB_DIR)!r}); {code}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == "ok", result.stderr
