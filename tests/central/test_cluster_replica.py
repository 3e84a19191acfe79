"""A server's name among replicas (`--replica`) and its bus: PostgreSQL's between replicas, none on SQLite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from central.cluster.replica import (
    LocalBus,
    NoReply,
    ReplicaNameError,
    check_replica_name,
    default_replica_name,
)
from tests.support import postgres
from tests.support.postgres import Cluster
from tests.support.server import CentralServer
from tests.support.wait import wait_for


@pytest.mark.parametrize("name", ["a", "hall-2", "central_1", "x" * 40, "9lives"])
def test_plain_names_are_replica_names(name: str) -> None:
    assert check_replica_name(name) == name


@pytest.mark.parametrize("name", ["", "Hall", "-a", "a b", "a.b", "x" * 41, "é"])
def test_other_names_are_refused_saying_what_a_name_is(name: str) -> None:
    with pytest.raises(ReplicaNameError, match="1-40 lower-case letters"):
        check_replica_name(name)


def test_the_default_name_is_a_valid_one() -> None:
    assert check_replica_name(default_replica_name())


def test_serve_refuses_a_bad_replica_name_before_starting(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "central.cli", "serve", "--data-dir", str(tmp_path / "d"),
                          "--replica", "Hall 2"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "--replica: a replica name is 1-40 lower-case letters" in run.stderr
    assert not (tmp_path / "d").exists()


async def test_the_local_bus_carries_nothing_and_a_request_has_no_answer() -> None:
    bus = LocalBus("only")
    got: list[object] = []
    bus.subscribe("dvic_events", got.append)
    await bus.start()
    await bus.publish("dvic_events", {"type": "x"})
    with pytest.raises(NoReply, match="the only one"):
        await bus.request("other", "ping", {})
    await bus.close()
    assert got == []


def test_the_health_answer_names_the_replica(tmp_path: Path) -> None:
    with CentralServer(tmp_path / "data", extra_args=("--replica", "hall-2")) as server:
        status, body = server.api("GET", "/api/v1/health")
    assert status == 200 and body["replica"] == "hall-2"


def test_on_postgresql_the_replica_listens_on_the_bus_under_its_name(tmp_path: Path, pg_cluster: Cluster) -> None:
    url = pg_cluster.create_database()
    with CentralServer(tmp_path / "data", database=url, extra_args=("--replica", "hall-2")):
        def bus_sessions() -> list[tuple[object, ...]]:
            return postgres.query(url, "SELECT application_name FROM pg_stat_activity"
                                       " WHERE application_name LIKE 'dvic-central bus hall-2%'")

        assert wait_for(bus_sessions, 20, "the replica's bus session")
    assert wait_for(lambda: not bus_sessions(), 20, "the bus session closed with the server")
