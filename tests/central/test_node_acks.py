"""Acks of a node's log batches, with the writer held at chosen points: cumulative and in commit
order, never after a batch that was not stored, and a node past MAX_BATCHES_IN_FLIGHT not read
until a commit makes room.

The app runs in the test's process (tests/central/inproc.py: real SQLite, a real websocket on
127.0.0.1; plain HTTP, so the node's websocket is aiohttp's, the path NodeSession keeps besides
its own node links), so a test can hold the real writer inside a commit: a write it submits waits
on a threading.Event in the writer's thread. The node-link path is covered against a server
subprocess (tests/central/test_node_ws.py, including a refused batch there).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest_asyncio

from central.dbconn import WriteConn
from central.nodehub import MAX_BATCHES_IN_FLIGHT
from tests.support.wait import async_wait_for

from .inproc import InProcess, in_process

REFUSED = "refused by the trigger of this test"


@pytest_asyncio.fixture
async def app(tmp_path: Path) -> AsyncIterator[InProcess]:
    async for running in in_process(tmp_path / "central"):
        yield running


class Gate:
    """A write that holds the writer's thread inside a commit until opened (then runs `then`)."""

    def __init__(self, app: InProcess, then: str | None = None) -> None:
        self.entered, self.opened = threading.Event(), threading.Event()
        self.then = then

        def hold(conn: WriteConn) -> None:
            self.entered.set()
            self.opened.wait(30)
            if self.then:
                conn.execute(self.then)

        self.write = asyncio.ensure_future(app.services.writer.submit(hold))

    async def held(self) -> None:
        await async_wait_for(self.entered.is_set, what="the writer inside the gate's commit")

    async def open(self) -> None:
        self.opened.set()
        await self.write


@contextmanager
def opened_at_exit(*gates: Gate) -> Iterator[None]:
    try:
        yield
    finally:  # a failing test must not leave the writer's thread waiting
        for gate in gates:
            gate.opened.set()


@asynccontextmanager
async def greeted_node(app: InProcess) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    bundle = await app.enroll("acks")
    async with app.client.ws_connect("/api/v1/node/ws", headers={"Authorization": f"Bearer {bundle['token']}"},
                                     autoping=True, heartbeat=None) as ws:
        await ws.send_json({"type": "hello", "protocol": 1, "daemon_version": "test-0", "facts": {}})
        assert (await receive(ws))["type"] == "welcome"
        yield ws


async def receive(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    msg = await ws.receive(timeout=10)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    decoded: dict[str, Any] = json.loads(msg.data)
    return decoded


def batch(first: int, count: int = 1, msg: str = "line") -> dict[str, Any]:
    return {"type": "logs", "lines": [{"seq": seq, "ts": 1.0 * seq, "source": "demo", "unit": "", "demo": "d",
                                       "level": "INFO", "msg": msg} for seq in range(first, first + count)]}


def pending_rows(app: InProcess) -> int:
    return app.services.writer.queued[1]


async def turns(n: int) -> None:
    """Let the loop go round `n` times: the server, in this process, reads and handles what arrived."""
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_node_past_the_batches_in_flight_waits_for_a_commit_and_acks_come_cumulative_in_order(
        app: InProcess) -> None:
    extra = 6
    async with greeted_node(app) as ws:
        gate = Gate(app)
        with opened_at_exit(gate):
            await gate.held()
            for seq in range(1, MAX_BATCHES_IN_FLIGHT + extra + 1):  # one line a batch
                await ws.send_json(batch(seq))
            await async_wait_for(lambda: pending_rows(app) >= MAX_BATCHES_IN_FLIGHT, what="the batches queued")
            await turns(50)  # everything sent is in the server's hands by now: it reads no further
            assert pending_rows(app) == MAX_BATCHES_IN_FLIGHT
            await gate.open()
        acks = [(await receive(ws))["seq"]]
        while acks[-1] < MAX_BATCHES_IN_FLIGHT + extra:
            acks.append((await receive(ws))["seq"])
        # The first commit after the gate held exactly the batches in flight: one ack for them all.
        assert acks[0] == MAX_BATCHES_IN_FLIGHT
        assert acks == sorted(set(acks))
    status, body = await app.call("GET", "/api/v1/logs?node=acks-1&limit=1000")
    assert status == 200 and sorted(line["seq"] for line in body["lines"]) == list(range(1, 71))


async def test_a_resent_batch_of_acked_lines_gets_its_own_ack(app: InProcess) -> None:
    """A daemon that missed an ack sends the batch again and waits for an answer to it: it comes,
    although lower than the ack before it."""
    async with greeted_node(app) as ws:
        await ws.send_json(batch(1, 3))
        assert await receive(ws) == {"type": "ack", "seq": 3}
        await ws.send_json(batch(4, 2))
        assert await receive(ws) == {"type": "ack", "seq": 5}
        await ws.send_json(batch(1, 3))
        assert await receive(ws) == {"type": "ack", "seq": 3}


async def test_no_ack_after_a_batch_that_was_not_stored_even_for_lines_a_later_commit_stored(app: InProcess) -> None:
    """A batch the database refuses (a trigger here): the node is closed without an ack for it, and
    lines of a later batch that a later commit stores are not acked either (an ack is cumulative:
    it would cover the refused lines)."""
    writer = app.services.writer
    await writer.submit(lambda conn: conn.execute(
        "CREATE TEMP TRIGGER refuse BEFORE INSERT ON logs WHEN NEW.msg = 'refuse me' "
        f"BEGIN SELECT RAISE(ABORT, '{REFUSED}'); END"))
    async with greeted_node(app) as ws:
        await ws.send_json(batch(1, 3))
        assert await receive(ws) == {"type": "ack", "seq": 3}
        first = Gate(app)
        with opened_at_exit(first):
            await first.held()
            await ws.send_json(batch(4, 2, msg="refuse me"))  # the next commit refuses it ...
            await async_wait_for(lambda: pending_rows(app) == 2, what="the refused batch queued")
            second = Gate(app)  # ... and waits here, after the log batches, before it is over
            with opened_at_exit(second):
                await first.open()
                await second.held()
                await ws.send_json(batch(6, 1))  # read before the refusal is known: a commit of its own
                await async_wait_for(lambda: pending_rows(app) == 1, what="the later batch queued")
                await second.open()
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.CLOSE, msg  # no ack before the close
        assert (msg.data, msg.extra) == (1011, "log batch not stored")
    await writer.submit(lambda conn: None)  # commits after the later batch's
    status, body = await app.call("GET", "/api/v1/logs?node=acks-1&limit=1000")
    assert status == 200 and sorted(line["seq"] for line in body["lines"]) == [1, 2, 3, 6]  # 6: stored, not acked
