"""The real daemon against the real central server: online, metrics, demo lines exactly once, restarts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest
from daemon_support import REPO, Demo, all_logs, events, interpreters
from node_support import small_tmpfs

from tests.support import postgres
from tests.support.daemon import DaemonProcess, enrolled_daemon
from tests.support.pki import make_pki
from tests.support.server import CentralServer
from tests.support.wait import WaitTimeout, wait_for

TIMINGS = {"interval": 1.0, "offline_after": 5.0}


@pytest.fixture(scope="module")
def central(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CentralServer]:
    """Shared by the tests that enroll their own node (named after the test) and leave the server running."""
    with CentralServer(tmp_path_factory.mktemp("node-daemon") / "central", **TIMINGS) as server:
        yield server


@pytest.fixture
def own_central(tmp_path: Path) -> Iterator[CentralServer]:
    """A server of the test's own: it stops, kills and restarts it."""
    with CentralServer(tmp_path / "central", **TIMINGS) as server:
        yield server


def demo_lines(central: CentralServer, node_id: str) -> list[dict]:
    return all_logs(central, node_id, source="demo")


@pytest.mark.parametrize("python", interpreters())
def test_node_online_metrics_lines_once_and_demo_exit(central: CentralServer, tmp_path: Path, logs_dir: Path,
                                                      python: str) -> None:
    node_id, daemon = enrolled_daemon(central, tmp_path, logs_dir, python=python)
    demo = Demo(logs_dir, "robot-arm", 50)
    daemon.start()
    try:
        token = demo.wait_written()
        wait_for(lambda: central.node(node_id)["state"] == "online", 20, "node online")
        detail = wait_for(lambda: (d := central.node(node_id)).get("sample") and d, 20, "metrics")
        assert "cpu" in detail["sample"] and "mem" in detail["sample"]
        assert detail["facts"]["hostname"] and detail["daemon_version"] == "0.1.0"
        wait_for(lambda: central.node(node_id)["facts"].get("firmware") == "dvic-node/0.1.0", 20,
                 "a keep-alive POST")  # the server keeps the keep-alive's firmware as a fact
        wait_for(lambda: len(demo_lines(central, node_id)) >= 50, 20, "50 demo lines")
        lines = demo_lines(central, node_id)
        assert [ln["msg"] for ln in lines] == demo.expected()  # each exactly once, in order
        assert {(ln["unit"], ln["demo"], ln["level"]) for ln in lines} == {("robot-arm", token, "INFO")}

        def demo_state() -> str:
            found = [d for d in central.node(node_id).get("demos_list", []) if d["token"] == token]
            return found[0]["state"] if found else ""

        assert wait_for(lambda: demo_state() in ("started", "alive"), 20, "demo alive")
        demo.finish()
        wait_for(lambda: demo_state() == "exited", 20, "demo exited")
        assert daemon.running()
    finally:
        demo.kill()
        code = daemon.stop()
    assert code == 0, daemon.log()


@pytest.mark.parametrize("python", interpreters())
def test_kill9_of_daemon_and_server_mid_stream_loses_and_duplicates_nothing(
        own_central: CentralServer, tmp_path: Path, logs_dir: Path, python: str) -> None:
    central = own_central
    node_id, daemon = enrolled_daemon(central, tmp_path, logs_dir, python=python)
    daemon.start()
    demo = Demo(logs_dir, "streamer", 3000, pause=0.001)
    try:
        wait_for(lambda: len(demo_lines(central, node_id)) >= 200, 30, "the stream to start")
        daemon.kill()  # kill -9 mid-stream
        daemon.start()
        wait_for(lambda: len(demo_lines(central, node_id)) >= 1200, 30, "the stream to resume",
                 interval=0.2)
        central.kill()  # kill -9 of the server mid-stream
        central.start()
        demo.wait_written()
        wait_for(lambda: len(demo_lines(central, node_id)) >= 3000, 60, "all 3000 lines", interval=0.3)
        lines = demo_lines(central, node_id)
        assert [ln["msg"] for ln in lines] == demo.expected()
        seqs = [ln["seq"] for ln in all_logs(central, node_id)]
        assert len(seqs) == len(set(seqs))
        assert daemon.running()
    finally:
        demo.kill()
        daemon.stop()


