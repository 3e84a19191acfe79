"""Stand-alone check of dvic_log for old interpreters (Python 3.8) that have no pytest.

Run as `python3.8 compat_check.py LIB_DIR WORK_DIR`: it exercises the library the way the
pytest suite does (header, records, Unicode, threads, fork, rotation, the run wrapper with exit
codes and signals) with plain asserts, prints one line per check and exits non-zero on failure.
"""

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import traceback


def parse(path):
    with open(path, "rb") as f:
        data = f.read()
    text = data.decode("utf-8")  # strict
    assert text.endswith("\n"), f"partial last line in {path}"
    objs = [json.loads(line) for line in text.split("\n")[:-1]]
    assert objs and objs[0]["dvic_log"] == 1, objs[:1]
    return objs[0], objs[1:]


def live_files(directory):
    return sorted(
        os.path.join(directory, n) for n in os.listdir(directory) if re.match(r"^dvic_log_[0-9a-f]{16}$", n)
    )


def fresh_dir(work, name):
    path = os.path.join(work, name)
    os.mkdir(path)
    os.environ["DVIC_LOG_DIR"] = path
    return path


def _support_wait_for():
    """tests/support/wait.py's wait_for, loaded by its path: this script runs without pytest or the
    project on sys.path (that file keeps to Python 3.8 for it)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "support", "wait.py")
    spec = importlib.util.spec_from_file_location("dvic_tests_wait", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.wait_for


wait_for = _support_wait_for()


def check_logger_records(work):
    import dvic_log

    fresh_dir(work, "logger")
    log = dvic_log.get_logger("compat-demo")
    log.info("two\nlines")
    log.warning("lone \udcff pair \ud83d\ude00 sep \u2028")
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("failed")
    (handler,) = log.handlers
    header, records = parse(handler.path)
    assert header["pid"] == os.getpid() and isinstance(header["pid_start"], int)
    assert header["name"] == "compat-demo"
    assert [r["level"] for r in records] == ["INFO", "WARNING", "ERROR"]
    assert records[0]["msg"] == "two\nlines"
    assert records[1]["msg"] == "lone \ufffd pair \U0001f600 sep \u2028"
    assert records[2]["exc"].endswith("ValueError: bad")
    handler.close()
    log.removeHandler(handler)


def check_threads(work):
    import dvic_log

    fresh_dir(work, "threads")
    log = dvic_log.open_log("threads")

    def work_(n):
        for i in range(300):
            log.info(f"{n}-{i} " + "x" * (50 + n * 31))

    threads = [threading.Thread(target=work_, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    _, records = parse(log.path)
    assert len(records) == 1800
    for n in range(6):
        mine = [r["msg"] for r in records if r["msg"].startswith(f"{n}-")]
        assert mine == [f"{n}-{i} " + "x" * (50 + n * 31) for i in range(300)]


def check_fork(work):
    import dvic_log

    directory = fresh_dir(work, "fork")
    log = dvic_log.open_log("forker")
    log.info("parent")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            log.info("child")
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    log.close()
    by_pid = {}
    for path in live_files(directory):
        header, records = parse(path)
        by_pid[header["pid"]] = [r["msg"] for r in records]
    assert by_pid == {os.getpid(): ["parent"], pid: ["child"]}, by_pid


def check_rotation(work):
    import dvic_log

    directory = fresh_dir(work, "rotation")
    with dvic_log.open_log("rotor", max_bytes=4096) as log:
        for i in range(500):
            log.info(f"record {i:04d}")
            assert os.path.getsize(log.path) <= 4096
    assert live_files(directory) == [log.path]
    old_header, old = parse(log.path + ".1")
    header, new = parse(log.path)
    assert header["rotated"] == old_header["rotated"] + 1
    numbers = [int(r["msg"].split()[1]) for r in old + new]
    assert numbers == list(range(500 - len(numbers), 500))


def wrapper(lib_dir, args, **kwargs):
    env = dict(os.environ, PYTHONPATH=lib_dir)
    return [sys.executable, "-m", "dvic_log", "run"] + args, env


def check_run_exit_code(work, lib_dir):
    directory = fresh_dir(work, "run")
    child = [sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(5)"]
    cmd, env = wrapper(lib_dir, ["-q", "--name", "wrapped", "--"] + child)
    result = subprocess.run(cmd, env=env, timeout=60, start_new_session=True)
    assert result.returncode == 5, result.returncode
    (path,) = live_files(directory)
    header, records = parse(path)
    assert header["name"] == "wrapped" and header["argv"] == child
    assert sorted((r["level"], r["msg"]) for r in records[:-1]) == [("ERROR", "err"), ("INFO", "out")]
    assert records[-1]["msg"].endswith("exited with status 5")


def check_run_signal(work, lib_dir):
    directory = fresh_dir(work, "signal")
    body = (
        "import signal, sys, time\n"
        "def h(s, f):\n"
        "    print('got', s, flush=True); sys.exit(7)\n"
        "signal.signal(signal.SIGTERM, h)\n"
        "print('ready', flush=True)\n"
        "for _ in range(600): time.sleep(0.1)\n"
    )
    cmd, env = wrapper(lib_dir, ["-q", "--", sys.executable, "-c", body])
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:

        def ready():
            files = live_files(directory)
            return files and any(r["msg"] == "ready" for r in parse(files[0])[1])

        wait_for(ready, 20, "the child to be ready")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 7
    finally:
        proc.kill()
        proc.wait()
    (path,) = live_files(directory)
    assert [r["msg"] for r in parse(path)[1]][:2] == ["ready", "got 15"]


def check_cat_and_ls(work, lib_dir):
    import dvic_log

    fresh_dir(work, "readers")
    with dvic_log.open_log("readable", max_bytes=4096) as log:
        for i in range(100):
            log.info(f"line {i}")
    env = dict(os.environ, PYTHONPATH=lib_dir)
    cat = subprocess.run(
        [sys.executable, "-m", "dvic_log", "cat", "--all", "readable"],
        env=env,
        stdout=subprocess.PIPE,
        timeout=60,
        check=True,
    )
    lines = cat.stdout.decode().splitlines()
    assert lines[-1].endswith("INFO     line 99"), lines[-1:]
    listed = subprocess.run(
        [sys.executable, "-m", "dvic_log", "ls", "--json"],
        env=env,
        stdout=subprocess.PIPE,
        timeout=60,
        check=True,
    )
    (row,) = json.loads(listed.stdout)
    assert row["name"] == "readable" and row["state"] == "alive"


def main():
    lib_dir, work = sys.argv[1], sys.argv[2]
    sys.path.insert(0, lib_dir)
    checks = [
        ("logger records", lambda: check_logger_records(work)),
        ("threads", lambda: check_threads(work)),
        ("fork", lambda: check_fork(work)),
        ("rotation", lambda: check_rotation(work)),
        ("run exit code", lambda: check_run_exit_code(work, lib_dir)),
        ("run signal", lambda: check_run_signal(work, lib_dir)),
        ("cat and ls", lambda: check_cat_and_ls(work, lib_dir)),
    ]
    failed = 0
    for name, check in checks:
        try:
            check()
            print(f"ok   {name}")
        except Exception:
            failed += 1
            print(f"FAIL {name}\n{traceback.format_exc()}")
    print(f"python {sys.version.split()[0]}: {len(checks) - failed} of {len(checks)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
