"""The README's first command, headless: `dvic-central up --no-console` brings up the server and this
machine's daemon; the machine shows online with metrics; Ctrl-C stops everything it started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.server import REPO, CentralServer
from tests.support.wait import wait_for


def _api(data_dir: Path, path: str) -> dict:
    status, body = CentralServer.running_in(data_dir).api("GET", path)
    assert status == 200, body
    return body



@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGHUP], ids=["ctrl-c", "terminal-closed"])
def test_up_brings_this_machine_online_and_stops_cleanly(tmp_path: Path, stop_signal: int):
    data_dir = tmp_path / "dvic"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "central.cli", "--data-dir", str(data_dir), "up", "--listen", "127.0.0.1:0",
         "--no-console"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for(lambda: (data_dir / "listen.json").exists() and (data_dir / "local-node.json").exists(),
                 timeout=60, what="server up and this machine enrolled")

        def online_with_metrics() -> dict | None:
            nodes = _api(data_dir, "/api/v1/nodes")["nodes"]
            node = nodes[0] if nodes else None
            return node if node and node["state"] == "online" and "cpu" in node["metrics"] else None

        node = wait_for(online_with_metrics, timeout=60, what="this machine online with metrics")
        assert node["group"] == "local" and node["daemon_version"]
        assert (data_dir / "local-node.json").stat().st_mode & 0o777 == 0o600
        server_pid = json.loads((data_dir / "listen.json").read_text())["pid"]
    finally:
        proc.send_signal(stop_signal)
        out, _ = proc.communicate(timeout=30)
    assert "enrolled this machine" in out
    # Everything it started is gone.
    try:
        os.kill(server_pid, 0)
        raise AssertionError("the central server outlived `up`")
    except ProcessLookupError:
        pass
    assert not (data_dir / "listen.json").exists()