def test_full_spool_drops_oldest_and_reports_the_gap(own_central: CentralServer, tmp_path: Path,
                                                     logs_dir: Path) -> None:
    central = own_central
    node_id, daemon = enrolled_daemon(central, tmp_path, logs_dir, extra=("--spool-max-bytes", "65536"))
    central.stop()  # the daemon starts offline and must keep collecting
    daemon.start()
    demo = Demo(logs_dir, "chatty", 3000)
    try:
        demo.wait_written()
        wait_for(lambda: "spool full" in daemon.log(), 30, "the spool to overflow")
        central.start()
        wait_for(lambda: demo_lines(central, node_id)
                 and demo_lines(central, node_id)[-1]["msg"] == demo.expected()[-1], 30, "the last line")
        stored = demo_lines(central, node_id)
        msgs = [ln["msg"] for ln in stored]
        assert msgs == demo.expected()[-len(msgs):]  # the newest lines survive, once each, in order
        seqs = {ln["seq"] for ln in all_logs(central, node_id)}

        def unaccounted() -> set[int]:
            dropped: set[int] = set()
            for ev in events(central, node_id, "log_gap"):
                dropped |= set(range(ev["data"]["first_seq"], ev["data"]["last_seq"] + 1))
            return set(range(1, max(seqs) + 1)) - seqs - dropped

        # every seq is either stored or inside a reported gap
        wait_for(lambda: not unaccounted(), 20, "log_gap events covering every missing seq")
        gaps = events(central, node_id, "log_gap")
        assert all(g["message"].startswith("spool full:") for g in gaps)
        assert daemon.running()
    finally:
        demo.kill()
        daemon.stop()


@pytest.mark.parametrize("python", interpreters())
def test_bad_log_files_are_reported_and_nothing_keepable_is_lost(central: CentralServer, tmp_path: Path,
                                                                 logs_dir: Path, python: str) -> None:
    now = b"%.3f" % time.time()  # the server's retention forgets old lines: use fresh timestamps
    (logs_dir / "dvic_log_00000000000000aa").write_bytes(b"not a header\nsecond line\n")
    (logs_dir / "dvic_log_00000000000000bb").write_bytes(b"\x00\xff\xfe\x89garbage\x00\n")
    huge = logs_dir / "dvic_log_00000000000000cc"
    huge.write_bytes(b'{"dvic_log": 1, "token": "00000000000000cc", "name": "huge", "pid": 1, "pid_start": null}\n'
                     + b'{"ts": ' + now + b', "level": "ERROR", "msg": "' + b"y" * (10 * 1024 * 1024) + b'"}\n'
                     + b'{"ts": ' + now + b', "level": "INFO", "msg": "after the huge line"}\n')
    vanishing = logs_dir / "dvic_log_00000000000000dd"
    vanishing.write_bytes(b'{"dvic_log": 1, "token": "00000000000000dd", "name": "ghost", "pid": 1}\n'
                          + b"".join(b'{"ts": %s, "level": "INFO", "msg": "ghost %d"}\n' % (now, i)
                                     for i in range(20000)))
    node_id, daemon = enrolled_daemon(central, tmp_path, logs_dir, python=python)
    with daemon:
        wait_for(lambda: any(ln["unit"] == "ghost" for ln in demo_lines(central, node_id)), 30,
                 "the first ghost lines")
        vanishing.unlink()  # mid-read: the open descriptor still has all of it
        wait_for(lambda: sum(ln["unit"] == "ghost" for ln in demo_lines(central, node_id)) == 20000, 60,
                 "every line of the vanished file", interval=0.5)
        # The files are read independently: the huge one may still be on its way.
        wait_for(lambda: any(ln["msg"] == "after the huge line" for ln in demo_lines(central, node_id)), 60,
                 "the line after the huge one", interval=0.5)
        lines = demo_lines(central, node_id)
        by_demo: dict[str, list[str]] = {}
        for ln in lines:
            by_demo.setdefault(ln["demo"], []).append(ln["msg"])
        assert by_demo["00000000000000aa"] == ["not a header", "second line"]
        # PostgreSQL text cannot hold NUL: stored as U+FFFD there (docs/operations.md).
        nul = "\ufffd" if postgres.wanted() else "\x00"
        assert by_demo["00000000000000bb"] == [f"{nul}\ufffd\ufffd\ufffdgarbage{nul}"]
        huge_msgs = by_demo["00000000000000cc"]
        assert huge_msgs[1] == "after the huge line"
        assert huge_msgs[0].startswith("yyyy") and len(huge_msgs[0].encode()) <= 64 * 1024
        errors = wait_for(lambda: events(central, node_id, "error"), 20, "error events")
        assert any("broken header" in e["message"] and "dvic_log_00000000000000aa" in e["message"]
                   for e in errors)
        own = all_logs(central, node_id, source="daemon")  # the daemon's own warnings are shipped too
        assert any("broken header" in ln["msg"] and ln["unit"] == "dvic-node" and ln["level"] == "WARNING"
                   for ln in own)
        assert daemon.running()


