"""Following demo log files (growth, truncation, rotation, deletion, restart) and demo liveness."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import textwrap
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import dvic_node
import pytest
from node_support import Recorder, demo_watcher, step

TOKEN = "0123456789abcdef"
NODE_SCRIPT = Path(dvic_node.__file__).resolve()


def pid_start(pid: int) -> int:
    data = Path(f"/proc/{pid}/stat").read_bytes()
    return int(data[data.rfind(b")") + 2:].split()[19])


def header(pid: int, name: str = "robot-arm", start: int | None = None, **extra: object) -> bytes:
    h = {"dvic_log": 1, "token": TOKEN, "name": name, "pid": pid,
         "pid_start": pid_start(pid) if start is None else start, "exe": "/usr/bin/python3",
         "argv": ["robot.py"], "user": "demo", "host": "pi-42", "start": 1764000000.0, **extra}
    return json.dumps(h).encode() + b"\n"


def record(msg: str, level: str = "INFO", **extra: object) -> bytes:
    return json.dumps({"ts": 1764000001.5, "level": level, "msg": msg, **extra}).encode() + b"\n"


def texts(lines: list[dvic_node.Line]) -> list[bytes]:
    return [ln.data for ln in lines]


def following(path: Path, content: bytes) -> dvic_node.FileFollower:
    """`path` written with `content`, and a follower opened on it."""
    path.write_bytes(content)
    follower = dvic_node.FileFollower(str(path))
    follower.open()
    return follower


def stopped(follower: dvic_node.FileFollower) -> dict:
    """What a stopping daemon keeps of a file: its position, after reading what is there."""
    follower.read_lines()
    saved = follower.position()
    follower.close()
    return saved


def resumed(path: Path, saved: dict) -> dvic_node.FileFollower:
    """A follower of `path` opened at a position a previous run saved."""
    follower = dvic_node.FileFollower(str(path))
    follower.open(saved)
    return follower


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as w:
        w.write(data)


def rotate(path: Path, content: bytes) -> None:
    """What the writer does: the file becomes PATH.1 and a new one with `content` takes its name."""
    os.replace(path, str(path) + ".1")
    path.write_bytes(content)


# -- FileFollower ------------------------------------------------------------------------------

def test_growth_and_partial_lines(tmp_path: Path) -> None:
    p = tmp_path / "f"
    f = following(p, b"a\nb")
    assert texts(f.read_lines()) == [b"a"]
    assert f.position()["off"] == 2  # a restart resumes before the incomplete "b"
    append(p, b"c\n")
    lines = f.read_lines()
    assert texts(lines) == [b"bc"] and (lines[0].start, lines[0].end) == (2, 5)


def test_truncation_restarts_from_the_top(tmp_path: Path) -> None:
    p = tmp_path / "f"
    f = following(p, b"one\ntwo\nthree\n")
    f.read_lines()
    with open(p, "wb") as w:
        w.write(b"new\n")
    assert texts(f.read_lines()) == [b"new"]
    assert any("truncated" in e for e in f.events)


def test_rotation_drains_the_old_file_before_the_new(tmp_path: Path) -> None:
    p = tmp_path / "f"
    f = following(p, b"old1\n")
    assert texts(f.read_lines()) == [b"old1"]
    append(p, b"old2\nunterminated")
    rotate(p, b"new1\n")
    old = f.position()
    assert texts(f.read_lines()) == [b"old2", b"unterminated"]  # nothing of the old file is lost
    assert f.position()["ino"] == old["ino"]  # one call never mixes two files
    assert texts(f.read_lines()) == [b"new1"]
    assert f.position() == {"ino": p.stat().st_ino, "dev": p.stat().st_dev, "off": 5, "h": zlib.crc32(b"new1")}


def test_rewind_gives_the_same_lines_again(tmp_path: Path) -> None:
    p = tmp_path / "f"
    f = following(p, b"a\npart")
    assert texts(f.read_lines()) == [b"a"]
    append(p, b"ial\nb\n")
    assert texts(f.read_lines()) == [b"partial", b"b"]
    f.rewind()  # e.g. the spool was full: nothing of that call was stored
    assert texts(f.read_lines()) == [b"partial", b"b"]
    p.unlink()
    assert f.read_lines() == [] and f.gone
    f.rewind()
    assert not f.gone and f.read_lines() == [] and f.gone


def test_rotation_caught_between_rename_and_create(tmp_path: Path) -> None:
    p = tmp_path / "f"
    f = following(p, b"a\n")
    assert texts(f.read_lines()) == [b"a"]
    append(p, b"b\n")
    os.rename(p, str(p) + ".1")
    assert texts(f.read_lines()) == [b"b"] and not f.gone  # the writer has not created the new file yet
    p.write_bytes(b"c\n")
    assert f.read_lines() == []  # the switch happens at the next call
    assert texts(f.read_lines()) == [b"c"]


def test_deletion_drains_then_reports_gone(tmp_path: Path) -> None:
    p = tmp_path / "f"
    f = following(p, b"x\n")
    f.read_lines()
    append(p, b"last words\n")
    p.unlink()  # the open descriptor still reads the vanished file
    assert texts(f.read_lines()) == [b"last words"]
    assert f.gone


def test_resume_from_saved_position_and_from_rotated_file(tmp_path: Path) -> None:
    p = tmp_path / "f"
    saved = stopped(following(p, b"a\nb\n"))
    append(p, b"c\n")
    g = resumed(p, saved)
    assert texts(g.read_lines()) == [b"c"]  # neither re-sent nor skipped
    saved = stopped(g)
    append(p, b"d\n")
    rotate(p, b"e\n")  # while the daemon was down
    h = resumed(p, saved)
    assert texts(h.read_lines()) == [b"d"]
    assert texts(h.read_lines()) == [b"e"]


def test_a_new_file_with_a_reused_inode_number_is_read_from_its_start(tmp_path: Path) -> None:
    p = tmp_path / "f"
    saved = stopped(following(p, b"header one\nline\n"))
    with open(p, "r+b") as w:  # same inode, other content: what a reused inode number looks like
        w.write(b"header TWO\nline\n")
    g = resumed(p, saved)
    assert texts(g.read_lines()) == [b"header TWO", b"line"]


def test_ten_megabyte_line_is_cut_not_buffered(tmp_path: Path) -> None:
    p = tmp_path / "f"
    with open(p, "wb") as w:
        w.write(b"x" * (10 * 1024 * 1024) + b"\nnext\n")
    f = dvic_node.FileFollower(str(p))
    f.open()
    got: list[dvic_node.Line] = []
    for _ in range(100):  # bounded: 10 MiB at 256 KiB per call
        got += f.read_lines()
        if len(got) >= 2:
            break
    assert got[0].overlong and len(got[0].data) == dvic_node.LINE_BUFFER_MAX
    assert got[1].data == b"next" and not got[1].overlong


def test_symlinks_and_hard_links_are_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("root:x:0:0\n")
    link = tmp_path / "link"
    link.symlink_to(secret)
    with pytest.raises(OSError):
        dvic_node.FileFollower(str(link)).open()
    hard = tmp_path / "hard"
    os.link(secret, hard)
    with pytest.raises(OSError, match="hard links"):
        dvic_node.FileFollower(str(hard)).open()
    # ...except the second name a dvic_log rotation gives the full file for a moment
    live = tmp_path / "dvic_log_x"
    live.write_bytes(b"h\n")
    os.link(live, str(live) + ".1")
    dvic_node.FileFollower(str(live)).open()
    dvic_node.FileFollower(str(live) + ".1").open()


# -- records -----------------------------------------------------------------------------------

def mk(data: bytes, overlong: bool = False) -> dvic_node.Line:
    return dvic_node.Line(10, 20, data, overlong)


def test_records_are_parsed_and_anything_else_is_raw_text() -> None:
    ts, level, msg, cut = dvic_node.parse_record(mk(record("multi\nline ✓", "WARNING", exc="Traceback...")[:-1]))
    assert (ts, level, msg, cut) == (1764000001.5, "WARNING", "multi\nline ✓\nTraceback...", False)
    assert dvic_node.parse_record(mk(b'{"ts": "x", "level": "loud", "msg": 5}'))[1:3] == ("INFO", "5")
    assert dvic_node.parse_record(mk(b"plain text"))[1:3] == ("INFO", "plain text")
    _, level, msg, _ = dvic_node.parse_record(mk(b"\x00\xff\xfebin"))
    assert level == "INFO" and msg == "\x00\ufffd\ufffdbin"  # never dropped, decoded with replacement


def test_long_messages_are_truncated_to_64k() -> None:
    _, _, msg, cut = dvic_node.parse_record(mk(record("é" * 100_000)[:-1]))
    assert cut and len(msg.encode()) <= dvic_node.MAX_MSG_BYTES
    cut_json = record("y" * 2_000_000, "ERROR")[: dvic_node.LINE_BUFFER_MAX]
    _, level, msg, cut = dvic_node.parse_record(mk(cut_json, overlong=True))
    assert cut and level == "ERROR" and msg.startswith("yyy") and len(msg.encode()) <= dvic_node.MAX_MSG_BYTES


def test_header_validation() -> None:
    good, why = dvic_node.parse_header(header(os.getpid())[:-1])
    assert good and good["name"] == "robot-arm" and why == ""
    for bad, reason in [(b"{", "not JSON"), (b'{"dvic_log": 2}', "version 1"),
                        (b'{"dvic_log": 1, "pid": "x", "name": "n"}', "pid"),
                        (b'{"dvic_log": 1, "pid": 5}', "name")]:
        h, why = dvic_node.parse_header(bad)
        assert h is None and reason in why


def test_pid_liveness_checks_start_time() -> None:
    me = os.getpid()
    assert dvic_node.pid_state("/proc", me, pid_start(me))
    assert not dvic_node.pid_state("/proc", me, pid_start(me) + 1)  # a reused pid is another process
    assert dvic_node.pid_state("/proc", me, None)
    assert not dvic_node.pid_state("/proc", 2**22 + 12345, None)


# -- DemoWatcher with real demo processes ------------------------------------------------------

@dataclass
class Watched:
    """A demo's log file under tmp_path/logs (its process: demo_proc) and a watcher that has read it once."""

    path: Path
    watcher: dvic_node.DemoWatcher
    spool: dvic_node.Spool
    rec: Recorder

    def msgs(self) -> list[str]:
        return [ln["msg"] for ln in self.spool.read(1)]


