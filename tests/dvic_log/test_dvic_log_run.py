"""`python3 -m dvic_log run`: any program's output logged, exit status and signals passed through."""

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from dvic_log._identity import read_pid_start
from dvic_log_testkit import LIB_DIR, headed_files, live_files, read_file

from tests.support.wait import wait_for

PY = sys.executable


def wrapper_cmd(*args: str) -> list[str]:
    return [PY, "-m", "dvic_log", "run", *args]


def wrapper_env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(LIB_DIR), **extra)


def run_wrapper(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    # A new session: no controlling terminal, as under systemd (see the SIGINT rule in the docs).
    return subprocess.run(
        wrapper_cmd(*args), env=wrapper_env(), capture_output=True, timeout=timeout, start_new_session=True
    )


def start_wrapper(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        wrapper_cmd(*args),
        env=wrapper_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def only_file(log_dir: Path) -> tuple[dict, list[dict]]:
    (path,) = live_files(log_dir)
    return read_file(path)


def script(body: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(body)]


@pytest.mark.parametrize("code", [0, 3, 255])
def test_output_levels_header_and_exit_status(log_dir: Path, code: int):
    cmd = script(
        f"""
        import os, sys
        print("pid", os.getpid())
        print("to stderr", file=sys.stderr)
        print("multi\\nline")
        sys.exit({code})
        """
    )
    result = run_wrapper("--name", "robot", "--", *cmd)
    assert result.returncode == code
    header, records = only_file(log_dir)
    child_pid = int(records[0]["msg"].split()[1])
    assert header["name"] == "robot"
    assert header["pid"] == child_pid  # the child, not the wrapper
    assert header["argv"] == cmd
    assert header["exe"] == os.path.realpath(PY)
    assert isinstance(header["pid_start"], int)
    body = [(r["level"], r["msg"]) for r in records[1:-1]]
    assert sorted(body) == sorted([("ERROR", "to stderr"), ("INFO", "multi"), ("INFO", "line")])
    status = records[-1]
    assert status["logger"] == "dvic_log.run"
    assert status["msg"] == f"{PY} exited with status {code}"
    assert status["level"] == ("INFO" if code == 0 else "ERROR")
    # Transparent by default: the output is echoed too.
    assert b"multi\nline\n" in result.stdout and b"to stderr\n" in result.stderr


def test_quiet_logs_without_echo_and_name_defaults_to_the_command(log_dir: Path):
    result = run_wrapper("-q", "--", "sh", "-c", "echo out; echo err >&2")
    assert result.returncode == 0
    assert result.stdout == b"" and result.stderr == b""
    header, records = only_file(log_dir)
    assert header["name"] == "sh"
    assert header["exe"] == os.path.realpath("/bin/sh") or header["exe"].endswith("sh")
    assert {(r["level"], r["msg"]) for r in records[:-1]} == {("INFO", "out"), ("ERROR", "err")}


def test_levels_can_be_chosen(log_dir: Path):
    result = run_wrapper(
        "-q", "--stdout-level", "DEBUG", "--stderr-level", "WARNING", "--", "sh", "-c", "echo a; echo b >&2"
    )
    assert result.returncode == 0
    _, records = only_file(log_dir)
    assert {(r["level"], r["msg"]) for r in records[:-1]} == {("DEBUG", "a"), ("WARNING", "b")}


def test_awkward_output_is_kept(log_dir: Path):
    cmd = script(
        """
        import sys
        out = sys.stdout.buffer
        out.write(b"crlf line\\r\\n")
        out.write(b"bad utf8 \\xff\\xfe end\\n")
        out.write(("x" * 70000 + "\\n").encode())
        out.write("emoji \\U0001F916\\n".encode())
        out.write(b"no newline at the end")
        """
    )
    assert run_wrapper("-q", "--", *cmd).returncode == 0
    _, records = only_file(log_dir)
    msgs = [r["msg"] for r in records[:-1]]
    assert msgs[0] == "crlf line"
    assert msgs[1] == "bad utf8 \ufffd\ufffd end"
    # A 70 000-byte line arrives in pieces of at most 64 KiB, nothing lost.
    assert msgs[2] == "x" * 65536 and msgs[3] == "x" * (70000 - 65536)
    assert msgs[4] == "emoji 🤖"
    assert msgs[5] == "no newline at the end"


def test_every_line_of_a_fast_writer_arrives_in_order(log_dir: Path):
    cmd = script(
        """
        for i in range(20000):
            print("line", i)
        """
    )
    assert run_wrapper("-q", "--", *cmd).returncode == 0
    _, records = only_file(log_dir)
    assert [r["msg"] for r in records[:-1]] == [f"line {i}" for i in range(20000)]


def test_rotation_applies_to_wrapped_programs(log_dir: Path):
    cmd = script(
        """
        for i in range(3000):
            print("row %05d" % i, "." * 40)
        """
    )
    assert run_wrapper("-q", "--max-bytes", "8192", "--", *cmd).returncode == 0
    (path,) = live_files(log_dir)
    backup = Path(str(path) + ".1")
    assert path.stat().st_size <= 8192 and backup.stat().st_size <= 8192
    header, records = read_file(path)
    assert header["rotated"] > 10
    assert records[-1]["msg"].endswith("exited with status 0")


def wait_for_record(log_dir: Path, text: str) -> tuple[dict, list[dict]]:
    def found():
        files = headed_files(log_dir)
        if not files:
            return None
        header, records = read_file(files[0])
        return (header, records) if any(r["msg"] == text for r in records) else None

    return wait_for(found, timeout=20, what=f"record {text!r}")


HANDLES_SIGNALS = """
    import signal, sys, time
    def on_signal(signum, frame):
        print("got", signum, flush=True)
        sys.exit(7)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    print("ready", flush=True)
    for _ in range(600):
        time.sleep(0.1)
    sys.exit(99)
    """


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signals_are_forwarded_to_the_child(log_dir: Path, signum: int):
    proc = start_wrapper("-q", "--", *script(HANDLES_SIGNALS))
    try:
        header, _ = wait_for_record(log_dir, "ready")
        # While it runs, the header identifies the live child (pid and start time).
        assert header["pid"] != proc.pid
        assert read_pid_start(header["pid"]) == header["pid_start"]
        proc.send_signal(signum)
        assert proc.wait(timeout=20) == 7
    finally:
        proc.kill()
        proc.wait()
    _, records = only_file(log_dir)
    assert [r["msg"] for r in records] == ["ready", f"got {int(signum)}", f"{PY} exited with status 7"]


def test_a_child_killed_by_a_signal_kills_the_wrapper_the_same_way(log_dir: Path):
    cmd = script(
        """
        import time
        print("ready", flush=True)
        for _ in range(600):
            time.sleep(0.1)
        """
    )
    proc = start_wrapper("-q", "--", *cmd)
    try:
        wait_for_record(log_dir, "ready")
        proc.terminate()
        assert proc.wait(timeout=20) == -signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()
    _, records = only_file(log_dir)
    assert records[-1] == {**records[-1], "level": "ERROR", "msg": f"{PY} killed by SIGTERM"}


def test_a_child_that_kills_itself_is_reported(log_dir: Path):
    result = run_wrapper("-q", "--", "sh", "-c", "kill -KILL $$")
    assert result.returncode == -signal.SIGKILL
    _, records = only_file(log_dir)
    assert records[-1]["msg"] == "sh killed by SIGKILL"


def test_a_missing_command_is_logged_and_exits_127(log_dir: Path):
    result = run_wrapper("--name", "ghost", "--", "/nonexistent/demo-binary", "--flag")
    assert result.returncode == 127
    assert b"cannot start /nonexistent/demo-binary: No such file or directory" in result.stderr
    header, records = only_file(log_dir)
    assert header["name"] == "ghost"
    assert records == [{**records[0], "level": "CRITICAL"}]
    assert "No such file or directory" in records[0]["msg"]


def test_a_non_executable_command_exits_126(log_dir: Path, tmp_path: Path):
    target = tmp_path / "demo.sh"
    target.write_text("#!/bin/sh\necho hi\n")
    target.chmod(stat.S_IRUSR | stat.S_IWUSR)
    if os.access(target, os.X_OK):  # root may execute anything with any x bit; this has none
        pytest.skip("file unexpectedly executable")
    result = run_wrapper("--", str(target))
    assert result.returncode == 126
    assert b"Permission denied" in result.stderr


def test_bad_settings_fail_before_the_command_starts(log_dir: Path, tmp_path: Path):
    marker = tmp_path / "started"
    result = run_wrapper("--max-bytes", "10", "--", "touch", str(marker))
    assert result.returncode == 2
    assert b"max_bytes=10 is below the minimum of 4096 bytes" in result.stderr
    assert not marker.exists()
    assert list(log_dir.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), b"no command given"),
        (("--name", "x"), b"no command given"),
        (("--name", "x", "--"), b"no command given"),
        (("--bogus", "--", "true"), b"unrecognized arguments: --bogus"),
        (("--name", " ", "--", "true"), b"demo name must not be empty"),
    ],
)
def test_usage_errors_are_specific(log_dir: Path, args: tuple, message: bytes):
    result = run_wrapper(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert list(log_dir.iterdir()) == []


def test_command_without_double_dash(log_dir: Path):
    result = run_wrapper("--name", "nodash", "-q", "echo", "hello")
    assert result.returncode == 0
    header, records = only_file(log_dir)
    assert header["argv"] == ["echo", "hello"]
    assert records[0]["msg"] == "hello"


def test_pty_mode_gives_the_child_a_terminal(log_dir: Path):
    cmd = script(
        """
        import sys
        print("tty", sys.stdout.isatty())
        print("second")
        """
    )
    result = run_wrapper("--pty", "--", *cmd)
    assert result.returncode == 0
    assert b"tty True\nsecond\n" in result.stdout  # no CR added by the terminal
    _, records = only_file(log_dir)
    assert [r["msg"] for r in records[:-1]] == ["tty True", "second"]


def test_a_grandchild_holding_the_output_open_does_not_keep_the_wrapper_alive(log_dir: Path):
    cmd = ["sh", "-c", "sleep 60 & echo $!; echo bye"]
    started = time.monotonic()
    result = run_wrapper("-q", "--", *cmd, timeout=30)
    elapsed = time.monotonic() - started
    _, records = only_file(log_dir)
    os.kill(int(records[0]["msg"]), signal.SIGKILL)  # the sleeper that held the pipes
    assert result.returncode == 0
    assert records[1]["msg"] == "bye"
    assert records[-1]["msg"] == "sh exited with status 0"
    assert elapsed < 20  # the 2 s drain grace, not the 60 s sleeper


def test_a_signal_ignored_by_the_wrapper_stays_ignored_for_the_child(log_dir: Path):
    # As under nohup: SIGHUP is ignored when the wrapper starts, so it must be for the child too.
    cmd = script(
        """
        import signal
        print("hup ignored", signal.getsignal(signal.SIGHUP) == signal.SIG_IGN)
        """
    )
    result = subprocess.run(
        wrapper_cmd("-q", "--", *cmd),
        env=wrapper_env(),
        capture_output=True,
        timeout=60,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),
    )
    assert result.returncode == 0, result.stderr
    _, records = only_file(log_dir)
    assert records[0]["msg"] == "hup ignored True"


def test_a_child_that_closes_its_output_is_still_supervised(log_dir: Path, tmp_path: Path):
    # No more output to relay, but the wrapper must still forward signals and pass the status on.
    marker = tmp_path / "closed"
    cmd = script(
        f"""
        import os, signal, sys, time
        print("closing", flush=True)
        os.close(1)
        os.close(2)
        signal.signal(signal.SIGTERM, lambda s, f: os._exit(9))
        open({str(marker)!r}, "w").close()
        for _ in range(600):
            time.sleep(0.1)
        """
    )
    proc = start_wrapper("-q", "--", *cmd)
    try:
        wait_for(marker.exists, timeout=20, what="the child to close its output")
        proc.terminate()
        assert proc.wait(timeout=20) == 9
    finally:
        proc.kill()
        proc.wait()
    _, records = only_file(log_dir)
    assert [r["msg"] for r in records] == ["closing", f"{PY} exited with status 9"]
