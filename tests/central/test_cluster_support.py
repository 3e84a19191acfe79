"""The test support for several replicas (tests/support/replicas.py): two real servers on one
PostgreSQL and one data dir, a node pointed at the replica a test chooses, a balancer in front."""

from __future__ import annotations

from pathlib import Path

from tests.support.daemon import enrolled_daemon, wait_connected
from tests.support.nodes import connected
from tests.support.replicas import StreamClient, balanced, behind, known_on, toward, toward_fields
from tests.support.server import CentralServer
from tests.support.wait import async_wait_for


async def test_each_replica_has_its_name_and_log_and_a_node_reaches_the_one_chosen(
        two_replicas: list[CentralServer]) -> None:
    r1, r2 = two_replicas
    assert [r1.api("GET", "/api/v1/health")[1]["replica"], r2.api("GET", "/api/v1/health")[1]["replica"]] == ["r1", "r2"]
    assert r1.log_path != r2.log_path and "r2" in r2.log_path.name
    bundle = toward(r1.enroll("pi-on-r2"), r2)  # enrolled through r1: the same node for every replica
    known_on(r2, bundle["node_id"])
    async with StreamClient(r2) as stream, connected(bundle):
        await async_wait_for(lambda: (stream.latest(bundle["node_id"]) or {}).get("connected"), 20,
                             "r2's stream to show the node connected")


def test_a_real_daemon_reaches_a_chosen_replica_and_one_behind_the_balancer(
        two_replicas: list[CentralServer], tmp_path: Path) -> None:
    r1, r2 = two_replicas
    node_id, daemon = enrolled_daemon(r1, tmp_path / "pi", bundle_overrides=toward_fields(r2))
    known_on(r2, node_id)
    with daemon:
        wait_connected(r2, node_id, daemon)
    with balanced([r1, r2]) as balancer:
        node_id, daemon = enrolled_daemon(r1, tmp_path / "pi-lb", bundle_overrides=behind(balancer))
        with daemon:
            wait_connected(r1, node_id, daemon)
