"""Alerts end to end: the real server evaluating its rules on real daemons and real demos; what an
operator sees on the live stream (the engine alone: test_alerts_engine.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.daemon import online_daemon
from tests.support.server import REPO, CentralServer
from tests.support.wait import wait_for

ALERTING = ("--alerts-interval", "0.5")
ERROR_DEMO = """
import sys, time
import dvic_log
log = dvic_log.open_log(sys.argv[1])
for i in range(int(sys.argv[2])):
    log.error("sensor read failed (%d)" % i)
print("written", flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[CentralServer]:
    server = CentralServer(tmp_path / "central", interval=1.0, offline_after=2.0, extra_args=ALERTING).start()
    try:
        yield server
    finally:
        server.stop()


@asynccontextmanager
async def live(server: CentralServer) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    async with aiohttp.ClientSession() as http, http.ws_connect(
            server.url + "/api/v1/stream", headers=headers, ssl=server.ssl_context) as ws:
        hello = json.loads((await ws.receive(timeout=10)).data)
        assert hello["type"] == "hello" and hello["alerts"]["open"] == 0
        yield ws


async def next_alert(ws: aiohttp.ClientWebSocketResponse, match: Callable[[dict[str, Any]], bool],
                     timeout: float = 20.0) -> dict[str, Any]:
    """The first `alert` frame `match` accepts (others are skipped), within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no matching alert frame within {timeout:.0f} s")
        msg = await ws.receive(timeout=left)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        frame = json.loads(msg.data)
        if frame["type"] == "alert" and match(frame):
            return frame


def about(rule: str, subject: str, change: str) -> Callable[[dict[str, Any]], bool]:
    return lambda f: f["change"] == change and f["alert"]["rule"] == rule and f["alert"]["subject"] == subject


async def test_a_daemon_killed_raises_node_offline_and_its_return_resolves_it(server: CentralServer,
                                                                              tmp_path: Path) -> None:
    async with live(server) as ws:
        with online_daemon(server, tmp_path / "pi-dies") as (node_id, daemon):
            name = server.node(node_id)["name"]
            daemon.kill()  # kill -9: the socket closes, the server marks the node offline at once
            killed = time.monotonic()
            fired = await next_alert(ws, about("node_offline", f"node:{name}", "firing"))
            assert time.monotonic() - killed < 5
            alert = fired["alert"]
            assert (alert["node"], alert["severity"], alert["state"], alert["silenced"]) == (
                name, "critical", "firing", False)
            daemon.start()
            resolved = await next_alert(ws, about("node_offline", f"node:{name}", "resolved"), timeout=30)
            assert resolved["alert"]["id"] == alert["id"] and resolved["reason"] == "cleared"


async def test_a_demo_logging_errors_raises_log_errors(server: CentralServer, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o755)
    async with live(server) as ws:
        with online_daemon(server, tmp_path / "pi-noisy", logs) as (node_id, _daemon):
            name = server.node(node_id)["name"]
            demo = start_demo(logs, "sensor", errors=40)
            try:
                fired = await next_alert(ws, about("log_errors", f"demo:{name}/sensor", "firing"), timeout=30)
                assert "ERROR+ lines in the last minute (more than 30)" in fired["alert"]["summary"]
            finally:
                demo.kill()
                demo.wait()


def start_demo(logs: Path, name: str, errors: int = 0) -> subprocess.Popen[bytes]:
    """A demo logging through dvic_log (`errors` ERROR lines), then waiting on its stdin."""
    env = dict(os.environ, DVIC_LOG_DIR=str(logs), PYTHONPATH=str(REPO / "lib" / "python"))
    return subprocess.Popen([sys.executable, "-c", ERROR_DEMO, name, str(errors)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env)


async def test_a_demo_that_dies_is_an_alert_and_its_return_resolves_it(server: CentralServer,
                                                                       tmp_path: Path) -> None:
    status, rule = server.api("PATCH", "/api/v1/rules/demo_exited", {"for": "0s"})
    assert status == 200 and rule["for_s"] == 0
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o755)
    async with live(server) as ws:
        with online_daemon(server, tmp_path / "pi-demo", logs) as (node_id, _daemon):
            name = server.node(node_id)["name"]
            demo = start_demo(logs, "robot-arm")
            try:
                wait_for(lambda: any(d["name"] == "robot-arm" and d["state"] != "exited"
                                     for d in server.node(node_id)["demos_list"]), 30, "the demo seen alive")
            finally:
                demo.kill()
                demo.wait()
            fired = await next_alert(ws, about("demo_exited", f"demo:{name}/robot-arm", "firing"), timeout=30)
            assert fired["alert"]["summary"] == f"demo {name}/robot-arm exited and did not come back"
            again = start_demo(logs, "robot-arm")
            try:
                resolved = await next_alert(ws, about("demo_exited", f"demo:{name}/robot-arm", "resolved"), timeout=30)
                assert resolved["alert"]["id"] == fired["alert"]["id"]
            finally:
                again.kill()
                again.wait()
