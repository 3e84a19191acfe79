"""The file on disk: header, exclusive creation, whole lines under threads and fork, rotation, bad input."""

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import dvic_log
import pytest
from dvic_log import _writer
from dvic_log._identity import read_pid_start
from dvic_log_testkit import LIB_DIR, Follower, live_files, read_file

from tests.support.wait import wait_for


def test_header_describes_this_process(log_dir: Path):
    with dvic_log.open_log("robot-arm") as log:
        assert re.fullmatch(r"[0-9a-f]{16}", log.token)
        assert log.path == str(log_dir / ("dvic_log_" + log.token))
        header, records = read_file(Path(log.path))
    assert records == []
    assert header["dvic_log"] == 1
    assert header["token"] == log.token
    assert header["name"] == "robot-arm"
    assert header["pid"] == os.getpid()
    assert header["pid_start"] == read_pid_start(os.getpid())
    assert isinstance(header["pid_start"], int)
    assert header["exe"] == sys.executable
    assert header["argv"] == sys.argv
    assert header["host"] == socket.gethostname()
    assert header["user"]
    assert isinstance(header["start"], float)
    assert "rotated" not in header


def test_pid_start_is_field_22_of_proc_stat():
    # Field 2 may hold spaces and parentheses: a process named "a) b (c" still parses.
    proc = subprocess.Popen(["sleep", "30"])
    try:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        assert read_pid_start(proc.pid) == int(fields[19])
    finally:
        proc.kill()
        proc.wait()
    assert read_pid_start(2**22 + 12345) is None


def test_records_have_the_documented_fields(log_dir: Path):
    with dvic_log.open_log("demo") as log:
        log.info("hello")
        log.write("WARNING", "w", logger="app.io", ts=1764000000.12345)
        try:
            raise KeyError("missing")
        except KeyError:
            log.exception("failed")
    _, records = read_file(Path(log.path))
    assert [r["level"] for r in records] == ["INFO", "WARNING", "ERROR"]
    assert set(records[0]) == {"ts", "level", "msg"}
    assert records[1] == {"ts": 1764000000.123, "level": "WARNING", "msg": "w", "logger": "app.io"}
    assert records[2]["msg"] == "failed"
    assert records[2]["exc"].startswith("Traceback (most recent call last):")
    assert records[2]["exc"].endswith("KeyError: 'missing'")


def test_file_mode_is_0644_even_under_a_strict_umask(log_dir: Path):
    old = os.umask(0o077)
    try:
        log = dvic_log.open_log("demo")
    finally:
        os.umask(old)
    log.close()
    assert stat.S_IMODE(os.stat(log.path).st_mode) == 0o644