def watched(tmp_path: Path, pid: int, first: str) -> Watched:
    logs = tmp_path / "logs"
    logs.mkdir()
    path = logs / f"dvic_log_{TOKEN}"
    path.write_bytes(header(pid) + record(first))
    w, spool, rec = demo_watcher(tmp_path)
    step(w)
    return Watched(path, w, spool, rec)


def test_demo_lifecycle_lines_and_exit(tmp_path: Path, demo_proc: subprocess.Popen[bytes]) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    path = logs / f"dvic_log_{TOKEN}"
    path.write_bytes(header(demo_proc.pid) + record("hello") + record("oops", "ERROR"))
    (logs / f"dvic_log_{TOKEN}.1").write_bytes(b"rotated files are never discovered\n")
    (logs / "dvic_log_NOTHEX0123456789").write_bytes(b"ignored\n")
    w, spool, rec = demo_watcher(tmp_path)
    step(w)
    assert [m["state"] for m in rec.messages] == ["started"]
    assert rec.messages[0]["name"] == "robot-arm" and rec.messages[0]["pid"] == demo_proc.pid
    lines = spool.read(1)
    assert [(ln["msg"], ln["level"], ln["unit"], ln["demo"], ln["source"]) for ln in lines] == [
        ("hello", "INFO", "robot-arm", TOKEN, "demo"), ("oops", "ERROR", "robot-arm", TOKEN, "demo")]
    demo_proc.kill()
    demo_proc.wait()
    step(w)
    assert [m["state"] for m in rec.messages] == ["started", "exited"]
    assert rec.messages[1]["exited_at"] >= time.time() - 30
    assert w.announce()[0]["state"] == "exited"
    path.unlink()
    step(w)
    assert w.demos == {} and spool.extra["demos"] == {}


