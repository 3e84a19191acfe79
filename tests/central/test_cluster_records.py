"""Node records across replicas (shared presence, central/cluster/presence.py): two real servers on one PostgreSQL
database and one data dir; a node enrolled, renamed, put in maintenance or revoked through one is
known so by the other at once, and may connect to it (or is refused and cut off there)."""

from __future__ import annotations

from typing import Any

import pytest

from dvic_core.constants import CLOSE_REVOKED
from tests.support.nodes import connected
from tests.support.replicas import toward
from tests.support.server import CentralServer
from tests.support.wait import wait_for


def listed(server: CentralServer, node_id: str) -> dict[str, Any]:
    status, body = server.api("GET", "/api/v1/nodes")
    assert status == 200, body
    return next((n for n in body["nodes"] if n["id"] == node_id), {})


async def test_a_node_enrolled_through_one_replica_is_listed_by_and_connects_to_the_other(
        two_replicas: list[CentralServer]) -> None:
    r1, r2 = two_replicas
    bundle = r1.enroll("pi-7", kind="raspberry", group="hall-a")
    assert wait_for(lambda: listed(r2, bundle["node_id"]), 10, "r2 to list the new node")["name"] == "pi-7"
    async with connected(toward(bundle, r2)) as node:
        assert node.welcome["node_id"] == bundle["node_id"]
        assert wait_for(lambda: listed(r2, bundle["node_id"]).get("state") == "online", 10, "online on r2")


async def test_rename_and_maintenance_made_on_one_replica_show_on_the_other(
        two_replicas: list[CentralServer]) -> None:
    r1, r2 = two_replicas
    bundle = r1.enroll("pi-8")
    wait_for(lambda: listed(r2, bundle["node_id"]), 10, "r2 to list the node")
    assert r1.api("POST", f"/api/v1/nodes/{bundle['node_id']}/maintenance", {"on": True})[0] == 200
    wait_for(lambda: listed(r2, bundle["node_id"]).get("state") == "maintenance", 10, "maintenance on r2")
    again = r1.api("POST", "/api/v1/nodes", {"name": "pi-8", "kind": "desktop", "group": ""})
    assert again[0] == 409  # the name is taken by a node that is not revoked: nothing changed anywhere
    assert listed(r2, bundle["node_id"])["name"] == "pi-8"


async def test_a_node_revoked_through_one_replica_is_cut_off_and_refused_by_the_other(
        two_replicas: list[CentralServer]) -> None:
    r1, r2 = two_replicas
    bundle = r1.enroll("pi-9")
    wait_for(lambda: listed(r2, bundle["node_id"]), 10, "r2 to list the node")
    async with connected(toward(bundle, r2)) as node:
        assert r1.api("DELETE", f"/api/v1/nodes/{bundle['node_id']}")[0] == 200
        assert await node.closed(10) == CLOSE_REVOKED  # r2 ends the session r1 revoked
    assert listed(r2, bundle["node_id"])["revoked"] is True
    with pytest.raises(Exception):  # noqa: B017 - refused at the TLS handshake or the upgrade, either way refused
        async with connected(toward(bundle, r2)):
            pass
