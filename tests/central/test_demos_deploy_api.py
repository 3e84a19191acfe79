"""Deployments on the real server without daemons: bad input, precedence, offline nodes, rollback rules,
audit, and desired state kept across a server restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.releases import archive, publish
from tests.support.server import CentralServer
from tests.support.wait import wait_for


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CentralServer]:
    tmp = tmp_path_factory.mktemp("deploy-api")
    srv = CentralServer(tmp / "central").start()
    for name, group in (("a-1", "hall-a"), ("a-2", "hall-a"), ("b-1", "hall-b")):
        srv.enroll(name, group=group)
    srv.enroll("board", kind="esp32", group="hall-a")
    _, body = srv.api("POST", "/api/v1/operators", {"name": "dep-viewer", "role": "viewer"})
    srv.viewer = body["token"]  # type: ignore[attr-defined]
    for version in ("1.0.0", "1.1.0", "2.0.0"):
        data = archive(tmp / f"arm-{version}.tar.gz", {"name": "arm", "version": version, "run": ["true"]}).read_bytes()
        assert publish(srv, data)[0] == 201
    yield srv
    srv.stop()


def post(server: CentralServer, path: str, body: dict[str, Any], token: str | None = None) -> tuple[int, Any]:
    return server.api("POST", f"/api/v1/deployments{path}", body, token=token)


def desired(server: CentralServer) -> dict[str, str | None]:
    _, body = server.api("GET", "/api/v1/demos/status?demo=arm")
    return {row["node_name"]: row["desired_version"] for row in body["status"]}


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"version": "1.0.0", "all": True}, 400, "bad_demo"),
    ({"demo": "arm", "all": True}, 400, "bad_version"),
    ({"demo": "arm", "version": "1.0.0"}, 400, "bad_target"),
    ({"demo": "arm", "version": "1.0.0", "all": True, "group": "hall-a"}, 400, "bad_target"),
    ({"demo": "arm", "version": "1.0.0", "all": "yes"}, 400, "bad_target"),
    ({"demo": "arm", "version": "1.0.0", "all": True, "batch": 0}, 400, "bad_batch"),
    ({"demo": "arm", "version": "9.9.9", "all": True}, 404, "no_such_release"),
    ({"demo": "arm", "version": "1.0.0", "group": "nowhere"}, 404, "empty_group"),
    ({"demo": "arm", "version": "1.0.0", "node": "ghost"}, 404, "no_such_node"),
    ({"demo": "arm", "version": "1.0.0", "node": "board"}, 409, "not_supported"),
])
def test_bad_deployments_say_what_to_change(server: CentralServer, body: dict[str, Any], status: int,
                                            code: str) -> None:
    got, answer = post(server, "", body)
    assert (got, answer["error"]["code"]) == (status, code), answer


def test_viewers_cannot_deploy_and_everything_is_audited(server: CentralServer) -> None:
    got, answer = post(server, "", {"demo": "arm", "version": "1.0.0", "all": True},
                       token=server.viewer)  # type: ignore[attr-defined]
    assert (got, answer["error"]["code"]) == (403, "forbidden")
    post(server, "", {"demo": "arm", "version": "9.9.9", "all": True})
    _, audit = server.api("GET", "/api/v1/audit?limit=100")
    deploys = [e for e in audit["entries"] if e["action"] in ("demo_deploy", "POST /api/v1/deployments")]
    assert any(e["status"] == 404 and e["detail"]["error"] == "no_such_release" for e in deploys)
    assert any(e["status"] == 403 and e["operator"] == "dep-viewer" for e in deploys)


def test_the_most_specific_target_wins_and_offline_nodes_wait(server: CentralServer) -> None:
    got, everywhere = post(server, "", {"demo": "arm", "version": "1.0.0", "all": True})
    assert got == 201 and everywhere["state"] == "done"
    assert everywhere["message"] == "3 node(s) offline: they converge when they come back"
    assert {n["node_name"]: n["state"] for n in everywhere["nodes"]} == {"a-1": "offline", "a-2": "offline",
                                                                        "b-1": "offline"}
    post(server, "", {"demo": "arm", "version": "1.1.0", "group": "hall-a"})
    got, pinned = post(server, "", {"demo": "arm", "version": "2.0.0", "node": "a-2"})
    assert got == 201
    assert desired(server) == {"a-1": "1.1.0", "a-2": "2.0.0", "b-1": "1.0.0"}
    # a group deployment does not take over a node with its own assignment
    got, again = post(server, "", {"demo": "arm", "version": "1.0.0", "group": "hall-a"})
    assert [n["node_name"] for n in again["nodes"]] == ["a-1"]
    assert again["message"] == ("1 node(s) offline: they converge when they come back; 1 node(s) left as they are:"
                                " a node-level deployment or a booking decides for them (a-2)")
    assert desired(server) == {"a-1": "1.0.0", "a-2": "2.0.0", "b-1": "1.0.0"}

    # rollback: hall-a goes back to what it ran before (1.1.0); a-2 to the group's version before it
    got, back = post(server, "/rollback", {"demo": "arm", "group": "hall-a"})
    assert (got, back["version"], back["kind"]) == (201, "1.1.0", "rollback")
    got, back = post(server, "/rollback", {"demo": "arm", "node": "a-2"})
    assert (got, back["version"]) == (201, "1.1.0")
    got, answer = post(server, "/rollback", {"demo": "arm", "group": "hall-b"})
    assert (got, answer["error"]["code"]) == (409, "no_deployment")

    # undeploy from one group beats the fleet-wide assignment there
    got, gone = post(server, "/undeploy", {"demo": "arm", "group": "hall-b"})
    assert got == 201 and gone["kind"] == "undeploy"
    assert desired(server) == {"a-1": "1.1.0", "a-2": "1.1.0"}
    got, answer = post(server, "/undeploy", {"demo": "nothing", "all": True})
    assert (got, answer["error"]["code"]) == (404, "no_such_demo")

    _, listing = server.api("GET", "/api/v1/demos")
    arm = next(d for d in listing["demos"] if d["name"] == "arm")
    assert {(a["scope"], a["target"], a["version"]) for a in arm["assignments"]} == {
        ("all", "all nodes", "1.0.0"), ("group", "group hall-a", "1.1.0"), ("group", "group hall-b", None),
        ("node", "node a-2", "1.1.0")}
    _, releases = server.api("GET", "/api/v1/demos/arm/releases")
    assert {r["version"]: r["referenced"] for r in releases["releases"]} == {"1.0.0": True, "1.1.0": True,
                                                                            "2.0.0": True}

    # the desired state survives a restart of the server
    server.stop()
    server.start()
    assert desired(server) == {"a-1": "1.1.0", "a-2": "1.1.0"}
    _, deps = server.api("GET", "/api/v1/deployments?demo=arm&limit=3")
    assert [d["kind"] for d in deps["deployments"]] == ["undeploy", "rollback", "rollback"]
    _, one = server.api("GET", f"/api/v1/deployments/{everywhere['id']}")
    assert one["state"] in ("done", "superseded") and len(one["nodes"]) == 3
    got, answer = server.api("GET", "/api/v1/deployments/nope")
    assert (got, answer["error"]["code"]) == (404, "no_such_deployment")


def test_a_booking_end_clears_the_nodes_own_assignment_and_the_group_applies_again(tmp_path: Path) -> None:
    """DeploymentHub.clear_nodes through the calendar (a booking's --deploy, then its cancel): unlike an
    undeploy, the node's own assignment is gone (kept so across a restart); other nodes' pins stay."""
    srv = CentralServer(tmp_path / "central").start()
    try:
        for name in ("c-1", "c-2"):
            srv.enroll(name, group="hall-c")
        for version in ("1.0.0", "2.0.0", "3.0.0"):
            data = archive(tmp_path / f"arm-{version}.tar.gz", {"name": "arm", "version": version,
                                                                "run": ["true"]}).read_bytes()
            assert publish(srv, data)[0] == 201
        assert post(srv, "", {"demo": "arm", "version": "1.0.0", "group": "hall-c"})[0] == 201
        assert post(srv, "", {"demo": "arm", "version": "3.0.0", "node": "c-2"})[0] == 201
        got, booking = srv.api("POST", "/api/v1/bookings", {"nodes": ["c-1"], "to": "+1h", "deploy": "arm@2.0.0"})
        assert got == 201, booking
        wait_for(lambda: desired(srv) == {"c-1": "2.0.0", "c-2": "3.0.0"}, 20, "the booking's release on c-1")
        assert srv.api("POST", f"/api/v1/bookings/{booking['id']}/cancel")[0] == 200
        wait_for(lambda: desired(srv) == {"c-1": "1.0.0", "c-2": "3.0.0"}, 20, "the group's release back on c-1")
        _, body = srv.api("GET", "/api/v1/demos")
        (arm,) = body["demos"]
        assert sorted((a["scope"], a["target"], a["version"]) for a in arm["assignments"]) == [
            ("group", "group hall-c", "1.0.0"), ("node", "node c-2", "3.0.0")], arm
        events = srv.api("GET", "/api/v1/events?kind=deployment_clear")[1]["events"]
        assert [e["message"] for e in events] == [f"arm: back to the group's desired state by booking:{booking['id']}"]
        srv.stop()
        srv.start()
        assert desired(srv) == {"c-1": "1.0.0", "c-2": "3.0.0"}
    finally:
        srv.stop()


def test_a_booked_node_revoked_before_the_start_does_not_keep_the_others_from_the_release(tmp_path: Path) -> None:
    srv = CentralServer(tmp_path / "central").start()
    try:
        for name in ("d-1", "d-2"):
            srv.enroll(name, group="hall-d")
        data = archive(tmp_path / "arm.tar.gz", {"name": "arm", "version": "2.0.0", "run": ["true"]}).read_bytes()
        assert publish(srv, data)[0] == 201
        got, booking = srv.api("POST", "/api/v1/bookings", {"nodes": ["d-1", "d-2"], "from": "+3s", "to": "+1h",
                                                            "deploy": "arm@2.0.0"})
        assert got == 201, booking
        assert srv.api("DELETE", "/api/v1/nodes/d-2")[0] == 200
        applied = wait_for(lambda: (b := srv.api("GET", f"/api/v1/bookings/{booking['id']}")[1])["deploy_state"]
                           and b, 20, "the booking's start")
        assert applied["deploy_state"] == "applied", applied
        assert "arm 2.0.0 desired on 1 node(s)" in applied["deploy_message"], applied
        assert "refused: node 'd-2' is revoked" in applied["deploy_message"], applied
        assert desired(srv) == {"d-1": "2.0.0"}
        assert srv.api("POST", f"/api/v1/bookings/{booking['id']}/cancel")[0] == 200
        wait_for(lambda: desired(srv) == {}, 20, "d-1 back to no arm")
    finally:
        srv.stop()
