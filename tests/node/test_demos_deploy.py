"""Deployments end to end (issue 14): the real server, real daemons in a group, real demo processes.

The demos are tests/node/demo_support.py's DEMO_PROGRAM: one that runs, one that exits at once, one
that never becomes healthy (silent past heartbeat_s), one that ignores SIGTERM, one that crashes N
times. Everything is observed the way an operator does: the API's deployments and demo status.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from demo_support import Node, Release, control, kill_demos, make_release

from central.demos.deployments import IN_PROGRESS
from tests.support.daemon import DaemonProcess
from tests.support.releases import publish
from tests.support.server import CentralServer, write_bundle
from tests.support.wait import wait_for

pytestmark = pytest.mark.slow
GROUP = ("hall-1", "hall-2", "hall-3")
TAG = f"deploy-e2e-{os.getpid()}"


class Fleet:
    """A server (installs lost after 6 s of silence) and four daemons: three in group hall-a, one alone."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.server = CentralServer(tmp / "central", interval=1.0, offline_after=3.0,
                                    extra_args=("--demo-install-timeout", "6")).start()
        self.bundles: dict[str, dict[str, Any]] = {}
        self.daemons: dict[str, DaemonProcess] = {}
        for name in (*GROUP, "solo"):
            self.bundles[name] = self.server.enroll(name, group="hall-a" if name in GROUP else "")
            self.start(name)
        for name in self.daemons:
            self.wait_connected(name)

    def state_dir(self, name: str) -> Path:
        return self.tmp / name / "state"

    def start(self, name: str, env: dict[str, str] | None = None) -> DaemonProcess:
        base = self.tmp / name
        (base / "logs").mkdir(parents=True, exist_ok=True)
        bundle = write_bundle(self.bundles[name], base / "bundle.json")
        daemon = DaemonProcess(bundle, base / "state", base / "logs", env=env).start()
        self.daemons[name] = daemon
        return daemon

    def wait_connected(self, name: str, connected: bool = True) -> None:
        node_id = self.bundles[name]["node_id"]
        wait_for(lambda: self.server.node(node_id)["connected"] is connected, 30,
                 f"{name} to {'connect' if connected else 'disconnect'}")

    def release(self, name: str, version: str, mode: str = "run", **manifest: Any) -> Release:
        rel = make_release(self.tmp, name, version, mode, tag=TAG, **manifest)
        status, body = publish(self.server, rel.path.read_bytes())
        assert status == 201, body
        return rel

    def close(self) -> None:
        for name, daemon in self.daemons.items():
            daemon.stop()
            kill_demos(self.state_dir(name), TAG)
        self.server.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with contextlib.closing(Fleet(tmp_path_factory.mktemp("deploy-e2e"))) as f:
        yield f


def call(server: CentralServer, path: str, body: dict[str, Any], status: int = 201) -> dict[str, Any]:
    got, answer = server.api("POST", path, body)
    assert got == status, answer
    return answer


def deployment(server: CentralServer, dep_id: str) -> dict[str, Any]:
    status, body = server.api("GET", f"/api/v1/deployments/{dep_id}")
    assert status == 200, body
    return body


def ended(server: CentralServer, dep_id: str, timeout: float = 60) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        dep = deployment(server, dep_id)
        return dep if dep["state"] != "rolling" else None
    return wait_for(final, timeout, f"deployment {dep_id} to end", interval=0.2)


def status_of(server: CentralServer, demo: str) -> dict[str, dict[str, Any]]:
    got, body = server.api("GET", f"/api/v1/demos/status?demo={demo}")
    assert got == 200, body
    return {row["node_name"]: row for row in body["status"]}


def wait_status(server: CentralServer, demo: str, node: str, cond: Any, timeout: float = 30,
                what: str = "") -> dict[str, Any]:
    return wait_for(lambda: (row := status_of(server, demo).get(node)) and cond(row) and row, timeout,
                    what or f"{demo} on {node}", interval=0.1)


