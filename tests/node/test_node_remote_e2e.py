"""Remote control end to end: the real central server, the real daemon, an operator's API calls and websockets."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_support import REPO

from tests.support.daemon import DaemonProcess, enrolled_daemon, wait_connected
from tests.support.operator_ws import echo_server, echoed, finished, read_until, session, ws_text
from tests.support.server import CentralServer
from tests.support.wait import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Fleet:
    """One server that allows tunnels to an echo port and a closed port, and one connected daemon."""

    def __init__(self, tmp: Path) -> None:
        self.echo = echo_server()
        self.echo_port = self.echo.server_address[1]
        self.closed_port = free_port()
        self.server = CentralServer(tmp / "central", interval=1.0, extra_args=(
            "--tunnel-port", str(self.echo_port), "--tunnel-port", str(self.closed_port))).start()
        self.node_id, self.daemon = enrolled_daemon(self.server, tmp, name="remote-a")
        wait_connected(self.server, self.node_id, self.daemon.start())

    def close(self) -> None:
        self.daemon.stop()
        self.server.stop()
        self.echo.shutdown()
        self.echo.server_close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with contextlib.closing(Fleet(tmp_path_factory.mktemp("remote-e2e"))) as f:
        yield f


def test_a_command_runs_streams_and_is_stored(fleet: Fleet) -> None:
    server = fleet.server
    status, cmd = server.api("POST", "/api/v1/commands", {"nodes": ["remote-a"], "timeout": 20,
                                                          "argv": ["sh", "-c", "echo out; echo err >&2; exit 3"]})
    assert status == 201, cmd
    run = finished(server, cmd["id"])["runs"][0]
    assert (run["state"], run["code"]) == ("exited", 3)
    assert {(o["stream"], o["data"]) for o in run["output"]} == {("stdout", "out\n"), ("stderr", "err\n")}

    status, cmd = server.api("POST", "/api/v1/commands", {"nodes": ["remote-a"], "timeout": 1, "shell": "sleep 30"})
    assert finished(server, cmd["id"])["runs"][0]["state"] == "timeout"

    status, cmd = server.api("POST", "/api/v1/commands", {"nodes": ["remote-a"], "timeout": 60, "shell": "sleep 30"})
    wait_for(lambda: server.api("GET", f"/api/v1/commands/{cmd['id']}")[1]["runs"][0]["state"] == "running",
             15, "the command running")
    assert server.api("POST", f"/api/v1/commands/{cmd['id']}/cancel")[0] == 200
    assert finished(server, cmd["id"])["runs"][0]["state"] == "cancelled"


async def test_a_shell_through_the_server(fleet: Fleet) -> None:
    server = fleet.server
    async with session(server) as http, http.ws_connect(
            f"{server.url}/api/v1/nodes/remote-a/shell", params={"cols": "90", "rows": "25"}) as ws:
        assert (await ws_text(ws))["type"] == "opened"
        await ws.send_bytes(b"unset HISTFILE; stty size\n")
        await read_until(ws, b"25 90")
        await ws.send_str(json.dumps({"type": "resize", "cols": 120, "rows": 40}))
        await ws.send_bytes(b"stty size\n")
        await read_until(ws, b"40 120")
        await ws.send_bytes(b"exit 5\n")
        end = await ws_text(ws)
        assert end["type"] == "exit" and end["code"] == 5


async def test_a_tunnel_to_an_echo_server_and_a_refused_port(fleet: Fleet) -> None:
    server = fleet.server
    async with session(server) as http:
        async with http.ws_connect(f"{server.url}/api/v1/nodes/remote-a/tunnel",
                                   params={"host": "127.0.0.1", "port": str(fleet.echo_port)}) as ws:
            assert (await ws_text(ws))["type"] == "opened"
            payload = bytes(range(256)) * 800  # 200 KiB: several 48 KiB frames each way
            assert await echoed(ws, payload) == payload
            await ws.send_bytes(b"quit")  # the echo server hangs up: the node says so
            end = await ws_text(ws)
            assert end["type"] == "closed" and f"127.0.0.1:{fleet.echo_port}" in end["message"]
        async with http.ws_connect(f"{server.url}/api/v1/nodes/remote-a/tunnel",
                                   params={"host": "127.0.0.1", "port": str(fleet.closed_port)}) as ws:
            end = await ws_text(ws)
            assert end["type"] == "closed" and "refused" in end["message"], end
    assert fleet.daemon.running()


def action_of(server: CentralServer, node: str, action_id: str) -> dict[str, Any]:
    status, body = server.api("GET", f"/api/v1/actions?node={node}")
    assert status == 200, body
    return next(a for a in body["actions"] if a["id"] == action_id)


def test_reboot_goes_through_its_states_and_demo_actions_run_as_configured(
        fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = fleet.server
    bundle = server.enroll("remote-b")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    started = tmp_path / "kiosk-started"
    (state / "demos.json").write_text(json.dumps({
        "kiosk": {"start": f"echo yes > {started}", "stop": "echo cannot stop >&2; exit 4"},
        "robot": {"unit": "dvic-test-no-such-unit.service"}}))
    # the simulated reboot: the daemon is stopped by its own reboot command; it comes back with a new boot time
    (tmp_path / "logs").mkdir()
    daemon = DaemonProcess(server.write_bundle(bundle, tmp_path / "b.json"), state, tmp_path / "logs",
                           extra=("--reboot-command", "kill -TERM $PPID"))
    monkeypatch.setenv("DVIC_NODE_TEST_BOOT_TIME", "1000.0")
    with daemon:
        wait_for(lambda: server.node("remote-b")["connected"], 20, "remote-b connected")
        assert server.node("remote-b")["facts"]["boot_time"] == 1000.0

        status, action = server.api("POST", "/api/v1/nodes/remote-b/actions", {"action": "start_demo", "demo": "kiosk"})
        assert status == 201, action
        wait_for(lambda: action_of(server, "remote-b", action["id"])["state"] == "done", 20, "start done")
        assert started.read_text() == "yes\n"
        for kind, demo, words in (("stop_demo", "kiosk", "exit code 4: cannot stop"),
                                  ("restart_demo", "ghost", "'ghost' is not configured on this node"),
                                  ("restart_demo", "kiosk", "restart kiosk: exit code 4"),  # stop, then start
                                  ("start_demo", "robot", "start robot: ")):
            _, action = server.api("POST", "/api/v1/nodes/remote-b/actions", {"action": kind, "demo": demo})
            final = wait_for(lambda a=action: (x := action_of(server, "remote-b", a["id"]))["state"]
                             in ("done", "failed") and x, 20, f"{kind} {demo} final")
            assert final["state"] == "failed" and words in final["message"], final

        _, action = server.api("POST", "/api/v1/nodes/remote-b/actions", {"action": "reboot"})
        wait_for(lambda: action_of(server, "remote-b", action["id"])["state"] == "in_progress", 20,
                 "reboot in progress")
        assert daemon.proc is not None
        daemon.proc.wait(timeout=30)  # the reboot command stopped it
        daemon.proc = None
        monkeypatch.setenv("DVIC_NODE_TEST_BOOT_TIME", "2000.0")
        daemon.start()
        final = wait_for(lambda: (a := action_of(server, "remote-b", action["id"]))["state"] == "done" and a,
                         30, "reboot done")
        assert "came back" in final["message"]


def dvic_cli(server: CentralServer, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The operators' `dvic` command line (tui/), as a user runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DVIC_")}
    env["PYTHONPATH"] = str(REPO)
    env["XDG_CONFIG_HOME"] = str(server.data_dir.parent / "xdg")
    return subprocess.run([sys.executable, "-m", "tui", "--server", server.url, "--ca", str(server.ca_path),
                           "--token", server.admin_token, *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_the_dvic_command_line_drives_the_real_daemon(fleet: Fleet) -> None:
    out = dvic_cli(fleet.server, "run", "remote-a", "--", "sh", "-c", "echo from-the-node; exit 7")
    assert "from-the-node" in out.stdout and out.returncode == 7, (out.returncode, out.stdout, out.stderr)
    out = dvic_cli(fleet.server, "run", "remote-a", "--timeout", "1", "--", "sleep", "20")
    assert out.returncode == 124, (out.returncode, out.stdout, out.stderr)  # like timeout(1)
