"""Reading back: line parsing, the reference Follower, and the `cat` / `ls` commands."""

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import dvic_log
import pytest
from dvic_log._reader import Follower, parse_line, read_header
from dvic_log_testkit import LIB_DIR

from tests.support.wait import wait_for


@pytest.mark.parametrize(
    ("raw", "kind", "level", "msg"),
    [
        (b'{"ts":1.5,"level":"WARNING","msg":"m"}', "record", "WARNING", "m"),
        (b'{"ts":1.5,"level":"LOUD","msg":"odd level"}', "record", "INFO", "odd level"),
        (b'{"ts":"x","level":"INFO","msg":"bad ts"}\r', "record", "INFO", "bad ts"),
        (b"plain text \xff", "raw", "INFO", "plain text \ufffd"),
        (b'["a json array"]', "raw", "INFO", '["a json array"]'),
        (b'{"no":"msg"}', "raw", "INFO", '{"no":"msg"}'),
        (b'{"broken": ', "raw", "INFO", '{"broken": '),
    ],
)
def test_any_line_parses_and_nothing_is_dropped(raw, kind, level, msg):
    entry = parse_line(raw)
    assert (entry.kind, entry.data["level"], entry.data["msg"]) == (kind, level, msg)


def test_headers_are_recognised():
    entry = parse_line(b'{"dvic_log":1,"token":"0123456789abcdef","name":"n","pid":1}')
    assert entry.kind == "header" and entry.data["name"] == "n"


def msgs(entries) -> list[str]:
    return [e.data["msg"] for e in entries if e.kind in ("record", "raw")]


def write_until_rotated(log: dvic_log.LogFile, rotated: int, start: int) -> int:
    """Write 1 KB records until the live file's header says `rotated`; return the next number."""
    i = start
    for _ in range(200):
        if (read_header(log.path) or {}).get("rotated", 0) >= rotated:
            return i
        log.info(f"{i:05d} " + "r" * 1000)
        i += 1
    raise AssertionError("no rotation")


def numbers(entries) -> list[int]:
    return [int(m.split()[0]) for m in msgs(entries)]


def test_the_follower_reads_every_record_across_rotations(log_dir: Path):
    with dvic_log.open_log("f", max_bytes=4096) as log, Follower(log.path) as follower:
        got = []
        for i in range(60):
            log.info(f"{i:05d} " + "r" * 1000)
            got += follower.poll()
    assert numbers(got) == list(range(60))
    assert not [e for e in got if e.kind == "gap"]
    rotations = [e.data.get("rotated", 0) for e in got if e.kind == "header"]
    assert rotations == list(range(len(rotations))) and len(rotations) >= 10


def test_a_follower_two_rotations_behind_catches_up_from_the_previous_file(log_dir: Path):
    with dvic_log.open_log("lag", max_bytes=4096) as log, Follower(log.path) as follower:
        got = follower.poll()
        n = write_until_rotated(log, 2, 0)
        got += follower.poll()
    assert numbers(got) == list(range(n))
    assert not [e for e in got if e.kind == "gap"]


def test_a_follower_further_behind_reports_the_gap(log_dir: Path):
    with dvic_log.open_log("gap", max_bytes=4096) as log, Follower(log.path) as follower:
        got = follower.poll()
        n = write_until_rotated(log, 3, 0)
        got += follower.poll()
    (gap,) = [e for e in got if e.kind == "gap"]
    assert gap.data == {"files": 1, "rotated": 3}
    seen = numbers(got)
    assert seen == sorted(seen) and seen[-1] == n - 1 and len(seen) < n


def test_include_previous_starts_with_the_older_file(log_dir: Path):
    with dvic_log.open_log("prev", max_bytes=4096) as log:
        n = write_until_rotated(log, 1, 0)
        with Follower(log.path, include_previous=True) as follower:
            assert numbers(follower.poll()) == list(range(n))
        with Follower(log.path) as follower:
            assert numbers(follower.poll())[0] > 0


def test_a_deleted_file_ends_the_stream_until_the_writer_recreates_it(log_dir: Path):
    with dvic_log.open_log("gone") as log, Follower(log.path) as follower:
        log.info("before")
        assert msgs(follower.poll()) == ["before"]
        os.unlink(log.path)
        assert follower.poll() == [] and follower.finished
        count = iter(range(10_000))

        def recreated():
            log.info(f"tick {next(count)}")
            return os.path.exists(log.path)

        wait_for(recreated, timeout=5, what="the writer to recreate its file")
        log.info("after")
        seen = msgs(follower.poll())
        assert seen[-1] == "after" and not follower.finished


