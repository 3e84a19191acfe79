"""The per-address budgets with several replicas (issue 18; central/cluster/attempts.py, docs/security.md):
an address spraying its attempts over the replicas behind a balancer gets the budget it gets
from one server, not one per replica. Real replicas on one PostgreSQL; the clients on other
loopback addresses (127.0.0.0/8 is all this machine's)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from central.cluster.attempts import PURGE_EVERY_S, Budget, SharedAttempts
from tests.support.postgres import Cluster
from tests.support.replicas import Replicas
from tests.support.server import CentralServer
from tests.support.wait import async_wait_for

ATTACKER = "127.0.0.7"
PER_ADDRESS = 3
TOTAL = 4


@pytest.fixture
def replicas(tmp_path: Path, pg_cluster: Cluster) -> Iterator[list[CentralServer]]:
    with Replicas(tmp_path / "data", pg_cluster.fresh_database(), count=2,
                  extra_args=("--self-register", "--register-per-address", str(PER_ADDRESS),
                              "--register-total", str(TOTAL))) as servers:
        yield servers


async def call(server: CentralServer, source: str, method: str, path: str, body: Any = None,
               token: str = "") -> tuple[int, dict[str, Any], dict[str, str]]:
    """One call from `source` on a connection of its own: (status, JSON body, headers)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    connector = aiohttp.TCPConnector(local_addr=(source, 0), ssl=server.ssl_context, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http, http.request(
            method, server.url + path, json=body, headers=headers) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


async def register(server: CentralServer, name: str, source: str = ATTACKER) -> tuple[int, dict[str, Any],
                                                                                      dict[str, str]]:
    return await call(server, source, "POST", "/api/v1/register", {"name": name})


async def test_registration_attempts_from_one_address_are_counted_over_every_replica(
        replicas: list[CentralServer]) -> None:
    r1, r2 = replicas
    # Every attempt counts, well-formed or not, whichever replica takes it.
    assert (await register(r1, "bad name"))[0] == 400
    assert (await register(r2, "alpha"))[0] == 201
    assert (await register(r1, "beta"))[0] == 201
    for server in (r2, r1):  # the budget is spent: both replicas say so
        status, body, headers = await register(server, "gamma")
        assert status == 429 and body["error"]["code"] == "rate_limited", body
        assert "at most 3 an hour (--register-per-address)" in body["error"]["message"], body
        assert 3000 < int(headers["Retry-After"]) <= 3600, headers
    # Another address still has its own attempts.
    assert (await register(r2, "delta", source="127.0.0.8"))[0] == 201
    pending = r1.query("SELECT count(*) FROM operators WHERE status = 'pending'")
    assert pending == [(3,)]


async def test_attempts_made_at_once_on_both_replicas_are_counted_one_after_the_other(
        replicas: list[CentralServer]) -> None:
    r1, r2 = replicas
    answers = await asyncio.gather(*(register(r1 if i % 2 else r2, f"racer{i}") for i in range(10)))
    assert sorted(status for status, _, _ in answers) == [201] * PER_ADDRESS + [429] * (10 - PER_ADDRESS)


async def test_accounts_created_are_counted_in_total_over_every_replica(replicas: list[CentralServer]) -> None:
    r1, r2 = replicas
    for i in range(TOTAL):
        status, body, _ = await register((r1, r2)[i % 2], f"user{i}", source=f"127.0.1.{i + 1}")
        assert status == 201, body
    for server in (r1, r2):
        status, body, headers = await register(server, "one-more", source="127.0.1.99")
        assert status == 429 and "at most 4 an hour on this server (--register-total)" in body["error"]["message"], body
        assert int(headers["Retry-After"]) > 3000, headers


async def test_anonymous_refusals_audited_per_address_are_counted_over_every_replica(
        replicas: list[CentralServer]) -> None:
    r1, r2 = replicas
    for i in range(30):  # a guessed token on a state-changing call, sprayed over both replicas
        status, body, _ = await call((r1, r2)[i % 2], ATTACKER, "POST", "/api/v1/operators",
                                     {"name": f"x{i}", "role": "admin"}, token=f"dvo_guess{i}")
        assert status == 401 and body["error"]["code"] == "bad_token", body
    rows = r1.query("SELECT count(*) FROM audit WHERE operator = 'anonymous' AND remote = ?", (ATTACKER,))
    assert rows == [(10,)]  # as from one server (each replica alone allowed 10)


async def test_a_shared_refusal_is_remembered_until_the_budget_has_room(pg_cluster: Cluster) -> None:
    """Against the database itself: what is counted, what it answers when full, and that a flood
    against a full budget asks the database once, not once per attempt."""
    url = pg_cluster.fresh_database()
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        clock = [1000.0]
        attempts = SharedAttempts(pool, url, clock=lambda: clock[0])
        budget = Budget("test", 2, 60.0)
        assert await attempts.take(budget, "a") is None
        assert await attempts.take(budget, "a") is None
        full = await attempts.take(budget, "a")
        assert full is not None and full.budget == budget and 55 < full.wait <= 60, full
        asked = attempts.asked
        for _ in range(100):
            assert (await attempts.take(budget, "a")) is not None
        assert attempts.asked == asked  # remembered: no transaction per refused attempt
        assert await attempts.take(budget, "b") is None  # another subject, its own budget
        # A budget checked beside another: counted against the first only when both have room.
        total = Budget("test-total", 1, 60.0)
        await attempts.note(total, "")
        full = await attempts.take(budget, "c", also=[(total, "")])
        assert full is not None and full.budget == total, full
        assert await pool.fetchval("SELECT count(*) FROM attempts WHERE subject = 'c'") == 0
        # Rows outside every window go, at most once an hour per replica.
        await pool.execute("INSERT INTO attempts (scope, subject, at) VALUES ('test', 'old', 1.0)")
        clock[0] += PURGE_EVERY_S
        assert await attempts.take(budget, "d") is None
        await async_wait_for(lambda: pool.fetchval("SELECT count(*) = 0 FROM attempts WHERE subject = 'old'"), 10,
                             "the old attempt to be deleted")
        assert await pool.fetchval("SELECT count(*) FROM attempts") == 5  # a, a, b, the total's note, d
    finally:
        await pool.close()


# -- connections per address ---------------------------------------------------------------------
CLIENT = "127.0.0.9"
MAX_PER_ADDRESS = 3
Held = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def limited(tmp_path: Path, pg_cluster: Cluster) -> Replicas:
    return Replicas(tmp_path / "data", pg_cluster.fresh_database(), count=2,
                    extra_args=("--max-connections-per-address", str(MAX_PER_ADDRESS)))


async def ask_health(server: CentralServer, source: str = CLIENT) -> tuple[int, str, Held]:
    """A connection from `source` that asks for /api/v1/health and stays open (kept alive, and so
    counted, when admitted): (status, the refusal's message or "", the connection)."""
    port = int(server.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", port, ssl=server.ssl_context, local_addr=(source, 0)), 10)
    writer.write(b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    body = json.loads(await asyncio.wait_for(reader.readexactly(length), 10))
    status = int(head.split()[1])
    return status, body["error"]["message"] if status != 200 else "", (reader, writer)


async def hold(server: CentralServer, count: int) -> list[Held]:
    held = []
    for _ in range(count):
        status, why, conn = await ask_health(server)
        assert status == 200, why
        held.append(conn)
    return held


async def refused_with(server: CentralServer, expected: str, timeout: float = 20) -> str:
    """Until a new connection from CLIENT to `server` is refused (each one admitted meanwhile is
    closed again at once); the refusal's message, which must hold `expected`."""
    async def refused() -> str:
        status, why, (_, writer) = await ask_health(server)
        writer.close()
        return why if status == 503 else ""

    why = await async_wait_for(refused, timeout, f"{server.name} to refuse a connection from {CLIENT}", interval=0.2)
    assert expected in why, why
    return str(why)


async def admitted(server: CentralServer, timeout: float = 20) -> Held:
    """Until a new connection from CLIENT to `server` is admitted; that connection (kept open)."""
    async def admit() -> Held | None:
        status, _, conn = await ask_health(server)
        if status == 200:
            return conn
        conn[1].close()
        return None

    conn: Held = await async_wait_for(admit, timeout, f"{server.name} to admit a connection from {CLIENT}",
                                      interval=0.2)
    return conn


def close_all(conns: list[Held]) -> None:
    for _, writer in conns:
        writer.close()


async def test_connections_from_one_address_are_counted_over_every_replica(
        tmp_path: Path, pg_cluster: Cluster) -> None:
    with limited(tmp_path, pg_cluster) as (r1, r2):
        on_r1 = await hold(r1, MAX_PER_ADDRESS)
        try:
            # r2 hears of them: the address has its connections already.
            await refused_with(r2, f"{MAX_PER_ADDRESS} connections are already open from this address"
                                   f" (--max-connections-per-address): {MAX_PER_ADDRESS} of them on other replicas")
            status, why, conn = await ask_health(r1)  # and r1 counts its own as before
            conn[1].close()
            assert status == 503 and "other replicas" not in why, why
            # Another address is not concerned; nodes are not counted.
            status, _, conn = await ask_health(r2, source="127.0.0.10")
            conn[1].close()
            assert status == 200
            # One closed on r1: r2 hears of it and admits one.
            on_r1.pop()[1].close()
            on_r2 = [await admitted(r2)]
            await refused_with(r1, "1 of them on other replicas")
            close_all(on_r2)
        finally:
            close_all(on_r1)


async def test_a_replica_gone_holds_no_connections_and_one_starting_late_learns_the_others(
        tmp_path: Path, pg_cluster: Cluster) -> None:
    replicas = limited(tmp_path, pg_cluster)
    r1, r2 = replicas.servers
    try:
        r1.start()
        on_r1 = await hold(r1, MAX_PER_ADDRESS)
        # r2 starts after the connections were counted: it asks r1 for all its counts.
        r2.start()
        await refused_with(r2, f"{MAX_PER_ADDRESS} of them on other replicas")
        assert "read replica r1's connection counts again: 1 address(es) hold some" in r2.log()
        # r1 killed: its counts go with it (its clients reconnect elsewhere and are counted there).
        r1.kill()
        close_all(on_r1)
        close_all([await admitted(r2, timeout=30) for _ in range(MAX_PER_ADDRESS)])
    finally:
        replicas.stop()
