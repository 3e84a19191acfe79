"""Who a forwarded call is audited as (central/cluster/forward.py): a feature area's call made to a
replica that does not lead them is answered, and audited, by the leader, with the operator's own
address, which only a replica can assert (its client certificate); a header saying the same from
anyone else is ignored. Real replicas on one PostgreSQL; operators on other loopback addresses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from central.cluster.forward import CLIENT_HEADER, VIA_HEADER
from central.cluster.leader import holders
from tests.support.postgres import Cluster
from tests.support.rawclient import tls_ask
from tests.support.replicas import Replicas
from tests.support.server import CentralServer
from tests.support.wait import async_wait_for

OPERATOR = "127.0.0.5"
BAD_RULE = b'{"name": "x", "type": "no-such-type"}'  # refused 400 by the leader, audited


@pytest.fixture
def replicas(tmp_path: Path, pg_cluster: Cluster) -> Iterator[list[CentralServer]]:
    with Replicas(tmp_path / "data", pg_cluster.fresh_database(), count=2) as servers:
        yield servers


async def leader_and_other(servers: list[CentralServer]) -> tuple[CentralServer, CentralServer]:
    async def held() -> str | None:
        conn = await asyncpg.connect(servers[0].database or "")
        try:
            return (await holders(conn, ["features"])).get("features")
        finally:
            await conn.close()

    name = await async_wait_for(held, 30, "a replica to lead the feature areas", interval=0.25)
    leader = next(s for s in servers if s.name == name)
    other = next(s for s in servers if s is not leader)
    await async_wait_for(lambda: other.api("GET", "/api/v1/rules")[0] == 200, 20, "the other replica to forward")
    return leader, other


def port_of(server: CentralServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


def rule_audits(server: CentralServer) -> list[tuple[str, str]]:
    return [(str(r[0]), str(r[1])) for r in
            server.query("SELECT operator, remote FROM audit WHERE action = 'POST /api/v1/rules' ORDER BY id")]


async def test_a_forwarded_call_is_audited_with_the_operators_address(replicas: list[CentralServer]) -> None:
    leader, other = await leader_and_other(replicas)
    status, body = await tls_ask(port_of(other), other.ssl_context, OPERATOR, other.admin_token,
                                 method="POST", path="/api/v1/rules", body=BAD_RULE)
    assert status == 400, body
    assert rule_audits(leader) == [("admin", OPERATOR)]  # not the forwarding replica's 127.0.0.1
    await async_wait_for(lambda: f"access: {OPERATOR} admin POST /api/v1/rules 400" in leader.log(), 10,
                         "the leader's access log line with the operator's address")


async def test_the_forwarding_header_from_anyone_else_is_not_believed(replicas: list[CentralServer]) -> None:
    leader, _ = await leader_and_other(replicas)
    forged = (f"{VIA_HEADER}: r9\r\n{CLIENT_HEADER}: 10.6.6.6\r\n").encode()
    status, body = await tls_ask(port_of(leader), leader.ssl_context, OPERATOR, leader.admin_token,
                                 method="POST", path="/api/v1/rules", body=BAD_RULE, extra_headers=forged)
    assert status == 400, body
    assert rule_audits(leader) == [("admin", OPERATOR)]
