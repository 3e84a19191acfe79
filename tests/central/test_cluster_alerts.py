"""Alert evaluation with several replicas (issue 18): it runs on the replica leading the `features`
job (the features leader), which counts the log lines of nodes held by the others (they travel to it on the bus) and
takes the rules added through the others. Real servers on one PostgreSQL, real node connections."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.nodes import connected
from tests.support.postgres import Cluster
from tests.support.replicas import Replicas, StreamClient, job_leader, known_on, toward
from tests.support.wait import async_wait_for


@pytest.mark.parametrize("rule_on", ["leader", "other"])
async def test_a_log_rule_fires_for_a_node_on_one_replica_with_the_rule_added_on_the_other(
        tmp_path: Path, pg_cluster: Cluster, rule_on: str) -> None:
    url = pg_cluster.fresh_database()
    with Replicas(tmp_path / "data", url, count=2, interval=1, offline_after=3,
                  extra_args=("--alerts-interval", "0.5")) as servers:
        leading = await async_wait_for(lambda: job_leader(servers[0], "features"), 30, "a replica to lead the alerts")
        leader, other = sorted(servers, key=lambda s: s.name != leading)
        # The rule is added through one replica, the node is held by the other.
        with_rule, with_node = (leader, other) if rule_on == "leader" else (other, leader)
        status, rule = with_rule.api("POST", "/api/v1/rules", {"name": "door-jam", "type": "log",
                                                                "pattern": "door jammed", "rate": 5})
        assert status == 201, rule
        bundle = toward(with_rule.enroll("pi-door", kind="raspberry", group="hall-a"), with_node)
        known_on(with_node, bundle["node_id"])
        async with StreamClient(other) as stream, connected(bundle) as node:
            async def fired() -> bool:
                # Lines until the leader counts them (its engine has the rule, its wish for every
                # node's lines has reached the node's replica): more than 5 a minute.
                await node.send_logs([node.line(f"door jammed ({i})", level="WARNING") for i in range(6)])
                return any(f["alert"]["rule"] == "door-jam" and f["change"] == "firing"
                           for f in stream.of_type("alert"))

            await async_wait_for(fired, 40, "the door-jam alert, on the other replica's stream", interval=1.0)
        assert "runs features" in leader.log() and "runs features" not in other.log()
        rows = leader.query("SELECT count(*) FROM alerts WHERE rule = 'door-jam'")
        assert rows == [(1,)], rows  # raised once, by the leading engine alone
