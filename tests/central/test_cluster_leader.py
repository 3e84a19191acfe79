"""Once-only jobs on several replicas (central/cluster/leader.py) on a real PostgreSQL: one replica
runs each job; it moves when the holder closes, loses its session, or is killed -9."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest

from central.cluster.leader import Job, Leadership, Solo, holders
from tests.support.postgres import Cluster
from tests.support.wait import async_wait_for

ROOT = Path(__file__).resolve().parents[2]
FAST = {"try_every": 0.2, "check_timeout": 1.0}


@pytest.fixture
def url(pg_cluster: Cluster) -> str:
    return pg_cluster.create_database()


def forever(log: list[str], who: str) -> Job:
    async def job() -> None:
        log.append(who)
        await asyncio.Event().wait()
    return job


async def who_holds(url: str, jobs: list[str]) -> dict[str, str]:
    conn = await asyncpg.connect(url)
    try:
        return await holders(conn, jobs)
    finally:
        await conn.close()


async def test_one_replica_runs_each_job_and_it_moves_when_the_holder_closes(url: str) -> None:
    log: list[str] = []
    a = Leadership(url, "a", {"sweep": forever(log, "a"), "retention": forever(log, "a")}, **FAST)
    b = Leadership(url, "b", {"sweep": forever(log, "b"), "retention": forever(log, "b")}, **FAST)
    a.start()
    await async_wait_for(lambda: a.held == {"sweep", "retention"}, 10, "a to run both jobs")
    b.start()
    await async_wait_for(lambda: b.rounds >= 3, 10, "b to try a few times")
    assert b.held == set() and log == ["a", "a"]
    assert await who_holds(url, ["sweep", "retention"]) == {"sweep": "a", "retention": "a"}

    await a.close()
    await async_wait_for(lambda: b.held == {"sweep", "retention"}, 10, "b to take both jobs over")
    assert log == ["a", "a", "b", "b"]
    assert await who_holds(url, ["sweep", "retention"]) == {"sweep": "b", "retention": "b"}
    await b.close()


async def test_a_replica_whose_session_ends_stops_its_jobs_and_does_not_take_them_back(url: str) -> None:
    log: list[str] = []
    a = Leadership(url, "a", {"sweep": forever(log, "a")}, **FAST)
    b = Leadership(url, "b", {"sweep": forever(log, "b")}, **FAST)
    a.start()
    await async_wait_for(lambda: a.held == {"sweep"}, 10, "a to run the job")
    b.start()
    await async_wait_for(lambda: b.rounds >= 2, 10, "b to try")
    conn = await asyncpg.connect(url)
    try:  # the database ends a's session (as when its network goes)
        ended = await conn.fetchval("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                                    " WHERE application_name = 'dvic-central leader a'")
    finally:
        await conn.close()
    assert ended == 1
    await async_wait_for(lambda: a.held == set() and b.held == {"sweep"}, 10, "the job to move to b")
    rounds = a.rounds
    await async_wait_for(lambda: a.rounds >= rounds + 3, 10, "a to reconnect and try again")
    assert a.held == set() and log == ["a", "b"]
    await a.close()
    await b.close()


async def test_a_job_that_fails_is_started_again_on_the_replica_holding_it(url: str) -> None:
    starts: list[int] = []

    async def flaky() -> None:
        starts.append(1)
        if len(starts) < 3:
            raise RuntimeError("transient")
        await asyncio.Event().wait()

    a = Leadership(url, "a", {"alerts": flaky}, **FAST)
    a.start()
    await async_wait_for(lambda: len(starts) >= 3, 10, "the job to be started three times")
    assert a.held == {"alerts"} and a.gained == 1  # the lock was never let go
    await a.close()


CHILD = """
import asyncio, sys
from central.cluster.leader import Leadership

async def job():
    print("running", flush=True)
    await asyncio.Event().wait()

async def main():
    Leadership(sys.argv[1], "killed", {"scheduler": job}, try_every=0.2, check_timeout=1.0).start()
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_the_job_of_a_replica_killed_9_moves_to_another(url: str) -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD, url], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 30)
        assert line.strip() == "running"
        log: list[str] = []
        b = Leadership(url, "b", {"scheduler": forever(log, "b")}, **FAST)
        b.start()
        await async_wait_for(lambda: b.rounds >= 2, 10, "b to try while the child holds it")
        assert b.held == set()
        os.kill(child.pid, signal.SIGKILL)
        await async_wait_for(lambda: b.held == {"scheduler"}, 10, "the job to move to b")
        assert await who_holds(url, ["scheduler"]) == {"scheduler": "b"}
        await b.close()
    finally:
        child.kill()
        child.wait()


async def test_a_replica_without_the_database_runs_nothing_then_leads_when_it_comes_back(
        pg_cluster: Cluster) -> None:
    name = f"later_{uuid.uuid4().hex[:8]}"
    log: list[str] = []
    a = Leadership(pg_cluster.url(name), "a", {"sweep": forever(log, "a")}, **FAST)
    a.start()
    await async_wait_for(lambda: a.unreachable >= 2, 15, "a to fail to connect twice")
    assert a.held == set() and log == []
    pg_cluster.create_database(name)
    await async_wait_for(lambda: a.held == {"sweep"}, 15, "a to lead once the database exists")
    await a.close()
    assert a.held == set()


async def test_solo_runs_every_job_at_once() -> None:
    log: list[str] = []
    solo = Solo({"sweep": forever(log, "solo"), "retention": forever(log, "solo")})
    solo.start()
    await async_wait_for(lambda: len(log) == 2, 5, "both jobs to start")
    assert solo.held == {"sweep", "retention"}
    await solo.close()
    assert solo.held == set()