def test_deploy_to_a_node_survives_kill_9_and_crashes_and_rolls_back_a_bad_release(fleet: Fleet) -> None:
    server = fleet.server
    fleet.release("arm", "1.0.0", keep=["state/"])
    dep = call(server, "/api/v1/deployments", {"demo": "arm", "version": "1.0.0", "node": "solo"})
    assert dep["state"] == "rolling" and [n["node_name"] for n in dep["nodes"]] == ["solo"]
    done = ended(server, dep["id"])
    assert done["state"] == "done" and done["nodes"][0]["state"] == "healthy", done
    row = wait_status(server, "arm", "solo", lambda r: r["state"] == "healthy")
    assert (row["version"], row["desired_version"], row["restarts"]) == ("1.0.0", "1.0.0", 0)
    assert row["pid"] and row["uptime"] is not None

    # kill -9: back within a second or so, its restart counted
    killed_at = time.monotonic()
    os.kill(row["pid"], signal.SIGKILL)
    back = wait_status(server, "arm", "solo", lambda r: r["restarts"] == 1 and r["pid"] not in (None, row["pid"]),
                       what="arm restarted after kill -9")
    assert time.monotonic() - killed_at < 5  # the daemon restarts it at once; the status travels through the server
    assert back["last_exit"]["signal"] == 9

    # a demo that crashes twice more, then runs: every restart counted, healthy again
    control_node = _node_dirs(fleet, "solo")
    (control_node / "arm" / "data" / "state").mkdir(parents=True, exist_ok=True)
    _control(fleet, "solo", "arm", "crashes", "2")
    _control(fleet, "solo", "arm", "exit", "3")
    wait_status(server, "arm", "solo", lambda r: r["restarts"] == 4 and r["state"] == "healthy", timeout=30,
                what="arm healthy after three more exits")

    # a release whose demo exits at once: the daemon rolls back by itself, the deployment fails
    fleet.release("arm", "1.1.0", mode="exit", arg="1", keep=["state/"], start_timeout_s=5)
    bad = call(server, "/api/v1/deployments", {"demo": "arm", "version": "1.1.0", "node": "solo"})
    result = ended(server, bad["id"])
    assert result["state"] == "failed" and result["nodes"][0]["state"] == "rolled_back", result
    assert "solo: rolled_back" in result["message"]
    wait_status(server, "arm", "solo", lambda r: r["version"] == "1.0.0" and r["state"] == "healthy",
                what="1.0.0 running again")

    # rollback goes to what the node had before the failed deployment
    back_dep = call(server, "/api/v1/deployments/rollback", {"demo": "arm", "node": "solo"})
    assert (back_dep["kind"], back_dep["version"]) == ("rollback", "1.0.0")
    assert ended(server, back_dep["id"])["state"] == "done"
    events = server.api("GET", "/api/v1/events?limit=200")[1]["events"]
    assert {"deployment_deploy", "deployment_failed", "deployment_rollback"} <= {e["kind"] for e in events}


def _node_dirs(fleet: Fleet, node: str) -> Path:
    return fleet.state_dir(node) / "demos"


def _control(fleet: Fleet, node: str, demo: str, file: str, text: str) -> None:
    control(Node(fleet.daemons[node], fleet.state_dir(node), fleet.tmp / node / "logs"), demo, file, text)


def test_a_canary_that_never_becomes_healthy_stops_the_rollout(fleet: Fleet) -> None:
    server = fleet.server
    fleet.release("kiosk", "1.0.0")
    first = call(server, "/api/v1/deployments", {"demo": "kiosk", "version": "1.0.0", "group": "hall-a"})
    assert ended(server, first["id"])["state"] == "done"
    fleet.release("kiosk", "2.0.0", mode="silent", heartbeat_s=1, start_timeout_s=3)
    canary = call(server, "/api/v1/deployments", {"demo": "kiosk", "version": "2.0.0", "group": "hall-a", "batch": 1})
    # (the canary's daemon may already be downloading when the answer is made)
    assert [(n["node_name"], n["batch"], n["state"] if n["batch"] else n["state"] in IN_PROGRESS)
            for n in canary["nodes"]] == [("hall-1", 0, True), ("hall-2", 1, "waiting"), ("hall-3", 1, "waiting")]
    result = ended(server, canary["id"])
    assert result["state"] == "failed", result
    assert result["message"].startswith("hall-1: rolled_back") and "the other 2 node(s) keep version 1.0.0" in \
        result["message"]
    assert [n["state"] for n in result["nodes"]] == ["rolled_back", "waiting", "waiting"]
    rows = status_of(server, "kiosk")
    assert {n: (r["desired_version"], r["version"]) for n, r in rows.items()} == {
        "hall-1": ("2.0.0", "1.0.0"), "hall-2": ("1.0.0", "1.0.0"), "hall-3": ("1.0.0", "1.0.0")}

    # a good release goes to the canary first, then to the rest
    fleet.release("kiosk", "3.0.0")
    good = call(server, "/api/v1/deployments", {"demo": "kiosk", "version": "3.0.0", "group": "hall-a", "batch": 1})
    result = ended(server, good["id"])
    assert result["state"] == "done" and [n["state"] for n in result["nodes"]] == ["healthy"] * 3, result
    canary_done = result["nodes"][0]["updated_at"]
    assert all(n["updated_at"] >= canary_done for n in result["nodes"][1:])
    for node in GROUP:
        wait_status(server, "kiosk", node, lambda r: r["version"] == "3.0.0" and r["state"] == "healthy")

    # the most specific target wins: one node of the group back on 1.0.0
    pinned = call(server, "/api/v1/deployments", {"demo": "kiosk", "version": "1.0.0", "node": "hall-2"})
    assert ended(server, pinned["id"])["state"] == "done"
    rows = status_of(server, "kiosk")
    assert {n: r["desired_version"] for n, r in rows.items()} == {"hall-1": "3.0.0", "hall-2": "1.0.0",
                                                                  "hall-3": "3.0.0"}


