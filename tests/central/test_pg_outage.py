"""PostgreSQL away and back (issue 18, "Bad input and faults"): at start, a clear error naming the
URL with its password masked; while running, nodes get no ack (they keep their lines and send them
again), operators get 503 with the reason, and everything resumes when the database returns, with
nothing lost or stored twice. A real server subprocess on a real PostgreSQL cluster of its own (it
is stopped and started again here, so not the shared one)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dvic_core.constants import CLOSE_STORAGE
from tests.support.fake_node import FakeNode
from tests.support.postgres import Cluster, PostgresUnavailable, _free_port, start_cluster
from tests.support.server import REPO, CentralServer
from tests.support.wait import wait_for


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    try:
        cluster = start_cluster()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield cluster
    finally:
        cluster.stop()


def test_an_unreachable_database_at_start_is_named_with_its_password_masked(tmp_path: Path) -> None:
    url = f"postgresql://dvic:s3cret-pw@127.0.0.1:{_free_port()}/dvic"
    proc = subprocess.run(
        [sys.executable, "-m", "central.cli", "--data-dir", str(tmp_path / "data"), "serve", "--listen",
         "127.0.0.1:0", "--database", url], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode != 0
    assert "cannot connect to postgresql://dvic:***@127.0.0.1:" in proc.stderr, proc.stderr
    assert "s3cret-pw" not in proc.stderr + proc.stdout


def test_a_bad_database_url_is_refused_with_what_to_write(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "central.cli", "--data-dir", str(tmp_path / "data"), "serve", "--database",
         "mysql://u:pw@h/db"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 2
    assert "postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE or sqlite:PATH" in proc.stderr
    assert "pw@" not in proc.stderr


async def test_lost_database_means_no_ack_and_503_then_everything_resumes(tmp_path: Path,
                                                                         own_cluster: Cluster) -> None:
    with CentralServer(tmp_path / "central", database=own_cluster.create_database()) as server:
        bundle = server.enroll("pi-outage")
        async with FakeNode(bundle) as node:
            await node.connect()
            await node.hello()
            before = [node.line(f"before {i}") for i in range(5)]
            await node.send_logs(before)

            own_cluster.stop_server()
            status, body = server.api("GET", "/api/v1/nodes")
            assert status == 503 and body["error"]["code"] == "storage", body
            assert "postgresql://dvic@127.0.0.1" in body["error"]["message"]
            during = [node.line(f"during {i}") for i in range(5)]
            await node.send({"type": "logs", "lines": during})
            answer = await node.recv(timeout=30)
            assert answer["type"] == "error" and answer["code"] == "storage", answer  # no ack
            assert await node.closed(timeout=30) == CLOSE_STORAGE

        own_cluster.start_server()
        wait_for(lambda: server.api("GET", "/api/v1/nodes")[0] == 200, 30, "the API to answer again")
        async with FakeNode(bundle) as node:  # the daemon reconnects and sends its spool again
            await node.connect()
            await node.hello()
            node.seq = 5
            await node.send_logs(during)
            await node.send_logs(before)  # a replay of what was already acked: stored once
        stored = server.query("SELECT seq, msg FROM logs ORDER BY seq")
        assert stored == [(line["seq"], line["msg"]) for line in before + during]