def test_wrong_ca_keeps_running_and_says_why(central: CentralServer, tmp_path: Path, logs_dir: Path) -> None:
    (tmp_path / "rogue-pki").mkdir()
    rogue = make_pki(tmp_path / "rogue-pki")
    _, daemon = enrolled_daemon(central, tmp_path, logs_dir, bundle_overrides={"ca_pem": rogue.ca_pem})
    with daemon:
        wait_for(lambda: daemon.log().count("reconnecting in") >= 2, 30, "two failed attempts")
        assert "not trusted by the bundle's CA" in daemon.log()
        assert daemon.running()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB file system (tmpfs) to fill up; skipped where mounting is not allowed."""
    with small_tmpfs(tmp_path / "small-disk", "0700") as mnt:
        yield mnt


def fill(directory: Path) -> Path:
    """Take every free byte of the file system holding `directory`."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(10_000):  # bounded: 1 MiB disk, 4 KiB at a time
            try:
                os.write(fd, b"\0" * 4096)
            except OSError:
                break
    finally:
        os.close(fd)
    return filler


def test_full_disk_loses_nothing(central: CentralServer, tmp_path: Path, logs_dir: Path, small_disk: Path) -> None:
    bundle = central.enroll(tmp_path.name)
    path = central.write_bundle(bundle, tmp_path / "node-full.json")
    daemon = DaemonProcess(path, small_disk / "state", logs_dir, log_path=tmp_path / "daemon.log")  # not full
    with daemon:
        wait_for(lambda: "connected to" in daemon.log(), 20, "the daemon to connect")
        filler = fill(small_disk)
        demo = Demo(logs_dir, "while-full", 500)
        demo.wait_written()
        wait_for(lambda: "spool: cannot write" in daemon.log(), 20, "the daemon to notice the full disk")
        assert daemon.running()
        assert demo_lines(central, bundle["node_id"]) == []  # nothing could be spooled, nothing was lost
        filler.unlink()
        wait_for(lambda: len(demo_lines(central, bundle["node_id"])) >= 500, 30, "the lines to follow")
        assert [ln["msg"] for ln in demo_lines(central, bundle["node_id"])] == demo.expected()
        assert "spool: writable again" in daemon.log()
        demo.kill()


