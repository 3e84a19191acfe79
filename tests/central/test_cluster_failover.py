"""A replica dies (issue 18): its nodes reconnect to another through a balancer and are never shown
offline meanwhile; the jobs that run once move to a surviving replica. Real servers on one
PostgreSQL, a real daemon, kill -9."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from central.cluster.leader import holders
from tests.support.daemon import enrolled_daemon, wait_connected
from tests.support.postgres import Cluster
from tests.support.replicas import Replicas, StreamClient, balanced, behind, known_on
from tests.support.server import CentralServer
from tests.support.wait import async_wait_for

JOBS = ("retention", "features", "offline")


async def held(url: str) -> dict[str, str]:
    conn = await asyncpg.connect(url)
    try:
        return await holders(conn, JOBS)
    finally:
        await conn.close()


async def test_once_only_jobs_run_on_one_replica_and_move_when_it_dies(two_replicas: list[CentralServer]) -> None:
    r1, r2 = two_replicas
    url = r1.database or ""
    first: dict[str, str] = await async_wait_for(lambda: _all_held(url), 30, "every job to have a leader")
    leader = {"r1": r1, "r2": r2}[first["retention"]]
    other = r2 if leader is r1 else r1
    by_name = {"r1": r1, "r2": r2}
    # A job runs where its lock is, and only there.
    await async_wait_for(lambda: all(f"runs {job}" in by_name[replica].log() for job, replica in first.items()),
                         20, "each holder to say it runs its jobs")
    for job, replica in first.items():
        assert f"runs {job}" not in (r2 if replica == "r1" else r1).log(), (job, replica)
    leader.kill()  # kill -9: its session ends with it, and so do its locks
    moved: dict[str, str] = await async_wait_for(lambda: _all_held(url, only=other.name), 30, "the jobs to move")
    assert set(moved.values()) == {other.name}
    await async_wait_for(lambda: "runs retention" in other.log() and "runs features" in other.log(), 20,
                         f"{other.name} to say it runs retention and features")


async def _all_held(url: str, only: str = "") -> dict[str, str] | None:
    now = await held(url)
    if set(now) != set(JOBS) or (only and set(now.values()) != {only}):
        return None
    return now


@pytest.mark.parametrize("how", ["kill -9", "stop"])
async def test_when_a_replica_dies_or_stops_its_node_reconnects_to_the_other_and_is_never_shown_offline(
        tmp_path: Path, pg_cluster: Cluster, how: str) -> None:
    with Replicas(tmp_path / "data", pg_cluster.fresh_database(), count=2, interval=1, offline_after=6) as servers:
        r1, r2 = servers
        with balanced([r1, r2]) as balancer:  # new connections go to r1 while it lives, then to r2
            node_id, daemon = enrolled_daemon(r1, tmp_path / "pi", bundle_overrides=behind(balancer))
            known_on(r2, node_id)
            async with StreamClient(r2) as stream:
                with daemon:
                    wait_connected(r2, node_id, daemon)  # held by r1, shown connected on r2
                    assert r1.query("SELECT replica FROM node_sessions WHERE node_id = ?", (node_id,)) == [("r1",)]
                    if how == "stop":
                        r1.stop()  # SIGTERM: it says it stops before its node sockets close
                    else:
                        r1.kill()
                    await async_wait_for(lambda: r2.query("SELECT replica FROM node_sessions WHERE node_id = ?",
                                                          (node_id,)) == [("r2",)], 30, "the node to reconnect to r2")
                    # r2 declares r1 gone (3 s of silence, or told) and leads the orphan sweep: still online.
                    gone = "replica r1 stopped" if how == "stop" else "replica r1 silent"
                    await async_wait_for(lambda: gone in r2.log(), 30, "r2 to see r1 gone")
                    await async_wait_for(lambda: "runs offline" in r2.log(), 30, "r2 to run the orphan sweep")
                    await async_wait_for(lambda: r2.node(node_id)["connected"], 30, "the node connected on r2")
                    assert r2.node(node_id)["state"] == "online"
    states = [n["state"] for n in stream.node_updates(node_id)]
    assert "offline" not in states, states
    assert not [e for e in stream.events(node_id, "state") if e["data"]["to"] == "offline"]
