"""The daemon follows a bounded number of demo files: per owner, in all, running demos first.

Any local user can create `dvic_log_<16 hex>` names in /tmp (the default log dir). These tests plant
such files next to real demos and check what the daemon follows and reports.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dvic_node
import pytest
from daemon_support import Demo, all_logs, events
from node_support import demo_watcher, step

from tests.support.daemon import enrolled_daemon
from tests.support.server import CentralServer
from tests.support.wait import wait_for

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to plant files owned by another user")


def pid_start(pid: int) -> int:
    data = Path(f"/proc/{pid}/stat").read_bytes()
    return int(data[data.rfind(b")") + 2:].split()[19])


def plant(logs: Path, pid: int, *, pid_start: int | None = None, name: str = "planted", lines: int = 0,
          mtime: float | None = None, uid: int | None = None, argv_items: int = 1) -> str:
    """A dvic_log file as anyone may write one; returns its token."""
    token = secrets.token_hex(8)
    head = {"dvic_log": 1, "token": token, "name": name, "pid": pid, "pid_start": pid_start,
            "exe": "/x", "argv": ["a" * 255] * argv_items, "user": "u", "host": "h", "start": time.time()}
    body = [json.dumps({"ts": time.time(), "level": "INFO", "msg": f"{name} line {i}"}) for i in range(lines)]
    path = logs / f"dvic_log_{token}"
    path.write_text("\n".join([json.dumps(head), *body]) + "\n")
    if uid is not None:
        os.chown(path, uid, uid)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return token


def test_a_flood_of_files_is_followed_up_to_the_owner_bound_newest_first(tmp_path: Path, logs_dir: Path) -> None:
    me = os.getpid()
    now = time.time()
    # 200 files whose writer has exited (the pid's start time does not match), of one owner, one a second older
    tokens = [plant(logs_dir, me, pid_start=pid_start(me) + 1, mtime=now - i) for i in range(200)]
    w, _, rec = demo_watcher(tmp_path, restore=True, per_owner=32, total=128)
    step(w)
    followed = {d.token for d in w.demos.values()}
    assert followed == set(tokens[:32])  # the newest
    assert set(rec.states()) == followed and set(rec.states().values()) == {"exited"}
    assert len(rec.errors) == 1 and "168 dvic_log file(s)" in rec.errors[0] and "at most 32 per owner" in rec.errors[0]
    for _ in range(3):  # later scans: the same files, no new message and no second report
        step(w)
    assert {d.token for d in w.demos.values()} == followed and len(rec.messages) == 32 and len(rec.errors) == 1


def test_files_left_waiting_never_take_turns(tmp_path: Path, logs_dir: Path) -> None:
    me = os.getpid()
    for _ in range(500):  # created as fast as can be: their times differ by less than a millisecond
        plant(logs_dir, me, pid_start=pid_start(me) + 1)
    w, _, rec = demo_watcher(tmp_path, restore=True, per_owner=8, total=128)
    step(w)
    followed = {d.token for d in w.demos.values()}
    for _ in range(5):
        step(w)
    assert {d.token for d in w.demos.values()} == followed and len(rec.messages) == 8


def test_running_demos_are_taken_first_and_never_pushed_out(tmp_path: Path, logs_dir: Path,
                                                            demo_proc: subprocess.Popen[bytes]) -> None:
    me = os.getpid()
    now = time.time()
    real = plant(logs_dir, demo_proc.pid, pid_start=pid_start(demo_proc.pid), name="real", lines=3, mtime=now - 3600)
    for i in range(50):
        plant(logs_dir, me, pid_start=pid_start(me) + 1, mtime=now - i)  # newer, but their writer is gone
    w, spool, rec = demo_watcher(tmp_path, restore=True, per_owner=4, total=128)
    step(w)
    assert real in {d.token for d in w.demos.values()} and len(w.demos) == 4
    assert rec.states()[real] == "started"
    # a new file (newest of all) does not push the running demo out
    plant(logs_dir, me, pid_start=pid_start(me) + 1, mtime=now + 10)
    step(w)
    assert real in {d.token for d in w.demos.values()} and len(w.demos) == 4
    assert [ln["msg"] for ln in spool.read(1) if ln["demo"] == real] == ["real line 0", "real line 1", "real line 2"]


def test_an_exited_demo_gives_its_place_and_nothing_is_read_twice(tmp_path: Path, logs_dir: Path,
                                                                  demo_proc: subprocess.Popen[bytes]) -> None:
    me = os.getpid()
    gone = pid_start(me) + 1
    now = time.time()
    first = plant(logs_dir, me, pid_start=gone, name="first", lines=2, mtime=now - 20)
    second = plant(logs_dir, me, pid_start=gone, name="second", lines=2, mtime=now - 10)
    w, spool, rec = demo_watcher(tmp_path, restore=True, per_owner=2, total=128)
    step(w)
    assert {d.token for d in w.demos.values()} == {first, second}
    # a demo starts: the demo that exited first gives its place (its file was read to its end)
    third = plant(logs_dir, demo_proc.pid, pid_start=pid_start(demo_proc.pid), name="third", lines=2)
    step(w)
    assert {d.token for d in w.demos.values()} == {second, third}
    for _ in range(3):
        step(w)  # the retired file is not taken on again
    assert {d.token for d in w.demos.values()} == {second, third} and rec.errors == []
    shipped = [ln["msg"] for ln in spool.read(1)]
    assert sorted(shipped) == sorted(f"{n} line {i}" for n in ("first", "second", "third") for i in range(2))
    spool.checkpoint(force=True)
    # a restart takes the files on afresh: nothing is shipped twice, no exit is told twice
    w2, spool2, rec2 = demo_watcher(tmp_path, restore=True, per_owner=2, total=128)
    for _ in range(3):
        step(w2)
    assert [ln["msg"] for ln in spool2.read(1)] == shipped
    assert rec2.messages == []
    assert third in {d.token for d in w2.demos.values()}


@as_root
def test_files_planted_by_another_user_cannot_crowd_out_or_impersonate_a_running_demo(
        tmp_path: Path, logs_dir: Path, demo_proc: subprocess.Popen[bytes]) -> None:
    now = time.time()
    # another user's files claim a running process that is not theirs (pid 1, and our own demo's pid)
    for i in range(100):
        plant(logs_dir, 1 if i % 2 else demo_proc.pid, uid=NOBODY, mtime=now - i)
    real = plant(logs_dir, demo_proc.pid, pid_start=pid_start(demo_proc.pid), name="real", lines=1, mtime=now - 3600)
    w, _, rec = demo_watcher(tmp_path, restore=True, per_owner=8, total=10)
    step(w)
    owners = sorted(d.owner[1] for d in w.demos.values())
    assert real in {d.token for d in w.demos.values()} and owners == [0] + [NOBODY] * 8
    states = rec.states()
    assert states.pop(real) == "started"
    assert set(states.values()) == {"exited"}  # a header naming another user's process is not that process
    assert len(rec.errors) == 1 and "of user nobody" in rec.errors[0]
    # a second real demo still finds a place: the total bound is full, an exited planted file gives its place
    other = plant(logs_dir, demo_proc.pid, pid_start=pid_start(demo_proc.pid), name="other", lines=1)
    step(w)
    assert {real, other} <= {d.token for d in w.demos.values()} and len(w.demos) == 10


@pytest.fixture
def central(tmp_path: Path) -> Iterator[CentralServer]:
    with CentralServer(tmp_path / "central", interval=1.0, offline_after=5.0) as server:
        yield server


def test_the_real_daemon_with_3000_planted_files_reports_at_most_its_bound(central: CentralServer, tmp_path: Path,
                                                                          logs_dir: Path) -> None:
    # What any local user can do in the shared log dir (security review M6): 3,000 files with big headers
    # naming a demo_proc process. As root, they belong to another user, as an attacker's would.
    uid = NOBODY if os.geteuid() == 0 else None
    for i in range(3000):
        plant(logs_dir, 1, name=f"demo-{i}-" + "n" * 200, argv_items=64, uid=uid)
    node_id, daemon = enrolled_daemon(central, tmp_path, logs_dir, name="node-flood")
    demo = Demo(logs_dir, "real-demo", 20)  # a real demo (dvic_log), started after the flood
    daemon.start()
    try:
        token = demo.wait_written()
        wait_for(lambda: len([ln for ln in all_logs(central, node_id, "demo") if ln["demo"] == token]) == 20,
                 60, "the real demo's lines")
        detail = wait_for(lambda: (d := central.node(node_id))["demos"]["total"] > 1 and d, 30, "demos")
        bound = dvic_node.MAX_DEMO_FILES_PER_OWNER + 1  # the planted files' owner, and the real demo's
        assert detail["demos"]["total"] <= bound, detail["demos"]
        real = [d for d in detail["demos_list"] if d["token"] == token]
        assert real and real[0]["state"] in ("started", "alive")
        wait_for(lambda: any("not followed" in e["message"] for e in events(central, node_id, "error")),
                 30, "the daemon's report of the files it does not follow")
        assert daemon.proc is not None
        open_fds = len(os.listdir(f"/proc/{daemon.proc.pid}/fd"))
        assert open_fds < bound + 40, open_fds  # not a descriptor per planted file
        assert len(events(central, node_id, "error")) < 10
    finally:
        demo.kill()
        daemon.stop()
    assert central.node(node_id)["demos"]["total"] <= bound


def test_the_real_daemons_rates_stay_within_the_servers_limits(tmp_path: Path, logs_dir: Path) -> None:
    # One sample per interval, the backlog of an outage at once, keep-alives, demo states: nothing is limited.
    with CentralServer(tmp_path / "central", interval=0.1, offline_after=5.0) as server:
        node_id, daemon = enrolled_daemon(server, tmp_path, logs_dir, name="steady-node")
        demos = [Demo(logs_dir, f"demo-{i}", 5) for i in range(5)]
        daemon.start()
        try:
            wait_for(lambda: central_demos(server, node_id) == 5, 30, "the demos")
            server.stop()  # an outage: the daemon buffers its samples meanwhile
            outage = time.time()
            time.sleep(3)  # the outage's length (not a synchronisation: the daemon samples every 0.1 s meanwhile)
            back = time.time()
            server.start()
            wait_for(lambda: sample_gap(server, node_id, outage, back) < 1.0, 30, "the outage's samples")
        finally:
            for demo in demos:
                demo.kill()
            daemon.stop()
        assert events(server, node_id, "rate_limited") == [] and events(server, node_id, "too_many_demos") == []
        assert "rate_limited" not in daemon.log()
        # The server's own warnings; its access log names the test's event queries (kind=rate_limited).
        assert [line for line in server.log().splitlines() if "rate_limited" in line and ".access:" not in line] == []


def central_demos(server: CentralServer, node_id: str) -> int:
    return int(server.node(node_id)["demos"]["total"])


def sample_gap(server: CentralServer, node_id: str, start: float, end: float) -> float:
    """The longest time between two stored cpu samples of the node from start to end."""
    stamps = [row[0] for row in server.query(
        "SELECT ts FROM metrics_raw WHERE node_id = ? AND name = 'cpu' AND ts BETWEEN ? AND ? ORDER BY ts",
        (node_id, start - 1, end + 1))]
    points = [start, *stamps, end]
    return max(b - a for a, b in itertools.pairwise(points))
