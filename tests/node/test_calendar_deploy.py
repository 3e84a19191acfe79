"""The calendar's deployments port end to end (issues 16 + 14): the real server, a real daemon, real
demo processes. A runbook's `deploy` step fired with run-now makes the group's demo healthy; a
booking with `--deploy` starting a few seconds ahead puts its release on the booked node, a group-wide
deploy while it holds leaves that node alone (node scope beats group), and cancelling it gives the
node back its group's version, or removes the demo when the group has none."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from demo_support import kill_demos, make_release

from tests.support.daemon import DaemonProcess
from tests.support.releases import publish
from tests.support.server import CentralServer, write_bundle
from tests.support.wait import wait_for

pytestmark = pytest.mark.slow
TAG = f"calendar-deploy-{os.getpid()}"


@pytest.fixture
def hall(tmp_path: Path) -> Iterator[tuple[CentralServer, Path]]:
    server = CentralServer(tmp_path / "central", interval=1.0, offline_after=3.0,
                           extra_args=("--calendar-tick", "0.5")).start()
    bundle = server.enroll("pi-a", group="hall")
    for sub in ("state", "logs"):
        (tmp_path / sub).mkdir()
    daemon = DaemonProcess(write_bundle(bundle, tmp_path / "bundle.json"), tmp_path / "state", tmp_path / "logs")
    daemon.start()
    try:
        wait_for(lambda: server.node("pi-a")["connected"], 30, "the daemon to connect")
        for version in ("1.0.0", "2.0.0"):
            status, body = publish(server, make_release(tmp_path, "kiosk", version, tag=TAG).path.read_bytes())
            assert status == 201, body
        yield server, tmp_path
    finally:
        daemon.stop()
        kill_demos(tmp_path / "state", TAG)
        server.stop()


def post(server: CentralServer, path: str, body: dict[str, Any] | None = None, status: int = 201) -> dict[str, Any]:
    got, answer = server.api("POST", path, body)
    assert got == status, answer
    return answer


def kiosk(server: CentralServer) -> dict[str, Any] | None:
    status, body = server.api("GET", "/api/v1/demos/status?demo=kiosk")
    assert status == 200, body
    return next((row for row in body["status"] if row["node_name"] == "pi-a"), None)


def runs(server: CentralServer, version: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        row = kiosk(server)
        return row if row and row["version"] == version and row["state"] == "healthy" else None
    return wait_for(check, 60, f"kiosk {version} healthy on pi-a", interval=0.2)


def booking(server: CentralServer, booking_id: int, deploy_state: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        status, body = server.api("GET", f"/api/v1/bookings/{booking_id}")
        assert status == 200, body
        return body if body["deploy_state"] == deploy_state else None
    return wait_for(check, 30, f"booking {booking_id} deploy_state {deploy_state}", interval=0.2)


def run_now(server: CentralServer, name: str) -> dict[str, Any]:
    firing = post(server, f"/api/v1/runbooks/hall/{name}/run")

    def done() -> dict[str, Any] | None:
        status, body = server.api("GET", f"/api/v1/firings?group=hall&runbook={name}")
        assert status == 200, body
        row = next(f for f in body["firings"] if f["id"] == firing["id"])
        return row if row["state"] not in ("pending", "running") else None
    return wait_for(done, 30, f"the firing of {name}")


def test_runbook_deploy_and_a_booked_deployment_on_a_real_daemon(hall: tuple[CentralServer, Path]) -> None:
    server, _ = hall
    post(server, "/api/v1/runbooks", {"group": "hall", "name": "ship", "at": "03:00", "steps": ["deploy kiosk@1.0.0"]})
    fired = run_now(server, "ship")
    assert fired["state"] == "done", fired
    runs(server, "1.0.0")

    booked = post(server, "/api/v1/bookings", {"nodes": ["pi-a"], "from": "+3s", "to": "+1h",
                                               "deploy": "kiosk@2.0.0"})
    assert booked["deploy_state"] == "", booked
    applied = booking(server, booked["id"], "applied")
    assert "kiosk 2.0.0 desired on 1 node(s)" in applied["deploy_message"], applied
    runs(server, "2.0.0")
    # a group-wide deploy while the booking holds: the booked node keeps its booking's release
    group_dep = post(server, "/api/v1/deployments", {"demo": "kiosk", "version": "1.0.0", "group": "hall"})
    assert group_dep["nodes"] == [], group_dep
    assert kiosk(server)["desired_version"] == "2.0.0"  # type: ignore[index]

    post(server, f"/api/v1/bookings/{booked['id']}/cancel", status=200)
    restored = booking(server, booked["id"], "restored")
    assert restored["deploy_message"] == "kiosk: back to the group's desired state on 1 node(s)", restored
    runs(server, "1.0.0")

    # when the group has no version of the demo, the booking's end removes it from the node
    post(server, "/api/v1/runbooks", {"group": "hall", "name": "off", "at": "03:00", "steps": ["undeploy kiosk"]})
    assert run_now(server, "off")["state"] == "done"
    wait_for(lambda: kiosk(server) is None, 30, "kiosk removed from pi-a")
    second = post(server, "/api/v1/bookings", {"nodes": ["pi-a"], "from": "+2s", "to": "+1h",
                                               "deploy": "kiosk@2.0.0"})
    booking(server, second["id"], "applied")
    runs(server, "2.0.0")
    post(server, f"/api/v1/bookings/{second['id']}/cancel", status=200)
    booking(server, second["id"], "restored")
    wait_for(lambda: kiosk(server) is None, 30, "kiosk removed again from pi-a")
