"""The bus between replicas (central/cluster/pgbus.py) on a real PostgreSQL: messages of any size
whole and in order, request-reply, and gaps told when the listening session is lost."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from central.cluster.pgbus import CHUNK_BYTES, BusError, NoReply, PgBus, chunks
from tests.support.postgres import Cluster
from tests.support.wait import async_wait_for


@pytest.fixture
def url(pg_cluster: Cluster) -> str:
    return pg_cluster.create_database()


@pytest.fixture
async def pair(url: str) -> AsyncIterator[tuple[PgBus, PgBus]]:
    a, b = PgBus(url, "a", reconnect_s=0.1), PgBus(url, "b", reconnect_s=0.1)
    yield a, b
    await a.close()
    await b.close()


@pytest.mark.parametrize("text", ["", "x", "é" * 5000, "a" * (CHUNK_BYTES - 1) + "€" + "b" * 20, "🙂" * 7000])
def test_chunks_stay_under_the_limit_never_cut_a_character_and_join_back(text: str) -> None:
    parts = chunks(text)
    assert "".join(parts) == text
    assert all(len(p.encode()) <= CHUNK_BYTES for p in parts)


async def test_messages_of_every_size_arrive_whole_and_in_order(pair: tuple[PgBus, PgBus]) -> None:
    a, b = pair
    got: list[dict[str, Any]] = []
    b.subscribe("dvic_logs", got.append)
    await a.start()
    await b.start()
    sent = [{"n": i, "lines": ["é" * (i * 977) + "\x00 end"]} for i in range(40)]  # up to ~76 KB each
    for message in sent:
        await a.publish("dvic_logs", message)
    await async_wait_for(lambda: len(got) == len(sent), 15, "every message")
    assert got == sent and b.gaps == 0


async def test_a_request_gets_its_reply_and_an_absent_replica_is_no_reply(pair: tuple[PgBus, PgBus]) -> None:
    a, b = pair

    async def where(body: dict[str, Any]) -> dict[str, Any]:
        return {"node": body["node"], "here": True, "replica": "b"}

    b.responder("where", where)
    await a.start()
    await b.start()
    assert await a.request("b", "where", {"node": "pc-1"}) == {"node": "pc-1", "here": True, "replica": "b"}
    assert await a.request("b", "unknown", {}) == {"error": "replica 'b' answers no 'unknown'"}
    with pytest.raises(NoReply, match="replica 'gone' did not answer within 0.3 s"):
        await a.request("gone", "where", {"node": "pc-1"}, timeout=0.3)


async def test_a_lost_listening_session_is_a_gap_and_messages_flow_again(url: str, pair: tuple[PgBus, PgBus]) -> None:
    a, b = pair
    got: list[dict[str, Any]] = []
    gaps: list[int] = []
    b.subscribe("dvic_events", got.append)
    b.on_gap(lambda: gaps.append(1))
    await a.start()
    await b.start()
    await a.publish("dvic_events", {"n": 1})
    await async_wait_for(lambda: got == [{"n": 1}], 10, "the first message")
    conn = await asyncpg.connect(url)
    try:
        ended = await conn.fetchval("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                                    " WHERE application_name = 'dvic-central bus b'")
    finally:
        await conn.close()
    assert ended == 1
    await async_wait_for(lambda: gaps == [1], 10, "the gap to be told")

    async def delivered() -> bool:
        await a.publish("dvic_events", {"n": 2})
        return {"n": 2} in got

    await async_wait_for(delivered, 10, "messages after the reconnect")
    assert b.gaps == 1 and got[0] == {"n": 1}


async def test_a_skipped_number_is_a_gap(pair: tuple[PgBus, PgBus], url: str) -> None:
    a, b = pair
    got: list[dict[str, Any]] = []
    b.subscribe("dvic_events", got.append)
    await a.start()
    await b.start()
    await a.publish("dvic_events", {"n": 1})
    await async_wait_for(lambda: len(got) == 1, 10, "the first message")
    conn = await asyncpg.connect(url)  # a's message 1 lost on the way: its number 2 comes next
    try:
        await conn.execute("SELECT pg_notify('dvic_events', $1)", f"{a.sender} 2 0 1|{{\"n\": 3}}")
    finally:
        await conn.close()
    await async_wait_for(lambda: len(got) == 2, 10, "the message after the gap")
    assert b.gaps == 1 and got[1] == {"n": 3}


async def test_publishing_without_the_database_is_a_clear_error(pg_cluster: Cluster) -> None:
    bus = PgBus(pg_cluster.url("no_such_db").replace("dvic@", "dvic:secret@"), "a")
    with pytest.raises(BusError, match=r"the bus \(postgresql://dvic:\*\*\*@127\.0\.0\.1:\d+/no_such_db\) could not"
                                        r" send on dvic_events"):
        await bus.publish("dvic_events", {"n": 1})
    await bus.close()