def test_restart_neither_resends_nor_skips(tmp_path: Path, demo_proc: subprocess.Popen[bytes]) -> None:
    demo = watched(tmp_path, demo_proc.pid, "one")
    append(demo.path, record("two"))
    # the daemon dies here (no checkpoint); the line arrives while it is down
    w2, spool2, rec2 = demo_watcher(tmp_path)
    step(w2)
    assert [ln["msg"] for ln in spool2.read(1)] == ["one", "two"]  # "one" not shipped twice
    assert rec2.messages == []  # a known alive demo is not "started" again
    assert w2.announce()[0]["state"] == "alive"


def test_rotation_by_the_writer_keeps_identity_and_order(tmp_path: Path,
                                                         demo_proc: subprocess.Popen[bytes]) -> None:
    demo = watched(tmp_path, demo_proc.pid, "a")
    append(demo.path, record("b"))
    rotate(demo.path, header(demo_proc.pid, rotated=1) + record("c"))
    step(demo.watcher, 3)
    assert demo.msgs() == ["a", "b", "c"]  # the new header is not a line
    assert [m["state"] for m in demo.rec.messages] == ["started"]


def test_a_file_recreated_after_deletion_is_followed(tmp_path: Path,
                                                    demo_proc: subprocess.Popen[bytes]) -> None:
    demo = watched(tmp_path, demo_proc.pid, "first life")
    demo.path.unlink()
    step(demo.watcher)
    demo.path.write_bytes(header(demo_proc.pid) + record("second life"))
    step(demo.watcher, 2)
    assert demo.msgs() == ["first life", "second life"]