def test_a_planted_symlink_is_never_followed(log_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    planted = "0123456789abcdef"
    (log_dir / ("dvic_log_" + planted)).symlink_to(victim)
    tokens = iter([planted, "fedcba9876543210"])
    monkeypatch.setattr(_writer, "new_token", lambda: next(tokens))
    with dvic_log.open_log("demo") as log:
        log.info("written")
    assert victim.read_text() == "precious\n"
    assert log.token == "fedcba9876543210"
    assert read_file(Path(log.path))[1][0]["msg"] == "written"


def test_an_existing_file_is_never_reused(log_dir: Path, monkeypatch: pytest.MonkeyPatch):
    taken = log_dir / "dvic_log_aaaaaaaaaaaaaaaa"
    taken.write_text("someone else's\n")
    tokens = iter(["aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"])
    monkeypatch.setattr(_writer, "new_token", lambda: next(tokens))
    with dvic_log.open_log("demo") as log:
        log.info("x")
    assert taken.read_text() == "someone else's\n"
    assert log.token == "bbbbbbbbbbbbbbbb"


def test_giving_up_after_repeated_collisions_is_a_clear_error(log_dir: Path, monkeypatch: pytest.MonkeyPatch):
    (log_dir / "dvic_log_aaaaaaaaaaaaaaaa").write_text("x\n")
    monkeypatch.setattr(_writer, "new_token", lambda: "aaaaaaaaaaaaaaaa")
    with pytest.raises(OSError, match="no free file name after 16 attempts"):
        dvic_log.open_log("demo")


def test_concurrent_threads_never_interleave_or_split_lines(log_dir: Path):
    threads, per_thread = 8, 400
    log = dvic_log.open_log("threads")
    start = threading.Barrier(threads)

    def work(n: int) -> None:
        start.wait()
        for i in range(per_thread):
            # Long, multi-line messages make torn writes visible if they ever happen.
            log.info(f"t{n}-{i}\n" + "x" * (100 + 37 * n))

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    log.close()
    _, records = read_file(Path(log.path))
    assert len(records) == threads * per_thread
    seen = {n: [] for n in range(threads)}
    for r in records:
        head, body = r["msg"].split("\n")
        n, i = map(int, head[1:].split("-"))
        assert body == "x" * (100 + 37 * n)
        seen[n].append(i)
    assert all(seen[n] == list(range(per_thread)) for n in range(threads))


def _wait_child(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_forked_child_that_logs_gets_its_own_file(log_dir: Path):
    log = dvic_log.open_log("forker")
    log.info("before fork")
    pid = os.fork()
    if pid == 0:  # child: only os._exit, so pytest never runs twice
        code = 1
        try:
            log.info("from the child")
            code = 0
        finally:
            os._exit(code)
    assert _wait_child(pid) == 0
    log.info("parent after fork")
    log.close()
    files = live_files(log_dir)
    assert len(files) == 2
    by_pid = {read_file(p)[0]["pid"]: read_file(p) for p in files}
    assert [r["msg"] for r in by_pid[os.getpid()][1]] == ["before fork", "parent after fork"]
    child_header, child_records = by_pid[pid]
    assert [r["msg"] for r in child_records] == ["from the child"]
    assert child_header["name"] == "forker"
    assert child_header["token"] != log.token
    assert child_header["pid_start"] is not None


def test_fork_while_other_threads_hold_the_lock_does_not_deadlock(log_dir: Path):
    log = dvic_log.open_log("busy")
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            log.info("busy " * 20)

    workers = [threading.Thread(target=hammer) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        for _ in range(20):
            pid = os.fork()
            if pid == 0:
                signal.alarm(10)  # a deadlocked child dies instead of hanging the test
                try:
                    log.info(f"child {os.getpid()}")
                    os._exit(0)
                finally:
                    os._exit(1)
            assert _wait_child(pid) == 0
    finally:
        stop.set()
        for w in workers:
            w.join()
    log.close()
    files = live_files(log_dir)
    assert len(files) == 21
    for path in files:
        header, records = read_file(path)  # every file parses: no torn line anywhere
        if header["pid"] != os.getpid():
            assert [r["msg"] for r in records] == [f"child {header['pid']}"]


def test_multiprocessing_fork_workers_each_get_a_file(log_dir: Path):
    script = textwrap.dedent(
        """
        import multiprocessing, dvic_log
        log = dvic_log.get_logger("pool-demo")
        def job(i):
            log.info("job %d", i)
            return i
        if __name__ == "__main__":
            log.info("parent")
            with multiprocessing.get_context("fork").Pool(2) as pool:
                assert sorted(pool.map(job, range(6))) == list(range(6))
        """
    )
    env = dict(os.environ, PYTHONPATH=str(LIB_DIR))
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
    files = live_files(log_dir)
    assert 2 <= len(files) <= 3
    msgs = sorted(r["msg"] for p in files for r in read_file(p)[1])
    assert msgs == [f"job {i}" for i in range(6)] + ["parent"]
    assert len({read_file(p)[0]["pid"] for p in files}) == len(files)


def test_rotation_keeps_each_file_under_the_cap(log_dir: Path):
    cap = 4096
    with dvic_log.open_log("rotor", max_bytes=cap) as log:
        for i in range(300):
            log.info(f"record {i:04d} " + "y" * 50)
            assert os.path.getsize(log.path) <= cap
    current = Path(log.path)
    backup = Path(log.path + ".1")
    assert live_files(log_dir) == [current]  # the .1 file is not a live name
    header, records = read_file(current)
    old_header, old_records = read_file(backup)
    assert backup.stat().st_size <= cap
    assert header["rotated"] == old_header["rotated"] + 1 >= 2
    assert header["token"] == old_header["token"] == log.token
    assert header["start"] == old_header["start"]
    # The two files hold the newest records, contiguous and in order.
    numbers = [int(r["msg"].split()[1]) for r in old_records + records]
    assert numbers == list(range(300 - len(numbers), 300))
    assert not list(log_dir.glob("*.new"))


def test_a_reader_following_the_documented_rule_loses_nothing_across_rotations(log_dir: Path):
    with dvic_log.open_log("followed", max_bytes=4096) as log:
        follower = Follower(Path(log.path))
        try:
            for i in range(2000):
                log.info(f"line {i}")
                if i % 7 == 0:
                    follower.poll()
            follower.poll()
        finally:
            follower.close()
    assert [r["msg"] for r in follower.records()] == [f"line {i}" for i in range(2000)]
    assert follower.switches >= 10
    assert [h["rotated"] for h in follower.headers()[1:]] == list(range(1, follower.switches + 1))


def test_a_reader_in_another_thread_loses_nothing_while_writers_rotate(log_dir: Path):
    log = dvic_log.open_log("live", max_bytes=64 * 1024)
    follower = Follower(Path(log.path))
    done = threading.Event()
    total = 20000

    def write() -> None:
        for i in range(total):
            log.info(f"n={i}")
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        for _ in range(10_000_000):  # bounded; ends as soon as the writer is done
            follower.poll()
            if done.is_set():
                break
        writer.join()
        follower.poll()
    finally:
        follower.close()
        log.close()
    follower.check_counted(total, '{"ts":1795519197.347,"level":"INFO","msg":"n=1"}\n')


def test_a_record_bigger_than_the_cap_is_truncated_not_dropped(log_dir: Path):
    cap = 4096
    with dvic_log.open_log("big", max_bytes=cap) as log:
        log.info("small")
        log.error("x" * 100_000)
        current, backup = Path(log.path), Path(log.path + ".1")
        # The cut record nearly fills a file on its own, so it starts a new one.
        assert [r["msg"] for r in read_file(backup)[1]] == ["small"]
        (big,) = read_file(current)[1]
        assert big["level"] == "ERROR"
        assert big["msg"].startswith("xxxx") and big["msg"].endswith("[dvic_log: truncated]")
        assert current.stat().st_size <= cap
        log.info("after")
    assert [r["msg"] for r in read_file(current)[1]] == ["after"]
    assert read_file(backup)[1] == [big]
    assert backup.stat().st_size <= cap


def test_a_deleted_file_is_recreated_at_the_same_path(log_dir: Path):
    with dvic_log.open_log("vanish") as log:
        log.info("one")
        os.unlink(log.path)
        # The writer checks for a deleted file about once a second; keep logging until it notices.
        n = 0

        def recreated() -> bool:
            nonlocal n
            n += 1
            log.info(f"tick {n}")
            return os.path.exists(log.path)

        wait_for(recreated, timeout=5, what="the log file to be recreated")
        log.info("after")
    header, records = read_file(Path(log.path))
    assert header["token"] == log.token and header["rotated"] == 1
    assert records[-1]["msg"] == "after"


def test_a_full_disk_loses_nothing_it_could_keep_and_leaves_no_torn_line(log_dir: Path):
    # RLIMIT_FSIZE makes the kernel refuse bytes past a size, as a full disk would (Python
    # ignores SIGXFSZ, so writes fail or come back short instead of killing the process).
    script = textwrap.dedent(
        """
        import json, resource, dvic_log
        resource.setrlimit(resource.RLIMIT_FSIZE, (3000, resource.RLIM_INFINITY))
        log = dvic_log.open_log("full")
        outcome = {}
        for i in range(100):
            try:
                log.info("record %03d %s" % (i, "z" * 40))
                outcome[i] = "ok"
            except OSError as exc:
                outcome[i] = str(exc)
        with open(log.path, "rb") as f:
            torn = not f.read().endswith(b"\\n")
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        log.info("space is back")
        print(json.dumps({"path": log.path, "outcome": outcome, "torn": torn}))
        """
    )
    env = dict(os.environ, PYTHONPATH=str(LIB_DIR))
    out = subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True, text=True)
    report = json.loads(out.stdout)
    outcome = {int(k): v for k, v in report["outcome"].items()}
    partial = [i for i, v in outcome.items() if "the rest follows before the next record" in v]
    refused = [i for i, v in outcome.items() if "File too large" in v]
    # One line cut short, later ones refused outright; or none cut short when the limit happened to
    # fall exactly between two records (record sizes vary with the time stamp).
    assert len(partial) <= 1 and refused, outcome
    assert report["torn"] == bool(partial)  # while the disk was full, the file ended inside that line
    _, records = read_file(Path(report["path"]))  # now every line is whole
    kept = [int(r["msg"].split()[1]) for r in records[:-1]]
    assert kept == [i for i in range(100) if i not in refused]
    assert records[-1]["msg"] == "space is back"


def test_write_after_close_is_a_clear_error(log_dir: Path):
    log = dvic_log.open_log("closed")
    log.close()
    log.close()  # idempotent
    with pytest.raises(ValueError, match="write to closed log file"):
        log.info("late")


@pytest.mark.parametrize(
    ("env", "kwargs", "message"),
    [
        ({"DVIC_LOG_MAX_BYTES": "lots"}, {}, "DVIC_LOG_MAX_BYTES='lots' is not a whole number"),
        ({"DVIC_LOG_MAX_BYTES": "100"}, {}, "DVIC_LOG_MAX_BYTES=100 is below the minimum of 4096"),
        ({}, {"max_bytes": 10}, "max_bytes=10 is below the minimum"),
        (
            {"DVIC_LOG_DIR": "/nonexistent/dvic"},
            {},
            "DVIC_LOG_DIR '/nonexistent/dvic' is not an existing directory",
        ),
        ({}, {"directory": "/nonexistent/x"}, "directory argument '/nonexistent/x' is not an existing"),
    ],
)
def test_bad_settings_are_refused_with_a_specific_message(log_dir, monkeypatch, env, kwargs, message):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(dvic_log.ConfigError, match=re.escape(message)):
        dvic_log.open_log("demo", **kwargs)
    assert list(log_dir.iterdir()) == []  # nothing half-created


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "must not be empty"),
        ("  ", "must not be empty"),
        ("a\nb", "one line"),
        ("x" * 201, "longer than 200"),
    ],
)
def test_bad_demo_names_are_refused(log_dir, name, message):
    with pytest.raises(dvic_log.ConfigError, match=message):
        dvic_log.open_log(name)


