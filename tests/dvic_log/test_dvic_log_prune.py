"""Retention: old files of exited writers are removed when a new writer starts; nothing else is."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dvic_log
import pytest
from dvic_log._identity import read_pid_start
from dvic_log._prune import prune_stale, writer_alive
from dvic_log_testkit import LIB_DIR

DAY = 86400


@pytest.fixture(scope="module")
def dead_process() -> tuple[int, int]:
    """(pid, pid_start) of a process that has exited."""
    proc = subprocess.Popen(["sleep", "30"])
    start = read_pid_start(proc.pid)
    proc.kill()
    proc.wait()
    assert start is not None
    return proc.pid, start


def plant(
    directory: Path, name: str, pid: int, pid_start: int | None, age_days: float, header: bool = True
) -> Path:
    path = directory / name
    first = json.dumps(
        {"dvic_log": 1, "token": name[9:25], "name": "old", "pid": pid, "pid_start": pid_start}
    )
    path.write_text((first if header else "garbage") + '\n{"ts":1.0,"level":"INFO","msg":"x"}\n')
    old = time.time() - age_days * DAY
    os.utime(path, (old, old))
    return path


def test_old_files_of_exited_writers_are_removed_on_start(log_dir: Path, dead_process):
    pid, start = dead_process
    stale = [
        plant(log_dir, "dvic_log_" + "a" * 16, pid, start, 8),
        plant(log_dir, "dvic_log_" + "a" * 16 + ".1", pid, start, 9),
        plant(log_dir, "dvic_log_" + "b" * 16 + ".new", pid, start, 8),
        plant(log_dir, "dvic_log_" + "c" * 16, pid, None, 8, header=False),  # broken header
    ]
    kept = [
        plant(log_dir, "dvic_log_" + "d" * 16, pid, start, 6),  # exited, but recent
        plant(log_dir, "dvic_log_" + "e" * 16, os.getpid(), read_pid_start(os.getpid()), 30),  # alive
        plant(log_dir, "dvic_log_" + "f" * 15, pid, start, 30),  # not a dvic_log name
        plant(log_dir, "dvic_log_" + "0" * 16 + ".txt", pid, start, 30),
    ]
    with dvic_log.open_log("newcomer") as log:
        pass
    assert [p for p in stale if p.exists()] == []
    assert all(p.exists() for p in kept)
    assert Path(log.path).exists()


def test_a_reused_pid_does_not_keep_a_file(log_dir: Path):
    # Our own pid with another start time: the writer is gone, the pid was given to us.
    me = os.getpid()
    path = plant(log_dir, "dvic_log_" + "1" * 16, me, (read_pid_start(me) or 0) + 12345, 8)
    assert prune_stale(str(log_dir), 7 * DAY) == 1
    assert not path.exists()


def test_symlinks_and_other_users_files_are_left_alone(log_dir: Path, tmp_path: Path, dead_process):
    pid, start = dead_process
    target = plant(tmp_path, "dvic_log_" + "2" * 16, pid, start, 30)
    link = log_dir / ("dvic_log_" + "3" * 16)
    link.symlink_to(target)
    others = None
    if os.geteuid() == 0:
        others = plant(log_dir, "dvic_log_" + "4" * 16, pid, start, 30)
        os.chown(others, 65534, 65534)
    assert prune_stale(str(log_dir), 7 * DAY) == 0
    assert link.is_symlink() and target.exists()
    assert others is None or others.exists()


@pytest.mark.parametrize(("keep_days", "age_days", "kept"), [("0", 365, True), ("1.5", 2, False)],
                         ids=["zero-disables-retention", "older-than-that-goes"])
def test_keep_days_from_the_environment(log_dir: Path, dead_process, monkeypatch: pytest.MonkeyPatch,
                                        keep_days: str, age_days: float, kept: bool):
    pid, start = dead_process
    path = plant(log_dir, "dvic_log_" + "5" * 16, pid, start, age_days)
    monkeypatch.setenv("DVIC_LOG_KEEP_DAYS", keep_days)
    with dvic_log.open_log("retention-from-env"):
        pass
    assert path.exists() == kept


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("week", "DVIC_LOG_KEEP_DAYS='week' is not a number of days"),
        ("-1", "must be a finite number of days >= 0"),
    ],
)
def test_a_bad_retention_setting_is_refused(log_dir: Path, monkeypatch: pytest.MonkeyPatch, value, message):
    monkeypatch.setenv("DVIC_LOG_KEEP_DAYS", value)
    with pytest.raises(dvic_log.ConfigError, match=message):
        dvic_log.open_log("x")
    result = subprocess.run(
        [sys.executable, "-m", "dvic_log", "run", "--", "true"],
        env=dict(os.environ, PYTHONPATH=str(LIB_DIR)),
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 2 and message.encode() in result.stderr
    assert list(log_dir.iterdir()) == []


def test_liveness_without_a_start_time_uses_the_pid(dead_process):
    pid, _ = dead_process
    assert writer_alive({"pid": os.getpid(), "pid_start": None})
    assert not writer_alive({"pid": pid, "pid_start": None})
    assert not writer_alive({"pid": "1"})
    assert not writer_alive({})
