"""Node records across replicas (central/cluster/records.py): two real servers on one PostgreSQL
database and one data dir; a node enrolled, renamed, put in maintenance or revoked through one is
known so by the other at once, and may connect to it (or is refused and cut off there)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dvic_core.constants import CLOSE_REVOKED
from tests.support.nodes import connected
from tests.support.postgres import Cluster
from tests.support.server import CentralServer
from tests.support.wait import wait_for


@pytest.fixture
def pair(tmp_path: Path, pg_cluster: Cluster) -> Iterator[tuple[CentralServer, CentralServer]]:
    url = pg_cluster.create_database()
    servers: list[CentralServer] = []
    try:
        for name in ("r1", "r2"):  # one after the other: they share the data dir's listen.json
            server = CentralServer(tmp_path / "data", database=url, extra_args=("--replica", name))
            server.log_path = tmp_path / f"{name}.log"
            servers.append(server.start())
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.stop()


def on(server: CentralServer, bundle: dict[str, Any]) -> dict[str, Any]:
    """The bundle, pointed at `server` instead of the one that enrolled the node."""
    port = server.url.rsplit(":", 1)[1]
    host, _, path = bundle["ws_url"].split("://", 1)[1].partition("/")
    return {**bundle, "ws_url": f"wss://{host.rsplit(':', 1)[0]}:{port}/{path}"}


def listed(server: CentralServer, node_id: str) -> dict[str, Any]:
    status, body = server.api("GET", "/api/v1/nodes")
    assert status == 200, body
    return next((n for n in body["nodes"] if n["id"] == node_id), {})


async def test_a_node_enrolled_through_one_replica_is_listed_by_and_connects_to_the_other(
        pair: tuple[CentralServer, CentralServer]) -> None:
    r1, r2 = pair
    bundle = r1.enroll("pi-7", kind="raspberry", group="hall-a")
    assert wait_for(lambda: listed(r2, bundle["node_id"]), 10, "r2 to list the new node")["name"] == "pi-7"
    async with connected(on(r2, bundle)) as node:
        assert node.welcome["node_id"] == bundle["node_id"]
        assert wait_for(lambda: listed(r2, bundle["node_id"]).get("state") == "online", 10, "online on r2")


async def test_rename_and_maintenance_made_on_one_replica_show_on_the_other(
        pair: tuple[CentralServer, CentralServer]) -> None:
    r1, r2 = pair
    bundle = r1.enroll("pi-8")
    wait_for(lambda: listed(r2, bundle["node_id"]), 10, "r2 to list the node")
    assert r1.api("POST", f"/api/v1/nodes/{bundle['node_id']}/maintenance", {"on": True})[0] == 200
    wait_for(lambda: listed(r2, bundle["node_id"]).get("state") == "maintenance", 10, "maintenance on r2")
    again = r1.api("POST", "/api/v1/nodes", {"name": "pi-8", "kind": "desktop", "group": ""})
    assert again[0] == 409  # the name is taken by a node that is not revoked: nothing changed anywhere
    assert listed(r2, bundle["node_id"])["name"] == "pi-8"


async def test_a_node_revoked_through_one_replica_is_cut_off_and_refused_by_the_other(
        pair: tuple[CentralServer, CentralServer]) -> None:
    r1, r2 = pair
    bundle = r1.enroll("pi-9")
    wait_for(lambda: listed(r2, bundle["node_id"]), 10, "r2 to list the node")
    async with connected(on(r2, bundle)) as node:
        assert r1.api("DELETE", f"/api/v1/nodes/{bundle['node_id']}")[0] == 200
        assert await node.closed(10) == CLOSE_REVOKED  # r2 ends the session r1 revoked
    assert listed(r2, bundle["node_id"])["revoked"] is True
    with pytest.raises(Exception):  # noqa: B017 - refused at the TLS handshake or the upgrade, either way refused
        async with connected(on(r2, bundle)):
            pass