def test_an_offline_node_catches_up_and_undeploy_removes(fleet: Fleet) -> None:
    server = fleet.server
    fleet.daemons["hall-3"].stop()
    fleet.wait_connected("hall-3", connected=False)
    fleet.release("lamp", "1.0.0")
    dep = call(server, "/api/v1/deployments", {"demo": "lamp", "version": "1.0.0", "group": "hall-a"})
    result = ended(server, dep["id"])
    assert result["state"] == "done" and result["message"] == "1 node(s) offline: they converge when they come back"
    assert {n["node_name"]: n["state"] for n in result["nodes"]} == {"hall-1": "healthy", "hall-2": "healthy",
                                                                    "hall-3": "offline"}
    fleet.start("hall-3")
    fleet.wait_connected("hall-3")
    wait_status(server, "lamp", "hall-3", lambda r: r["state"] == "healthy", what="hall-3 converged")
    wait_for(lambda: deployment(server, dep["id"])["nodes"][2]["state"] == "healthy", 30, "hall-3's row")

    gone = call(server, "/api/v1/deployments/undeploy", {"demo": "lamp", "group": "hall-a"})
    result = ended(server, gone["id"])
    assert result["state"] == "done" and {n["state"] for n in result["nodes"]} == {"removed"}, result
    assert status_of(server, "lamp") == {}
    for node in GROUP:
        assert not (fleet.state_dir(node) / "demos" / "lamp" / "current").exists()
    # every push makes the daemons repeat each demo's result: one event per node and deployment still
    events = server.api("GET", "/api/v1/events?kind=demo_install_healthy&limit=1000")[1]["events"]
    seen = [(e["node"], e["data"]["deployment"]) for e in events]
    assert len(seen) == len(set(seen)) and len(seen) >= 9


def test_a_demo_that_ignores_sigterm_is_replaced_after_its_grace(fleet: Fleet) -> None:
    server = fleet.server
    fleet.release("stubborn", "1.0.0", mode="ignore-term", stop_grace_s=1)
    first = call(server, "/api/v1/deployments", {"demo": "stubborn", "version": "1.0.0", "node": "solo"})
    assert ended(server, first["id"])["state"] == "done"
    old_pid = wait_status(server, "stubborn", "solo", lambda r: r["state"] == "healthy")["pid"]
    fleet.release("stubborn", "1.1.0")
    second = call(server, "/api/v1/deployments", {"demo": "stubborn", "version": "1.1.0", "node": "solo"})
    assert ended(server, second["id"])["state"] == "done"
    assert not Path(f"/proc/{old_pid}").exists() or "Z" in Path(f"/proc/{old_pid}/stat").read_text().split()[2]


def test_a_stalled_install_is_lost(fleet: Fleet) -> None:
    server = fleet.server
    fleet.bundles["stall"] = server.enroll("stall")
    daemon = fleet.start("stall", env={"DVIC_NODE_TEST_INSTALL_PAUSE": "installing"})
    try:
        fleet.wait_connected("stall")
        fleet.release("slow", "1.0.0")
        dep = call(server, "/api/v1/deployments", {"demo": "slow", "version": "1.0.0", "node": "stall"})
        result = ended(server, dep["id"], timeout=60)
        assert result["state"] == "failed" and result["nodes"][0]["state"] == "lost", result
        assert result["nodes"][0]["message"] == "no news in state installing for 6 s"
    finally:
        daemon.kill()  # paused mid-install on purpose


def node_get(fleet: Fleet, node: str, path: str, headers: dict[str, str] | None = None,
             cert: bool = True) -> tuple[int, bytes, dict[str, str]]:
    bundle = fleet.bundles[node]
    ctx = ssl.create_default_context(cadata=bundle["ca_pem"])
    if cert:
        pem = fleet.tmp / f"{node}-client.pem"
        pem.write_text(bundle["cert_pem"] + bundle["key_pem"])
        ctx.load_cert_chain(str(pem))
    req = urllib.request.Request(fleet.server.url + path, headers=headers or {})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def test_nodes_download_only_their_own_releases_and_resume_with_range(fleet: Fleet) -> None:
    rel = fleet.release("fetch", "1.0.0")
    other = fleet.release("fetch", "2.0.0")
    dep = call(fleet.server, "/api/v1/deployments", {"demo": "fetch", "version": "1.0.0", "node": "solo"})
    ended(fleet.server, dep["id"])
    data = rel.path.read_bytes()
    status, body, _ = node_get(fleet, "solo", f"/api/v1/node/releases/{rel.sha256}")
    assert status == 200 and hashlib.sha256(body).hexdigest() == rel.sha256
    status, body, headers = node_get(fleet, "solo", f"/api/v1/node/releases/{rel.sha256}", {"Range": "bytes=100-"})
    assert status == 206 and body == data[100:]
    assert headers["Content-Range"] == f"bytes 100-{len(data) - 1}/{len(data)}"
    status, _, _ = node_get(fleet, "solo", f"/api/v1/node/releases/{other.sha256}")  # published, not desired
    assert status == 404
    status, _, _ = node_get(fleet, "hall-1", f"/api/v1/node/releases/{rel.sha256}")  # another node's
    assert status == 404
    status, _, _ = node_get(fleet, "solo", f"/api/v1/node/releases/{rel.sha256}", cert=False)
    assert status == 401