def test_a_non_python_demo_run_through_the_dvic_log_wrapper(central: CentralServer, tmp_path: Path,
                                                             logs_dir: Path) -> None:
    node_id, daemon = enrolled_daemon(central, tmp_path, logs_dir)
    daemon.start()
    env = dict(os.environ, DVIC_LOG_DIR=str(logs_dir), PYTHONPATH=str(REPO / "lib" / "python"))
    wrapper = subprocess.Popen([sys.executable, "-m", "dvic_log", "run", "--name", "shell-demo", "--",
                                "sh", "-c", "echo hello from sh; read _; echo oops >&2; exit 3"],
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env)
    try:
        def demo() -> dict:
            found = [d for d in central.node(node_id).get("demos_list", []) if d["name"] == "shell-demo"]
            return found[0] if found else {}

        assert wait_for(lambda: demo().get("state") in ("started", "alive"), 20, "the wrapped demo alive")
        wrapper.communicate(b"go\n", timeout=20)
        assert wrapper.returncode == 3
        wait_for(lambda: demo().get("state") == "exited", 20, "the wrapped demo exited")
        lines = wait_for(lambda: len(ls := demo_lines(central, node_id)) >= 3 and ls, 20, "its lines")
        assert [(ln["level"], ln["msg"]) for ln in lines[:2]] == [("INFO", "hello from sh"), ("ERROR", "oops")]
        assert {ln["unit"] for ln in lines} == {"shell-demo"}
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
            wrapper.wait()
        daemon.stop()


@pytest.mark.parametrize("python", interpreters())
@pytest.mark.parametrize("follow", ["inotify", "polling"])
def test_lines_across_the_writers_rotations_arrive_once_in_order(central: CentralServer, tmp_path: Path,
                                                                 logs_dir: Path, python: str, follow: str) -> None:
    node_id, daemon = enrolled_daemon(central, tmp_path, logs_dir, python=python)
    if follow == "polling":  # the fallback when inotify is not available
        daemon.env["DVIC_NODE_TEST_NO_INOTIFY"] = "1"
    daemon.start()
    # A reader more than one rotation behind loses the file in between (told as a gap, by design:
    # docs/log-format.md). Inotify reads at once; polling looks every 0.2 s, so there the demo
    # writes slower (a rotation every ~2 s) for a starved daemon on a loaded machine to keep up.
    pause = 0.002 if follow == "inotify" else 0.01
    demo = Demo(logs_dir, "rotator", 2000, pause=pause, max_bytes=16384)  # about 9 rotations
    try:
        token = demo.wait_written()
        assert (logs_dir / f"dvic_log_{token}.1").exists()
        got: list[int] = []
        try:
            wait_for(lambda: got.append(len(demo_lines(central, node_id))) or got[-1] >= 2000, 60,
                     "every line", interval=0.3)
        except WaitTimeout:
            gaps = [e.get("message", e) for e in events(central, node_id, "log_gap")]
            raise AssertionError(f"{got[-1]} of 2000 lines arrived in 60 s; gaps: {gaps}") from None
        assert [ln["msg"] for ln in demo_lines(central, node_id)] == demo.expected()
        assert not events(central, node_id, "error")
        assert ("inotify disabled" in daemon.log()) == (follow == "polling")
    finally:
        demo.kill()
        daemon.stop()


def test_system_log_lines_are_shipped_rate_bounded(central: CentralServer, tmp_path: Path, logs_dir: Path) -> None:
    syslog = tmp_path / "syslog"
    syslog.write_text("Nov 24 09:00:00 host old[1]: before the daemon: not shipped\n")
    node_id, daemon = enrolled_daemon(central, tmp_path, logs_dir, extra=(
        "--system-log", str(syslog), "--system-log-rate", "5"))
    with daemon:
        wait_for(lambda: "system logs: following" in daemon.log(), 20, "the syslog follower")
        wait_for(lambda: central.node(node_id)["state"] == "online", 20, "node online")
        with open(syslog, "a") as f:
            f.write("Nov 24 10:00:01 host sshd[42]: Accepted publickey for pi\n")
            for i in range(400):
                f.write(f"Nov 24 10:00:02 host spam[7]: flood {i}\n")
        lines = wait_for(lambda: all_logs(central, node_id, source="system"), 20, "system lines")
        assert (lines[0]["unit"], lines[0]["msg"]) == ("sshd", "Accepted publickey for pi")
        assert len(lines) <= 200 + 5 * 30  # burst plus the rate over the test's length: never the flood
        wait_for(lambda: any("rate bound" in ln["msg"] for ln in all_logs(central, node_id, "daemon")),
                 30, "the skipped lines to be reported")


