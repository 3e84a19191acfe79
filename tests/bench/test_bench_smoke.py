"""Each benchmark runs end to end at a tiny size, so none of them rots (figures are not checked)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench.benchkit import REPO, measured, run_bench
from tests.support.postgres import PostgresUnavailable, bindir


@pytest.mark.parametrize("whatif", [[], ["--whatif-ssl-buffer", "16384"]], ids=["as-is", "whatif"])
def test_ingest_smoke(tmp_path: Path, whatif: list[str]) -> None:
    doc = run_bench("bench.ingest", tmp_path, "--nodes", "2", "--lines", "2000", "--grouped", "--fts-whatif",
                    *whatif)
    figures = doc["figures"]
    assert figures["lines sent / acked / stored"]["value"] == "2,000 / 2,000 / 2,000"
    assert figures["lines sent / acked / stored"]["ok"] is True
    assert figures["acks received"]["value"] >= 2
    for name in ("direct SQLite inserts", "through the server (acked)", "server / direct"):
        assert figures[name]["value"] > 0


def test_ingest_smoke_on_postgresql(tmp_path: Path) -> None:
    try:
        bindir()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    doc = run_bench("bench.ingest", tmp_path, "--nodes", "2", "--lines", "2000", "--engine", "postgresql")
    figures = doc["figures"]
    assert figures["lines sent / acked / stored"]["ok"] is True
    for name in ("direct PostgreSQL COPY", "through the server (acked)", "server / direct"):
        assert figures[name]["value"] > 0


@pytest.mark.parametrize("whatif", [[], ["--whatif-ssl-buffer", "16384"]],
                         ids=["as-is", "whatif"])
def test_keepalive_smoke_with_the_python_client(tmp_path: Path, whatif: list[str]) -> None:
    doc = run_bench("bench.keepalive", tmp_path, "--client", "python", "--conns", "4", "--duration", "1",
                    "--nodes", "20", *whatif)
    figures = doc["figures"]
    assert figures["[python] requests"]["value"] > 0
    assert figures["[python] non-2xx responses"]["value"] == 0
    assert figures["keep-alives answered / stored"]["ok"] is True


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (the Python client is tested above)")
def test_keepalive_smoke_with_wrk(tmp_path: Path) -> None:
    doc = run_bench("bench.keepalive", tmp_path, "--client", "wrk", "--conns", "4", "--duration", "1",
                    "--nodes", "20")
    assert doc["figures"]["[wrk] requests"]["value"] > 0
    assert doc["figures"]["[wrk] non-2xx responses"]["value"] == 0


@pytest.mark.parametrize("whatif", [[], ["--batching", "interval"], ["--whatif-ssl-buffer", "16384"],
                                    ["--history-minutes", "2"]],
                         ids=["as-is", "interval-batching", "whatif-ssl-buffer", "history"])
def test_fleet_smoke(tmp_path: Path, whatif: list[str]) -> None:
    doc = run_bench("bench.fleet", tmp_path, "--nodes", "5", "--duration", "2", "--interval", "1", *whatif)
    figures = doc["figures"]
    assert figures["nodes connected (mTLS websocket + hello)"]["ok"] is True
    assert figures["lines sent / acked / stored"]["ok"] is True
    assert figures["acked lines missing from the database"]["value"] == 0
    assert figures["subscriber lines received"]["ok"] is True
    assert figures["  timed lines (after warm-up)"]["value"] > 0
    assert figures["connections dropped during the run"]["value"] == 0
    measured(figures, "server CPU, busiest other thread (the writer)", "% of one core")
    if "--history-minutes" in whatif:
        assert figures["metrics history stored first (server stopped)"]["value"].startswith("600 raw samples")  # 5 nodes x 10 series x 12


def test_fleet_smoke_on_postgresql(tmp_path: Path) -> None:
    try:
        bindir()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    doc = run_bench("bench.fleet", tmp_path, "--nodes", "5", "--duration", "2", "--interval", "1",
                    "--engine", "postgresql")
    figures = doc["figures"]
    assert doc["params"]["database"] == "postgresql"
    assert figures["nodes connected (mTLS websocket + hello)"]["ok"] is True
    assert figures["lines sent / acked / stored"]["ok"] is True  # counted in PostgreSQL, not a SQLite file
    assert figures["acked lines missing from the database"]["value"] == 0
    assert figures["subscriber lines received"]["ok"] is True
    measured(figures, "PostgreSQL CPU (postmaster + backends)", "% of one core")
    measured(figures, "PostgreSQL CPU per 1,000 lines (all its work)", "ms")


def test_writer_paths_smoke() -> None:
    result = subprocess.run([sys.executable, "-m", "bench.writer_paths", "--rows", "2000", "--nodes", "50"],
                            cwd=REPO, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("rows/s with a busy main thread") == 2
    assert result.stdout.count("ms CPU per 1,000 lines") == 2


def test_writer_paths_metrics_smoke() -> None:
    result = subprocess.run([sys.executable, "-m", "bench.writer_paths", "--metrics", "--nodes", "20", "--minutes", "1.5"],
                            cwd=REPO, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ms CPU per 1,000 samples") == 5


def test_writer_paths_metrics_smoke_on_postgresql() -> None:
    try:
        bindir()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    result = subprocess.run([sys.executable, "-m", "bench.writer_paths", "--metrics", "--engine", "postgresql",
                             "--nodes", "20", "--minutes", "0.5"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("ms CPU per 1,000 samples, PostgreSQL") == 4


def test_retention_smoke(tmp_path: Path) -> None:
    doc = run_bench("bench.retention", tmp_path, "--rows", "3000", "--ingest", "500", "--calm", "0.5")
    figures = doc["figures"]
    for mode in ("polite", "catch-up"):
        assert "(3,000 rows in" in figures[f"{mode} pass, logs: rows/s"]["unit"]  # every expired line
        assert "(3,000 rows in" in figures[f"{mode} pass, metrics_raw: rows/s"]["unit"]  # and sample
    for name in ("statements: metrics_raw", "statements: logs", "polite pass, logs: rows/s"):
        assert figures[name]["value"] > 0