def test_late_discovery_reads_the_previous_file_first(tmp_path: Path,
                                                      demo_proc: subprocess.Popen[bytes]) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    path = logs / f"dvic_log_{TOKEN}"
    (logs / f"dvic_log_{TOKEN}.1").write_bytes(header(demo_proc.pid) + record("a") + record("b"))
    path.write_bytes(header(demo_proc.pid, rotated=1) + record("c"))
    w, spool, rec = demo_watcher(tmp_path)
    step(w, 3)
    assert [ln["msg"] for ln in spool.read(1)] == ["a", "b", "c"]
    assert rec.errors == [] and [m["state"] for m in rec.messages] == ["started"]


def test_rotations_never_read_are_reported(tmp_path: Path, demo_proc: subprocess.Popen[bytes]) -> None:
    demo = watched(tmp_path, demo_proc.pid, "a")
    # two rotations between two reads: rotated 1 was never seen
    rotate(demo.path, header(demo_proc.pid, rotated=2) + record("c"))
    step(demo.watcher, 3)
    assert demo.msgs() == ["a", "c"]
    (gap,) = [m for m in demo.rec.messages if m["type"] == "event"]
    assert gap["kind"] == "log_gap" and "1 rotated log file(s) were never read" in gap["message"]
    assert gap["data"] == {"token": TOKEN, "demo": "robot-arm", "missed_files": 1, "from_rotation": 1,
                           "to_rotation": 1}


class RacingFollower(dvic_node.FileFollower):
    """The writer appends a line and rotates exactly between our read to EOF and our look at the path."""

    def __init__(self, path: str, race: list) -> None:
        super().__init__(path)
        self.race = race

    def _check_path(self, out: list) -> None:
        while self.race:
            self.race.pop(0)()
        super()._check_path(out)


@pytest.mark.parametrize("then", ["rotate", "delete"])
def test_a_line_written_just_before_a_rotation_or_deletion_is_not_lost(tmp_path: Path, then: str) -> None:
    path = tmp_path / f"dvic_log_{TOKEN}"
    path.write_bytes(record("a"))
    race: list = []
    f = RacingFollower(str(path), race)
    f.open()
    assert texts(f.read_lines()) == [record("a").rstrip(b"\n")]

    def append_then_move() -> None:
        append(path, record("b") + b"partial")
        if then == "rotate":
            rotate(path, record("c"))
        else:
            path.unlink()

    race.append(append_then_move)
    got = texts(f.read_lines()) + texts(f.read_lines()) + texts(f.read_lines())
    want = [record("b").rstrip(b"\n"), b"partial"] + ([record("c").rstrip(b"\n")] if then == "rotate" else [])
    assert got == want
    assert f.gone == (then == "delete")


def test_broken_header_and_garbage_are_shipped_and_reported(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / f"dvic_log_{TOKEN}").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00garbage\n" + record("still here"))
    w, spool, rec = demo_watcher(tmp_path)
    step(w)
    step(w)
    msgs = [ln["msg"] for ln in spool.read(1)]
    assert msgs[0].startswith("\ufffdPNG") and msgs[-1] == "still here"
    assert len(rec.errors) == 1 and "broken header" in rec.errors[0]
    assert rec.messages == []  # no identity, so no demo state


