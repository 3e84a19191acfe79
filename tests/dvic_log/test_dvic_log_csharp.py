"""The C# library (lib/csharp/DvicLog.cs) against the Python reference, compiled with mcs, run with mono.

lib/csharp/tests/LibraryChecks.cs holds the scenarios (one process each); these tests run them and
read the files with the Python reader: header, records, rotation, threads, a deleted file, a full
disk, byte-exact lines, and the managed fallback (FileStream) that Windows and macOS use.
"""

import base64
import json
import os
import pwd
import random
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from dvic_log._format import record_line
from dvic_log._identity import read_pid_start
from dvic_log_testkit import check_full_disk, library_env, live_files, read_file, tool
from test_dvic_log_js import documented_fit, random_text

REPO = Path(__file__).resolve().parents[2]
CS_DIR = REPO / "lib" / "csharp"
MONO = ".ci/run installs mono-mcs and mono-runtime"


def build(out: Path, *sources: Path, defines: tuple[str, ...] = (), target: str = "exe") -> Path:
    """Compile sources with mcs, warnings as errors, into out."""
    cmd = [tool("mcs", MONO), "-nologo", "-warnaserror", f"-target:{target}", f"-out:{out}",
           *(f"-define:{d}" for d in defines), *map(str, sources)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


@pytest.fixture(scope="module")
def checks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("csharp") / "checks.exe"
    return build(out, CS_DIR / "DvicLog.cs", CS_DIR / "tests" / "LibraryChecks.cs", CS_DIR / "tests" / "MiniJson.cs")


def run(checks: Path, log_dir: Path, *args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    # Run from the log directory: a path mixed up in a scenario lands there, never in the checkout.
    return subprocess.run(
        [tool("mono", MONO), str(checks), *args], env=library_env(log_dir, **env), input=stdin, capture_output=True, text=True,
        timeout=120, cwd=log_dir,
    )  # fmt: skip


def test_the_file_builds_alone_without_warnings(tmp_path: Path):
    build(tmp_path / "DvicLog.dll", CS_DIR / "DvicLog.cs", target="library")


def test_the_unity_handler_sends_debug_log_to_the_demo_log_and_on_to_unity(tmp_path: Path, log_dir: Path):
    exe = build(tmp_path / "unity.exe", CS_DIR / "DvicLog.cs", CS_DIR / "tests" / "UnityChecks.cs",
                CS_DIR / "tests" / "UnityEngineStandIn.cs", defines=("DVIC_LOG_UNITY",))  # fmt: skip
    done = subprocess.run([tool("mono", MONO), str(exe)], env=library_env(log_dir), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    *console, last = done.stdout.splitlines()
    assert console == [
        "[Log] hello from Update", "[Warning] frame took 40 ms", "[Error] camera not found", "[Log] score 7 of 10",
        "[Assert] assertion", "[Exception] boom", "[Log] after uninstall: only in Unity's console",
    ]  # fmt: skip
    _, path, again = last.split()
    assert again == "True"
    header, records = read_file(Path(path))
    assert header["name"] == "unity-demo"
    assert [(r["level"], r["msg"]) for r in records] == [
        ("INFO", "hello from Update"), ("WARNING", "frame took 40 ms"), ("ERROR", "camera not found"),
        ("INFO", "score 7 of 10"), ("ERROR", "assertion"), ("ERROR", "InvalidOperationException: boom"),
        ("DEBUG", "heartbeat"),
    ]  # fmt: skip
    assert records[5]["exc"].startswith("System.InvalidOperationException: boom\n  at UnityChecks.Main ()")


def test_linux_uses_libc(checks: Path, log_dir: Path):
    assert run(checks, log_dir, "filesystem").stdout == "libc\n"
    assert run(checks, log_dir, "managed", "filesystem").stdout == "managed\n"


def test_the_header_describes_the_process_and_the_file_is_0644_under_a_strict_umask(checks: Path, log_dir: Path):
    done = subprocess.run(
        ["sh", "-c", f'umask 077 && exec "{tool("mono", MONO)}" "{checks}" header'], env=library_env(log_dir), capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    path = Path(out["path"])
    assert path == log_dir / f"dvic_log_{out['token']}"
    assert path.stat().st_mode & 0o777 == 0o644
    header, records = read_file(path)
    assert records == []
    assert list(header) == ["dvic_log", "token", "name", "pid", "pid_start", "exe", "argv", "user", "host", "start"]
    assert header["token"] == out["token"] and header["name"] == "robot-arm" and header["pid"] == out["pid"]
    assert isinstance(header["pid_start"], int) and read_pid_start(out["pid"]) is None  # it exited
    assert os.path.basename(header["exe"]).startswith("mono")
    assert header["argv"] == out["argv"] == [str(checks), "header"]
    assert header["user"] == pwd.getpwuid(os.geteuid()).pw_name and header["host"] == socket.gethostname()
    assert isinstance(header["start"], float)


def test_records_carry_level_message_logger_and_traceback(checks: Path, log_dir: Path):
    done = run(checks, log_dir, "records")
    assert done.returncode == 0, done.stderr
    _, records = read_file(Path(done.stdout.strip()))
    assert [(r["level"], r["msg"], r.get("logger")) for r in records] == [
        ("DEBUG", "d", "demo"), ("INFO", "i", "demo"), ("WARNING", "w", "demo"), ("ERROR", "e", "demo"),
        ("CRITICAL", "c", "demo"), ("INFO", "custom level", "demo"), ("WARNING", "via Log", "demo"),
        ("INFO", "from a child", "demo.axis"), ("ERROR", "failed", "demo"), ("INFO", "a\ufffdb", "demo"),
        ("ERROR", "explicit", "demo"), ("INFO", "", "demo"),
    ]  # fmt: skip
    assert records[8]["exc"].startswith("System.InvalidOperationException: boom\n  at LibraryChecks.Records ()")
    assert records[10]["exc"] == "Traceback\n  here"
    assert all(round(r["ts"], 3) == r["ts"] for r in records)


def test_one_name_one_file_two_names_two_files(checks: Path, log_dir: Path):
    assert run(checks, log_dir, "same-name").stdout == "true true true\n"
    by_name = {h["name"]: [r["msg"] for r in rs] for h, rs in map(read_file, live_files(log_dir))}
    assert by_name == {"alpha": ["1", "2"], "beta": ["3"]}


def test_a_bad_name_or_option_throws_and_a_bad_environment_is_one_stderr_line(checks: Path, log_dir: Path):
    done = run(checks, log_dir, "bad-names")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.splitlines() == [
        "ConfigException dvic_log: the demo name must not be empty",
        "ConfigException dvic_log: the demo name must not be empty",
        "ConfigException dvic_log: the demo name must be one line without NUL characters",
        "ConfigException dvic_log: the demo name must be one line without NUL characters",
        "ConfigException dvic_log: the demo name is longer than 200 characters",
        "ConfigException dvic_log: the demo name must be a string, not null",
        "dvic_log: MaxBytes=10 is below the minimum of 4096 bytes",
        "dvic_log: directory option '/nonexistent/dir' is not an existing directory",
    ]
    assert live_files(log_dir) == []
    missing = run(checks, log_dir, "bad-env", DVIC_LOG_DIR=str(log_dir / "missing"))
    assert (missing.returncode, missing.stdout) == (0, "false null\n")
    assert missing.stderr == (f"dvic_log: demo 'x': DVIC_LOG_DIR '{log_dir / 'missing'}' is not an existing directory; "
                              "its records are dropped\n")  # fmt: skip
    bad_cap = run(checks, log_dir, "bad-env", DVIC_LOG_MAX_BYTES="lots")
    assert bad_cap.stderr == "dvic_log: demo 'x': DVIC_LOG_MAX_BYTES='lots' is not a whole number of bytes; its records are dropped\n"


@pytest.mark.parametrize("mode", ["libc", "managed"])
def test_rotation_keeps_each_file_under_the_cap_and_the_last_two_files_whole(checks: Path, log_dir: Path, mode: str):
    args = ("managed", "rotate", "400") if mode == "managed" else ("rotate", "400")
    done = run(checks, log_dir, *args, DVIC_LOG_MAX_BYTES="4096")
    assert done.returncode == 0, done.stderr
    live = Path(done.stdout.strip())
    assert sorted(p.name for p in log_dir.iterdir()) == [live.name, live.name + ".1"]
    older, newer = read_file(Path(f"{live}.1")), read_file(live)
    assert live.stat().st_size <= 4096 and Path(f"{live}.1").stat().st_size <= 4096
    assert newer[0]["rotated"] == older[0]["rotated"] + 1 >= 2
    assert newer[0]["token"] == older[0]["token"] and newer[0]["start"] == older[0]["start"]
    numbers = [int(r["msg"].split()[1]) for r in older[1] + newer[1]]
    assert numbers == list(range(400 - len(numbers), 400))


def test_a_record_bigger_than_the_cap_is_cut_and_marked(checks: Path, log_dir: Path):
    done = run(checks, log_dir, "big", DVIC_LOG_MAX_BYTES="4096")
    live = Path(done.stdout.strip())
    records = read_file(Path(f"{live}.1"))[1] + read_file(live)[1]
    assert [r["msg"][-22:] for r in records] == [" [dvic_log: truncated]", "after"[-22:]]
    assert set(records[0]["msg"][:-22]) == {"é"}
    # Cut exactly by the format's rule for this file (its header sets the room).
    header_len = len(Path(f"{live}.1").read_bytes().split(b"\n", 1)[0]) + 1
    rec = {"ts": records[0]["ts"], "level": "INFO", "msg": "é" * 10000, "logger": "big"}
    want = documented_fit(rec, 4096 - header_len - 24)
    assert Path(f"{live}.1").read_bytes().split(b"\n")[1] + b"\n" == want


@pytest.mark.parametrize("mode", ["libc", "managed"])
def test_a_file_deleted_under_the_writer_is_created_again(checks: Path, log_dir: Path, mode: str):
    done = run(checks, log_dir, *(["managed"] if mode == "managed" else []), "vanish")
    same, path = done.stdout.split()
    assert same == "true", done.stderr
    header, records = read_file(Path(path))
    assert header["rotated"] == 1 and records[-1]["msg"] == "after"


def test_threads_share_the_file_and_never_split_a_line(checks: Path, log_dir: Path):
    done = run(checks, log_dir, "threads", DVIC_LOG_MAX_BYTES="200000")  # ~250 KB of records: one rotation
    live = Path(done.stdout.strip())
    assert live_files(log_dir) == [live]
    older, newer = read_file(Path(f"{live}.1")), read_file(live)
    assert "rotated" not in older[0] and newer[0]["rotated"] == 1
    msgs = [r["msg"] for r in older[1] + newer[1]]
    assert len(msgs) == len(set(msgs)) == 2502
    assert msgs[0] == "main first" and msgs[-1] == "main last"
    for t in range(4):
        own = [int(m.split()[3]) for m in msgs if m.startswith(f"worker {t} ")]
        assert own == list(range(500))


def test_heartbeats_are_rate_limited_and_shaped_as_documented(checks: Path, log_dir: Path):
    first, second, third, waited, path = run(checks, log_dir, "heartbeat").stdout.split()
    assert (first, second, third, waited) == ("true", "false", "true", "true")
    lines = Path(path).read_text().splitlines()[1:]
    assert len(lines) == 2
    for line in lines:
        ts = repr(json.loads(line)["ts"])
        assert line == '{"ts":' + ts + ',"level":"DEBUG","msg":"heartbeat","heartbeat":1}'


@pytest.mark.parametrize("mode", ["libc", "managed"])
def test_close_keeps_the_file_and_a_later_record_reopens_it(checks: Path, log_dir: Path, mode: str):
    same, path = run(checks, log_dir, *(["managed"] if mode == "managed" else []), "reopen").stdout.split()
    assert same == "true"
    assert live_files(log_dir) == [Path(path)]
    assert [r["msg"] for r in read_file(Path(path))[1]] == ["one", "two", "heartbeat"]


def test_records_from_an_exit_handler_and_before_a_kill_are_in_the_file(checks: Path, log_dir: Path):
    assert run(checks, log_dir, "exit").returncode == 3
    assert run(checks, log_dir, "kill").returncode != 0
    by_name = {h["name"]: [r["msg"] for r in rs] for h, rs in map(read_file, live_files(log_dir))}
    assert by_name["exiting"] == ["bye", "exit handler"]
    assert by_name["killed"] == [f"line {i}" for i in range(1000)]


def test_a_planted_symlink_is_never_opened(checks: Path, log_dir: Path, tmp_path: Path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = log_dir / "dvic_log_0123456789abcdef"
    link.symlink_to(victim)
    for mode in ([], ["managed"]):
        done = run(checks, log_dir, *mode, "symlink", str(link))
        assert done.stdout == "EEXIST\n", (mode, done.returncode, done.stdout, done.stderr)
    assert victim.read_text() == "precious\n" and link.is_symlink()


def test_every_record_line_is_the_python_librarys_bytes(checks: Path, log_dir: Path):
    rng = random.Random(23)
    cases: list[dict[str, Any]] = []
    for k in range(400):
        cases.append({
            "ts": round(rng.uniform(1.6e9, 1.9e9), 3) if k % 7 else float(rng.randint(1_600_000_000, 1_900_000_000)),
            "level": rng.choice(["DEBUG", "INFO", "ERROR"]), "msg": random_text(rng, rng.randint(0, 60)),
            "logger": random_text(rng, rng.randint(0, 12)) if k % 3 else None,
            "exc": random_text(rng, rng.randint(1, 40)) if k % 5 == 0 else None,
        })  # fmt: skip
    cuts = [dict(case, max_line=rng.randint(250, 600), msg=case["msg"] * 20) for case in cases[:150]]
    done = run(checks, log_dir, "encode", stdin=json.dumps({"lines": cases, "cuts": cuts}))
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    for case, line in zip(cases, got["out"], strict=True):
        assert base64.b64decode(line) == record_line(case["ts"], case["level"], case["msg"], case["logger"], case["exc"]), case
    for case, line in zip(cuts, got["cut"], strict=True):
        assert base64.b64decode(line) == documented_fit(case, case["max_line"]), case


def test_a_full_disk_is_reported_once_and_the_torn_line_is_finished_when_room_is_back(checks: Path, log_dir: Path):
    # RLIMIT_FSIZE stands in for a full disk; mono, unlike python and node, does not ignore SIGXFSZ
    # itself, so the test starts it ignored (a real full disk sends no signal).
    proc = subprocess.Popen(
        [tool("mono", MONO), str(checks), "full-disk"], env=library_env(log_dir), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGXFSZ, signal.SIG_IGN),
    )  # fmt: skip
    check_full_disk(proc)


def test_retention_removes_an_exited_writers_old_file_only(checks: Path, log_dir: Path):
    old, fresh, alive = (log_dir / f"dvic_log_00000000000000{x}" for x in ("aa", "bb", "cc"))
    for path in (old, fresh):
        path.write_text('{"dvic_log":1,"pid":999999999,"pid_start":1}\n')
    alive.write_text(json.dumps({"dvic_log": 1, "pid": os.getpid(), "pid_start": read_pid_start(os.getpid())}) + "\n")
    long_ago = os.path.getmtime(old) - 8 * 86400
    for path in (old, alive):
        os.utime(path, (long_ago, long_ago))
    assert run(checks, log_dir, "same-name", DVIC_LOG_KEEP_DAYS="7").returncode == 0
    assert (old.exists(), fresh.exists(), alive.exists()) == (False, True, True)