def test_env_settings_are_used(log_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv("DVIC_LOG_DIR", str(other))
    monkeypatch.setenv("DVIC_LOG_MAX_BYTES", "5000")
    with dvic_log.open_log("env") as log:
        assert log.max_bytes == 5000
        assert Path(log.path).parent == other


@pytest.mark.parametrize("ts", [float("nan"), float("inf"), "now", True])
def test_a_bad_timestamp_is_refused_and_nothing_is_written(log_dir: Path, ts):
    with dvic_log.open_log("ts") as log:
        with pytest.raises(ValueError, match="ts must be a finite number"):
            log.write("INFO", "x", ts=ts)
        assert read_file(Path(log.path))[1] == []


def test_a_huge_command_line_keeps_the_header_small(log_dir: Path):
    from dvic_log._identity import child_identity

    ident = child_identity(os.getpid(), ["demo"] + ["x" * 5000] * 500)
    assert len(ident.argv) == 65 and ident.argv[-1] == "... (437 more arguments)"
    assert all(len(a) <= 259 for a in ident.argv)
    with dvic_log.LogFile("big-argv", identity=ident, max_bytes=4096) as log:
        log.info("fits")
    header, records = read_file(Path(log.path))
    # With the smallest cap the header shrinks further, to a quarter of the file at most.
    assert len(json.dumps(header)) <= 1024 and header["argv"][0] == "demo"
    assert header["argv"][-1].endswith("more arguments)")
    assert records[0]["msg"] == "fits"
    with dvic_log.LogFile("big-argv", identity=ident) as roomy:  # 8 MiB: the 64 x 256 bound only
        pass
    assert read_file(Path(roomy.path))[0]["argv"] == ident.argv


def rotate_a_few_times(log: dvic_log.LogFile, n: int = 200) -> None:
    for i in range(n):
        log.info(f"record {i:04d} " + "y" * 50)
        assert os.path.getsize(log.path) <= log.max_bytes


def test_rotation_without_hard_links_falls_back_to_rename(log_dir: Path, monkeypatch: pytest.MonkeyPatch):
    def no_links(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")  # as on filesystems without links

    monkeypatch.setattr(os, "link", no_links)
    with dvic_log.open_log("nolinks", max_bytes=4096) as log:
        rotate_a_few_times(log)
    header, records = read_file(Path(log.path))
    old_header, old_records = read_file(Path(log.path + ".1"))
    assert header["rotated"] == old_header["rotated"] + 1
    numbers = [int(r["msg"].split()[1]) for r in old_records + records]
    assert numbers == list(range(200 - len(numbers), 200))


def test_a_directory_planted_at_the_prepare_name_does_not_stop_rotation(log_dir: Path):
    with dvic_log.open_log("blocked-new", max_bytes=4096) as log:
        Path(log.path + ".new").mkdir()
        rotate_a_few_times(log)
        assert read_file(Path(log.path))[0]["rotated"] > 1
        assert read_file(Path(log.path))[1][-1]["msg"].startswith("record 0199")


def test_a_directory_planted_at_the_backup_name_starts_a_new_stream(log_dir: Path):
    with dvic_log.open_log("blocked-backup", max_bytes=4096) as log:
        first = log.path
        Path(first + ".1").mkdir()
        rotate_a_few_times(log)
        assert log.path != first  # went on under a new token
    files = live_files(log_dir)
    assert len(files) >= 2 and all(f.stat().st_size <= 4096 for f in files)
    assert read_file(Path(log.path))[1][-1]["msg"].startswith("record 0199")
