"""The benchmarks' own building blocks: percentiles, /proc readings, and frames the server accepts."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import loglines, procstat
from bench.report import Report, latency_summary, percentile
from central.messages import parse_node_message

REPO = Path(__file__).resolve().parents[2]


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_latency_summary_of_unsorted_values() -> None:
    summary = latency_summary([0.3, 0.1, 0.2, 0.9])
    assert summary["count"] == 4
    assert summary["p50"] == 0.2
    assert summary["max"] == 0.9


def test_procstat_reads_this_process() -> None:
    first = procstat.read(os.getpid())
    assert first.rss_bytes > 1024 * 1024
    assert first.peak_rss_bytes >= first.rss_bytes
    assert first.threads >= 1
    sum(i * i for i in range(200_000))  # burn a little CPU so the counter moves
    second = procstat.read(os.getpid())
    assert second.cpu_s >= first.cpu_s
    assert procstat.cpu_percent(first, second) >= 0.0


def test_procstat_of_a_gone_process_says_so() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    with pytest.raises(ProcessLookupError):
        procstat.read(child.pid)


def test_generated_messages_pass_the_servers_validator() -> None:
    """Frames the benchmarks send are what a real daemon sends: the server's parser accepts them."""
    logs = parse_node_message(json.dumps({"type": "logs", "lines": loglines.batch(3, 1, 500, 1.7e9)}))
    assert [line["seq"] for line in logs["lines"]] == list(range(1, 501))
    assert parse_node_message(json.dumps(loglines.metrics(1.7e9, 3, 2)))["type"] == "metrics"
    assert parse_node_message(json.dumps(loglines.hello("node-3")))["protocol"] == 1


def test_same_node_and_seq_give_the_same_line() -> None:
    assert loglines.batch(5, 10, 3, 100.0) == loglines.batch(5, 10, 3, 100.0)
    assert loglines.message(5, 10) != loglines.message(6, 10)


def test_pre_encoded_lines_are_the_text_json_dumps_makes() -> None:
    """The fleet's nodes send frames from pre-encoded parts (bench/loglines.py, LineEncoder): the
    same bytes as encoding each line's dict, so the server sees what it saw before."""
    for node in (0, 7, 1234, 19_999):
        encoder = loglines.LineEncoder(node)
        for seq in (1, 2, 19, 20, 4095, 123_457):
            for ts in (1.7e9, 1_765_000_000.0004, 1_765_000_000.1235, 99.9999):
                sent = ts + 0.25
                made = [loglines.line(node, seq, ts, f"{loglines.message(node, seq)} sent={sent:.6f}")]
                expected = json.dumps({"type": "logs", "lines": made}, separators=(",", ":"))
                assert loglines.logs_frame([encoder.encode(seq, ts, sent)]) == expected
    frame = loglines.logs_frame([loglines.LineEncoder(3).encode(seq, 1.7e9, 1.7e9) for seq in (1, 2, 3)])
    assert [line["seq"] for line in parse_node_message(frame)["lines"]] == [1, 2, 3]


def test_report_renders_targets_and_writes_json(tmp_path: Path) -> None:
    report = Report("demo", params={"nodes": 5})
    report.add("rate", 12345.6, "lines/s", target=">= 10,000", ok=True)
    report.add("ratio", 0.4, target=">= 0.5", ok=False)
    text = report.render()
    assert "12,346 lines/s" in text and "PASS" in text and "FAIL" in text
    out = tmp_path / "r.json"
    report.emit(out)
    doc = json.loads(out.read_text())
    assert doc["figures"]["rate"]["ok"] is True
    assert doc["machine"]["cpus"] == os.cpu_count()


def run_bench(module: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("module, args, message", [
    ("bench.ingest", ["--batch", "501"], "at most 500 lines per batch"),
    ("bench.ingest", ["--nodes", "0"], "expected an integer >= 1"),
    ("bench.keepalive", ["--conns", "2", "--procs", "3"], "more processes than connections"),
    ("bench.keepalive", ["--duration", "-1"], "expected a number > 0"),
    ("bench.fleet", ["--nodes", "2", "--procs", "3"], "more processes than nodes"),
    ("bench.fleet", ["--duration", "2", "--warmup", "3"], "shorter than --duration"),
    ("bench.fleet", ["--database", "sqlite:/tmp/x.sqlite3"], "expected a postgresql:// URL"),
    ("bench.fleet", ["--engine", "postgresql", "--database", "postgresql://u@127.0.0.1/d"], "not allowed with"),
])
def test_bad_options_get_a_specific_error(module: str, args: list[str], message: str) -> None:
    result = run_bench(module, *args)
    assert result.returncode == 2
    assert message in result.stderr


def test_a_non_empty_work_dir_is_refused_and_left_alone(tmp_path: Path) -> None:
    keep = tmp_path / "precious.txt"
    keep.write_text("do not delete")
    result = run_bench("bench.ingest", "--lines", "10", "--work-dir", str(tmp_path))
    assert result.returncode != 0
    assert "is not empty" in result.stderr
    assert keep.read_text() == "do not delete"


def test_fts_indexer_fills_the_index_once_and_skips_replays(tmp_path: Path) -> None:
    """The write path the direct-SQLite baseline shares with the server indexes each line once."""
    script = f"""
import asyncio, sqlite3
from central import db, store
async def setup():
    conn = await db.connect({str(tmp_path / 'w.sqlite3')!r})
    await db.migrate(conn)
    await conn.close()
asyncio.run(setup())
conn = sqlite3.connect({str(tmp_path / 'w.sqlite3')!r}, isolation_level=None)
lines = [dict(seq=s, ts=1.0, source="demo", level="INFO", msg=f"servo {{s}}") for s in (1, 2, 3)]
store.insert_logs("n1", lines)(conn)
fts = store.FtsIndexer()
fts.before_commit(conn)
store.insert_logs("n1", lines[1:] + [dict(lines[0], seq=4)])(conn)  # 2 and 3 replayed
fts.committed()
fts.before_commit(conn)
print(conn.execute("SELECT count(*) FROM logs").fetchone()[0],
      conn.execute("SELECT count(*) FROM logs_fts WHERE logs_fts MATCH 'servo'").fetchone()[0],
      conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'logs_ai'").fetchone()[0])
"""
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["4", "4", "0"]


def test_a_server_that_cannot_start_is_reported_with_its_log(tmp_path: Path) -> None:
    from bench.common import bench_server
    from tests.support.server import ServerError

    not_a_dir = tmp_path / "data"
    not_a_dir.write_text("a file where the data dir should be")
    with pytest.raises(ServerError, match="exists and is not a directory"):
        bench_server(not_a_dir).start(timeout=30)
    assert not_a_dir.read_text() == "a file where the data dir should be"
    with pytest.raises(ServerError, match=r"exited with 2:(.|\n)*--interval"):
        bench_server(tmp_path / "central", extra_args=("--interval", "soon")).start(timeout=30)
    with pytest.raises(ServerError, match=r"exited with 2:(.|\n)*--interval"):  # the what-if server too
        bench_server(tmp_path / "whatif", 16384, extra_args=("--interval", "soon")).start(timeout=30)


async def test_a_worker_that_dies_early_is_reported_with_its_log(tmp_path: Path) -> None:
    from bench.workers import Worker, WorkerError

    worker = Worker("broken", "bench.no_such_module", [], tmp_path)
    await worker.start()
    with pytest.raises(WorkerError, match="No module named"):
        await worker.expect("ready", timeout=30)
    assert await worker.finish(timeout=10) != 0
