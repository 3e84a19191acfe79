"""A process holding queued notifications is killed with SIGKILL while the receiver is down; a real
dvic-central started on the same data dir sends them once the receiver is back."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import postgres
from tests.support.receivers import HttpReceiver
from tests.support.server import REPO, CentralServer
from tests.support.wait import wait_for


def attempts(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "dvic.sqlite3") as conn:
        row = conn.execute("SELECT max(attempts) FROM notifications WHERE state = 'pending'").fetchone()
    return int(row[0] or 0)


@pytest.mark.skipif(postgres.wanted(), reason="the harness queues into the data dir's SQLite file")
def test_pending_notifications_survive_kill_9_and_go_out_after_start(tmp_path: Path,
                                                                      receiver: HttpReceiver) -> None:
    data_dir = tmp_path / "central"
    receiver.stop()  # down: the first attempts fail, the notification stays queued
    harness = subprocess.Popen(
        [sys.executable, "-m", "tests.central.alerts.notify_harness", str(data_dir), receiver.url + "/hook", "40"],
        cwd=REPO, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert harness.stdout is not None
        assert harness.stdout.readline().strip() == b"submitted"
        wait_for(lambda: attempts(data_dir) >= 1, timeout=15, what="a failed attempt against the stopped receiver")
    finally:
        harness.send_signal(signal.SIGKILL)
        harness.wait()
        assert harness.stdout is not None
        harness.stdout.close()
    receiver.start()
    server = CentralServer(data_dir).start()
    try:
        wait_for(receiver.got, timeout=20, what="the queued notification after the server's start")
        [message] = receiver.accepted
        assert message.json()["count"] == 40
        wait_for(lambda: "notification 1 sent to hook (40 alerts): HTTP 200 ok" in server.log(), timeout=10,
                 what="the server to record the delivery")
        # The database holds channel secrets: the server made it and its WAL owner-only, though the
        # killed process had created them with the usual 0644.
        for name in ("dvic.sqlite3", "dvic.sqlite3-wal", "dvic.sqlite3-shm"):
            assert (data_dir / name).stat().st_mode & 0o777 == 0o600, name
    finally:
        server.stop()
    with sqlite3.connect(data_dir / "dvic.sqlite3") as conn:
        [(state, tries)] = conn.execute("SELECT state, attempts FROM notifications").fetchall()
    assert state == "sent" and tries >= 2  # the failed one before the kill, the one after the start
