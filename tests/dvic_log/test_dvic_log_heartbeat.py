"""Heartbeats (docs/log-format.md "Heartbeats") and the failure rules ("When logging fails") of the Python library."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dvic_log
from dvic_log._reader import Follower, parse_line
from dvic_log._show import format_entry
from dvic_log_testkit import LIB_DIR, live_files, read_file

from tests.support.wait import wait_for


def run_demo(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=str(LIB_DIR), **env))


def test_a_heartbeat_is_one_debug_record_a_second_at_most(log_dir: Path):
    with dvic_log.open_log("beating") as log:
        assert log.heartbeat() is True
        assert log.heartbeat() is False  # within the second: nothing written
        log.info("work")
        started = time.monotonic()
        wait_for(log.heartbeat, 5, "the next heartbeat, due a second after the first", interval=0.05)
        assert time.monotonic() - started >= 0.9
    _, records = read_file(Path(log.path))
    assert [r.get("heartbeat") for r in records] == [1, None, 1]
    assert list(records[0]) == ["ts", "level", "msg", "heartbeat"]
    assert (records[0]["level"], records[0]["msg"]) == ("DEBUG", "heartbeat")
    assert records[2]["ts"] - records[0]["ts"] >= 0.999


def test_heartbeat_of_a_logger_writes_to_its_file_and_readers_know_it(log_dir: Path):
    log = dvic_log.get_logger("beating-logger")
    try:
        log.info("before")
        dvic_log.heartbeat(log)
        dvic_log.heartbeat("beating-logger")  # by name: the same file, and within the second
        (path,) = live_files(log_dir)
        _, records = read_file(path)
        assert [r["msg"] for r in records] == ["before", "heartbeat"]
        with Follower(str(path)) as follower:
            kinds = [e.kind for e in follower.poll()]
        assert kinds == ["header", "record", "heartbeat"]
        # `python3 -m dvic_log cat` shows the record, not the heartbeat
        assert format_entry(parse_line(path.read_bytes().splitlines()[2])) is None
    finally:
        for handler in list(log.handlers):
            log.removeHandler(handler)
            handler.close()


def test_a_forked_child_beats_in_its_own_file(log_dir: Path):
    result = run_demo("""
        import os, dvic_log
        log = dvic_log.open_log("forking-beat")
        log.heartbeat()
        pid = os.fork()
        if pid == 0:
            os._exit(0 if log.heartbeat() else 3)  # its file's first heartbeat: written at once
        print(os.waitpid(pid, 0)[1])
        """, {"DVIC_LOG_DIR": str(log_dir)})
    assert result.stdout == "0\n", result.stderr
    beats = sorted(len([r for r in read_file(p)[1] if r.get("heartbeat")]) for p in live_files(log_dir))
    assert beats == [1, 1]


def test_a_missing_directory_is_one_line_on_stderr_and_the_demo_goes_on(tmp_path: Path):
    result = run_demo("""
        import dvic_log
        log = dvic_log.get_logger("no-dir-demo")
        for i in range(20):
            log.warning("lost %d", i)
        dvic_log.heartbeat(log)
        assert dvic_log.get_logger("no-dir-demo") is log
        print("demo still running")
        """, {"DVIC_LOG_DIR": str(tmp_path / "nowhere")})
    assert result.returncode == 0 and result.stdout == "demo still running\n", result.stderr
    assert result.stderr == (f"dvic_log: demo 'no-dir-demo': DVIC_LOG_DIR '{tmp_path / 'nowhere'}' is not an "
                             "existing directory; its records are dropped\n")


def test_a_bad_cap_in_the_environment_is_reported_once_but_a_bad_argument_raises(log_dir: Path):
    result = run_demo("""
        import dvic_log
        log = dvic_log.get_logger("bad-cap-demo")
        log.error("dropped")
        try:
            dvic_log.get_logger("bad-arg-demo", max_bytes=10)
        except dvic_log.ConfigError as err:
            print("refused:", err)
        """, {"DVIC_LOG_DIR": str(log_dir), "DVIC_LOG_MAX_BYTES": "lots"})
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("\n") == 1 and "DVIC_LOG_MAX_BYTES='lots'" in result.stderr
    assert result.stdout.startswith("refused: dvic_log: max_bytes=10 is below the minimum")
    assert live_files(log_dir) == []
