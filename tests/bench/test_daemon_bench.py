"""The node daemon benchmarks run end to end at tiny sizes and count correctly (figures are not checked)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.daemon_rig import RigError, check_lines, start_demos
from bench.glances_probe import count_samples, glances_command
from tests.bench.benchkit import REPO, measured, run_bench

HAVE_GLANCES = shutil.which("glances") is not None
HAVE_SCHEDSTAT = Path("/proc/self/schedstat").exists()


@pytest.mark.parametrize("variant", [[], ["--from-source", "--no-inotify"]], ids=["as-installed", "source-polling"])
def test_footprint_smoke_without_glances(tmp_path: Path, variant: list[str]) -> None:
    doc = run_bench("bench.daemon_footprint", tmp_path, "--minutes", "0.05", "--interval", "1", "--demos", "2",
                    "--warmup", "0", "--no-glances", *variant)
    figures = doc["figures"]
    assert ("daemon started" in doc["params"]) == bool(variant)
    assert ("daemon follows files" in doc["params"]) == bool(variant)
    assert figures["demo lines stored"]["value"] == 2 and figures["demo lines stored"]["ok"] is True
    assert figures["daemon metrics samples stored"]["value"] >= 1
    measured(figures, "daemon CPU", "% of one core")  # in 10 ms ticks: a few seconds may count none
    if HAVE_SCHEDSTAT:  # exact: the daemon worked in the window (metrics every second, its files)
        assert measured(figures, "daemon CPU (schedstat, exact)", "% of one core") > 0
    assert figures["daemon RSS at the end"]["value"] > 1
    assert "Glances CPU" not in figures
    assert any("Glances not measured: --no-glances given" in note for note in doc["notes"])


@pytest.mark.skipif(not HAVE_GLANCES, reason="glances is not installed (pip install glances); daemon part tested above")
def test_footprint_smoke_beside_glances(tmp_path: Path) -> None:
    doc = run_bench("bench.daemon_footprint", tmp_path, "--minutes", "0.05", "--interval", "1", "--demos", "2",
                    "--warmup", "0")
    figures = doc["figures"]
    assert figures["Glances samples"]["value"] >= 1
    assert figures["Glances RSS at the end"]["value"] > 1
    assert figures["Glances / daemon RSS"]["value"] > 0
    assert figures["Glances / daemon CPU (schedstat)"]["ok"] in (True, False)  # a verdict, whichever it is
    assert doc["params"]["glances"] != "unknown"


def test_tailing_smoke_every_line_once(tmp_path: Path) -> None:
    doc = run_bench("bench.daemon_tailing", tmp_path, "--rate", "300", "--demos", "2", "--duration", "1")
    figures = doc["figures"]
    assert figures["lines written"]["value"] == 300
    assert figures["lines written / stored (API)"]["value"] == "300 / 300"
    assert figures["lines written / stored (API)"]["ok"] is True
    assert figures["  missing / duplicated / unexpected"]["value"] == "0 / 0 / 0"
    measured(figures, "daemon CPU while the demos write", "% of one core")  # 10 ms ticks: maybe none
    assert measured(figures, "daemon RSS at the end", "MB") > 1  # sampled from the running daemon


@pytest.mark.parametrize("whatif", [[], ["--whatif-coalesce", "0.05"]], ids=["as-is", "whatif-coalesce"])
def test_line_latency_smoke_times_every_line(tmp_path: Path, whatif: list[str]) -> None:
    doc = run_bench("bench.line_latency", tmp_path, "--demos", "1", "--rate", "20", "--duration", "1", *whatif)
    figures = doc["figures"]
    assert (doc["params"].get("WHAT-IF daemon COALESCE_S") == 0.05) == bool(whatif)
    assert figures["lines written / timed on the stream"]["value"] == "20 / 20"
    assert figures["lines written / stored (API)"]["ok"] is True
    assert 0 < figures["latency p50"]["value"] <= figures["latency max"]["value"]


def test_check_lines_finds_missing_duplicated_and_foreign_lines() -> None:
    stored = [{"msg": "bench a 00000000 x"}, {"msg": "bench a 00000002 x"}, {"msg": "bench a 00000002 x"},
              {"msg": "bench b 00000000 x"}, {"msg": "something else"}, {"msg": "bench zz 00000001"}]
    check = check_lines(stored, {"a": 3, "b": 1})
    assert (check.written, check.stored, check.missing, check.duplicates, check.foreign) == (4, 6, 1, 1, 2)
    assert not check.ok
    assert check_lines([{"msg": "bench a 00000000 y"}], {"a": 1}).ok


def test_glances_csv_rows_are_counted_without_the_header(tmp_path: Path) -> None:
    csv = tmp_path / "g.csv"
    assert count_samples(csv) == 0  # not written yet
    csv.write_text("cpu.total,load.min1\n")
    assert count_samples(csv) == 0
    csv.write_text("cpu.total,load.min1\n1.0,0.5\n2.0,0.4\n")
    assert count_samples(csv) == 2


def test_missing_glances_gives_no_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no glances there
    assert glances_command(5) is None
    command = glances_command(5, "/opt/glances/bin/glances")
    assert command is not None and command[0] == "/opt/glances/bin/glances" and "-t" in command


def test_demo_that_cannot_create_its_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RigError, match=r"demo broken exited \(\d+\) before 'ready'"):
        start_demos(tmp_path / "no-such-dir", ["broken"], timeout=30)


@pytest.mark.parametrize(("args", "message"), [
    (["--rate", "0"], "--rate must be > 0"),
    (["--count", "-1"], "--count must be >= 0"),
])
def test_demo_writer_refuses_bad_options(args: list[str], message: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO / "lib" / "python"))
    result = subprocess.run([sys.executable, str(REPO / "bench" / "demo_writer.py"), "--name", "x", *args],
                            capture_output=True, text=True, timeout=30, env=env)
    assert result.returncode == 2
    assert message in result.stderr


def test_whatif_daemon_refuses_a_negative_coalesce() -> None:
    result = subprocess.run([sys.executable, str(REPO / "bench" / "whatif_daemon.py"), "--coalesce", "-1", "--",
                             "--config", "x"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "--coalesce must be >= 0" in result.stderr


def test_footprint_refuses_bad_options_and_a_used_work_dir(tmp_path: Path) -> None:
    bad = subprocess.run([sys.executable, "-m", "bench.daemon_footprint", "--warmup", "-1"], cwd=REPO,
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--warmup must be >= 0" in bad.stderr
    missing = subprocess.run([sys.executable, "-m", "bench.daemon_footprint", "--glances", str(tmp_path / "nope")],
                             cwd=REPO, capture_output=True, text=True, timeout=30)
    assert missing.returncode == 2 and "nope: not an executable file" in missing.stderr
    (tmp_path / "leftover").write_text("x")
    used = subprocess.run([sys.executable, "-m", "bench.daemon_tailing", "--work-dir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    assert used.returncode != 0 and "is not empty" in used.stderr
    assert (tmp_path / "leftover").read_text() == "x"  # nothing of the user's is touched