def test_a_file_rewritten_by_someone_else_is_read_again_from_the_start(log_dir: Path):
    path = log_dir / "dvic_log_0123456789abcdef"
    path.write_text('{"dvic_log":1,"token":"0123456789abcdef","name":"x","pid":1}\n' + "line\n" * 50)
    with Follower(str(path)) as follower:
        assert len(msgs(follower.poll())) == 50
        with open(path, "r+") as f:
            f.truncate(0)
            f.write("fresh\n")
        assert msgs(follower.poll()) == ["fresh"]


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dvic_log", *args],
        env=dict(os.environ, PYTHONPATH=str(LIB_DIR), TZ="UTC"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cat_prints_readable_lines(log_dir: Path):
    with dvic_log.open_log("cat-demo") as log:
        log.write("INFO", "hello", ts=1764000000.5)
        log.write("ERROR", "two\nlines", logger="app.db", exc="Traceback...\nKeyError: 'x'", ts=1764000001.25)
    with open(log.path, "ab") as f:
        f.write(b"raw garbage \xff\nno newline at the end")
    expected = (
        "2025-11-24 16:00:00.500 INFO     hello\n"
        "2025-11-24 16:00:01.250 ERROR    [app.db] two\n"
        "                                 lines\n"
        "                                 Traceback...\n"
        "                                 KeyError: 'x'\n"
        "----------------------- INFO     raw garbage \ufffd\n"
        "----------------------- INFO     no newline at the end\n"
    )
    for target in (log.path, log.token, "cat-demo"):
        result = run_cli("cat", target)
        assert result.returncode == 0, result.stderr
        assert result.stdout == expected


def test_cat_all_and_unknown_targets(log_dir: Path):
    with dvic_log.open_log("both", max_bytes=4096) as log:
        n = write_until_rotated(log, 1, 0)
    full = run_cli("cat", "--all", log.token).stdout.splitlines()
    assert [int(line.split()[3]) for line in full] == list(range(n))
    missing = run_cli("cat", "nosuchdemo")
    assert missing.returncode == 1
    assert "no dvic_log file, token or demo name 'nosuchdemo'" in missing.stderr
    no_file = run_cli("cat", str(log_dir / "dvic_log_ffffffffffffffff"))
    assert no_file.returncode == 1 and "no such file" in no_file.stderr


def read_lines_until(proc: subprocess.Popen, count: int, timeout: float = 20) -> list[str]:
    """Read `count` lines from proc's stdout (binary pipe) within timeout seconds."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while data.count(b"\n") < count:
        left = deadline - time.monotonic()
        if left <= 0:
            got = data.count(b"\n")
            raise AssertionError(f"got only {got} of {count} lines: {data[-300:]!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
    return data.decode().splitlines()


def test_cat_follow_keeps_printing_across_rotations(log_dir: Path):
    with dvic_log.open_log("followed", max_bytes=4096) as log:
        log.info("00000 first")
        proc = subprocess.Popen(
            [sys.executable, "-m", "dvic_log", "cat", "-f", log.path],
            env=dict(os.environ, PYTHONPATH=str(LIB_DIR)),
            stdout=subprocess.PIPE,
        )
        try:
            assert read_lines_until(proc, 1)[0].endswith("00000 first")  # it follows now
            seen: list[str] = []
            for batch in range(8):  # about one file per batch: 5 rotations in all
                for i in range(1 + batch * 5, 6 + batch * 5):
                    log.info(f"{i:05d} " + "f" * 700)
                seen += read_lines_until(proc, 5)
            assert [int(line.split()[3]) for line in seen] == list(range(1, 41))
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=20) == 0
        finally:
            proc.kill()
            proc.wait()


def test_ls_lists_alive_and_exited_demos(log_dir: Path):
    subprocess.run(
        [sys.executable, "-c", "import dvic_log; dvic_log.get_logger('gone-demo').info('bye')"],
        env=dict(os.environ, PYTHONPATH=str(LIB_DIR)),
        check=True,
        timeout=60,
    )
    with dvic_log.open_log("live-demo") as log:
        log.info("here")
        rows = json.loads(run_cli("ls", "--json").stdout)
        table = run_cli("ls").stdout
    states = {row["name"]: row["state"] for row in rows}
    assert states == {"gone-demo": "exited", "live-demo": "alive"}
    assert {row["token"] for row in rows} >= {log.token}
    assert table.splitlines()[0].split() == ["TOKEN", "NAME", "PID", "STATE", "BYTES", "LAST", "WRITE"]
    assert "live-demo" in table and "gone-demo" in table
