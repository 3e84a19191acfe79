"""bench.bus_compare runs end to end at a tiny size on a real PostgreSQL and nats-server, loses no
message where it must not, and leaves neither server behind (no timing checks)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from bench.bus_compare import PG_BIN, pack_lines
from tests.bench.benchkit import run_bench
from tests.support.procs import pids_where

MISSING = [what for what, there in (
    ("asyncpg", importlib.util.find_spec("asyncpg") is not None),
    ("nats-py", importlib.util.find_spec("nats") is not None),
    ("nats-server", shutil.which("nats-server") is not None or Path("/usr/sbin/nats-server").exists()),
    (f"PostgreSQL in {PG_BIN}", (PG_BIN / "initdb").exists()),
) if not there]


def test_pack_lines_keeps_every_line_under_the_limit() -> None:
    lines = [f'{{"seq":{i},"text":"{"x" * 90}"}}' for i in range(300)]
    messages = pack_lines(lines, 1.5, 7900)
    assert all(len(m) <= 7900 for m in messages) and len(messages) > 1
    assert "".join(messages).count('"seq"') == 300


@pytest.mark.skipif(bool(MISSING), reason=f"not installed: {', '.join(MISSING)}")
@pytest.mark.timeout(240)
def test_bus_compare_smoke(tmp_path: Path) -> None:
    work = tmp_path / "work"
    doc = run_bench("bench.bus_compare", tmp_path, "--rounds", "1", "--seconds", "1", "--rates", "1000",
                    "--requests", "10", "--presence", "300", "--stuck-seconds", "0", "--no-reconnect",
                    "--work-dir", str(work), timeout=220)
    figures = doc["figures"]
    for bus in ("postgres", "nats"):
        assert figures[f"logs 1,000 lines/s: lost [{bus}]"]["value"] == 0
        assert figures[f"logs 1,000 lines/s: delivered [{bus}]"]["value"] > 0
        assert figures[f"rpc: p99 [{bus}]"]["value"] > 0
        assert figures[f"shell 1 MiB/s: MiB/s [{bus}]"]["value"] > 0
        assert figures[f"presence burst: lost [{bus}]"]["value"] == 0
    assert figures["writes alone [postgres]"]["value"] > 0
    assert "8,000 refused" in figures["NOTIFY payload limit"]["value"]
    pg_dir = doc["params"]["postgres dir"]
    for path in (str(work), pg_dir):
        assert pids_where(lambda cmd, path=path: path.encode() in cmd) == [], f"a bus server under {path} outlived the bench"
    assert not Path(pg_dir).exists()