def test_a_revoked_node_is_told_why_and_keeps_trying(central: CentralServer, tmp_path: Path,
                                                     logs_dir: Path) -> None:
    node_id, daemon = enrolled_daemon(central, tmp_path, logs_dir)
    with daemon:
        wait_for(lambda: central.node(node_id)["state"] == "online", 20, "node online")
        status, _ = central.api("DELETE", f"/api/v1/nodes/{node_id}")
        assert status in (200, 204)
        wait_for(lambda: "has been revoked" in daemon.log(), 20, "the refusal to be logged")
        assert "close 4403" in daemon.log() or "HTTP 403" in daemon.log()
        assert daemon.running()


def _refusal_times(server_log: str, marker: str) -> list[float]:
    """When the server refused a node's websocket for `marker` (its log lines start with asctime)."""
    import datetime

    times = []
    for line in server_log.splitlines():
        if "node websocket refused" in line and marker in line:
            stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            times.append(stamp.timestamp())
    return times


@pytest.mark.slow
def test_a_revoked_node_reconnects_at_its_longest_delay_and_says_so_once(
        central: CentralServer, tmp_path: Path, logs_dir: Path) -> None:
    longest = 3.0
    node_id, daemon = enrolled_daemon(central, tmp_path, logs_dir, extra=("--reconnect-max", str(longest)))
    with daemon:
        wait_for(lambda: central.node(node_id)["state"] == "online", 20, "node online")
        status, _ = central.api("DELETE", f"/api/v1/nodes/{node_id}")
        assert status in (200, 204)
        name = central.node(node_id)["name"]
        # Four refused reconnects, as the server saw them: three gaps to measure.

        def four_refusals() -> list[float] | None:
            times = _refusal_times(central.log(), repr(name))
            return times if len(times) >= 4 else None

        times = wait_for(four_refusals, 30, "four refused reconnects")
        gaps = [round(b - a, 2) for a, b in pairwise(times)]  # type: ignore[arg-type]
        assert all(gap >= longest * 0.9 for gap in gaps), gaps  # not climbing 1 s, 2 s, ... again
        log = daemon.log()
        assert log.count("this node is revoked") == 1, log
        after = log[log.index("this node is revoked"):]
        assert "INFO reconnecting in" not in after and "INFO connection:" not in after
        assert daemon.running()


class _RefusingKeepAlive:
    """Counts keep-alive POSTs and answers each as the server answers a revoked node's (403 `revoked`)."""

    def __init__(self) -> None:
        import http.server
        import json
        import threading

        self.times: list[float] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                outer.times.append(time.monotonic())
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.dumps({"error": {"code": "revoked", "message": "node 'x' has been revoked"}}).encode()
                self.send_response(403)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/v1/keepalive"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
def test_a_keepalive_refused_as_revoked_is_sent_at_the_longest_delay(
        central: CentralServer, tmp_path: Path, logs_dir: Path) -> None:
    longest = 3.0
    refusing = _RefusingKeepAlive()
    try:
        _, daemon = enrolled_daemon(central, tmp_path, logs_dir, extra=("--reconnect-max", str(longest)),
                                    bundle_overrides={"keepalive_url": refusing.url})
        with daemon:
            wait_for(lambda: len(refusing.times) >= 4, 30, "four keep-alives")
            gaps = [round(b - a, 2) for a, b in pairwise(refusing.times[:4])]
            # The server's interval here is 1 s: a revoked answer stretches it to the longest delay.
            assert all(gap >= longest * 0.9 for gap in gaps), gaps
    finally:
        refusing.close()