def test_permission_denied_is_reported_once_and_retried() -> None:
    """Run the watcher as an unprivileged user (root reads everything) on a 0600 root file."""
    system_python = shutil.which("python3", path="/usr/bin:/bin")  # pyenv's lives in /root (0700)
    if os.geteuid() != 0 or not system_python:
        pytest.skip("needs root and a system python3 to switch to an unprivileged user")
    base = Path(tempfile.mkdtemp(prefix="dvic-node-perm-"))  # pytest's tmp dirs are private to root
    try:
        base.chmod(0o755)
        shutil.copy(NODE_SCRIPT, base / "dvic_node.py")
        logs = base / "logs"
        logs.mkdir(mode=0o777)
        logs.chmod(0o777)
        path = logs / f"dvic_log_{TOKEN}"
        path.write_bytes(header(os.getpid()) + record("secret-ish"))
        path.chmod(0o600)
        code = textwrap.dedent(f"""
            import os, sys
            os.setgid(65534); os.setuid(65534)
            sys.path.insert(0, {str(base)!r})
            import dvic_node
            spool = dvic_node.Spool({str(logs / "spool")!r}); spool.open()
            errors = []
            w = dvic_node.DemoWatcher(spool, lambda m: None, lambda msg, data: errors.append(msg))
            w.set_logdirs([dvic_node.LogDir({str(logs)!r})])
            for _ in range(3):
                w.scan(); w.poll(); w.check_liveness()
                for d in w.demos.values():
                    d.retry_at = 0  # retry at once instead of in 10 s
            print(len(errors), errors[0])
            sys.stdout.flush()
            sys.stdin.readline()  # the test makes the file readable
            for _ in range(3):
                w.scan(); w.poll()
            print([l["msg"] for l in spool.read(1)])
        """)
        proc = subprocess.Popen([system_python, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            first = proc.stdout.readline()  # type: ignore[union-attr]
            assert first.startswith("1 cannot open demo log") and "Permission denied" in first, \
                first + proc.stderr.read()  # type: ignore[union-attr]
            path.chmod(0o644)
            out, err = proc.communicate("go\n", timeout=30)
            assert "['secret-ish']" in out, err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_two_rotations_between_reads_read_the_skipped_file_first(tmp_path: Path,
                                                                 demo_proc: subprocess.Popen[bytes]) -> None:
    demo = watched(tmp_path, demo_proc.pid, "a")
    append(demo.path, record("b"))  # still in the file we hold, read before the switch
    rotate(demo.path, header(demo_proc.pid, rotated=1) + record("c"))
    rotate(demo.path, header(demo_proc.pid, rotated=2) + record("d"))  # rotation 1 is now .1; ours is deleted
    step(demo.watcher, 5)
    assert demo.msgs() == ["a", "b", "c", "d"]
    assert not [m for m in demo.rec.messages if m["type"] == "event"] and demo.rec.errors == []


# -- inotify: only the files that changed are read --------------------------------------------

def inotify_step(w: dvic_node.DemoWatcher, notify: dvic_node.Inotify) -> None:
    """One round of the daemon's tail loop: the kernel's news, a scan if asked, the files now due."""
    w.take_events(notify.read_events())
    if w.rescan:
        w.scan()
    w.poll(due_only=True)
    w.check_liveness()


def test_inotify_wakes_on_writes_rotations_and_new_files_and_leaves_idle_files_alone(
        tmp_path: Path, demo_proc: subprocess.Popen[bytes]) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    path = logs / f"dvic_log_{TOKEN}"
    path.write_bytes(header(demo_proc.pid) + record("a"))
    w, spool, rec = demo_watcher(tmp_path)
    notify = dvic_node.Inotify()
    w.notify = notify
    try:
        w.scan()
        assert w.dirs_watched
        for _ in range(3):  # read, watched (one more read for a write just before the watch), idle
            inotify_step(w, notify)
        demo = w.demos[f"demo:{TOKEN}"]
        assert demo.watched_ino == os.stat(path).st_ino
        assert w.next_due() > time.monotonic() + 4  # an idle watched file waits for the kernel (5 s check)
        append(path, record("b"))
        inotify_step(w, notify)
        assert [ln["msg"] for ln in spool.read(1)] == ["a", "b"]

        rotate(path, header(demo_proc.pid, rotated=1) + record("c"))  # the writer rotates
        for _ in range(3):
            inotify_step(w, notify)
        other = logs / "dvic_log_fedcba9876543210"  # a new demo is found without waiting for a scan
        other.write_bytes(header(demo_proc.pid, name="second") + record("d"))
        inotify_step(w, notify)
        assert [ln["msg"] for ln in spool.read(1)] == ["a", "b", "c", "d"]
        assert rec.errors == []
    finally:
        w.notify = None
        notify.close()
