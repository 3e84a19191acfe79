"""Presence and the live stream shared between replicas (issue 18, central/cluster/presence.py and
fanout.py): two real servers on one PostgreSQL, real node connections to a chosen one, an
operator's stream on the other."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from central import db
from central.cluster.fanout import SharedBus
from central.cluster.presence import Presence
from central.cluster.replica import open_cluster
from central.dbconn import target
from central.queries import Queries
from central.registry import Registry
from central.writer import Writer
from dvic_core.constants import CLOSE_REPLACED
from tests.support import postgres
from tests.support.fake_node import FakeNode
from tests.support.nodes import connected, metrics
from tests.support.replicas import StreamClient, job_leader, known_on, toward
from tests.support.server import CentralServer
from tests.support.wait import WaitTimeout, async_wait_for


def enrolled_on_both(r1: CentralServer, r2: CentralServer, name: str) -> dict[str, Any]:
    """A node enrolled through r1 that r2 knows too (told on the bus): its bundle, pointed at r1."""
    bundle = r1.enroll(name, kind="raspberry", group="hall-a")
    known_on(r2, bundle["node_id"])
    return bundle


def shown(server: CentralServer, node: str) -> dict[str, Any]:
    return server.node(node)


async def test_a_node_on_r1_is_listed_online_with_its_metrics_and_facts_on_r2(two_replicas: list[CentralServer]) -> None:
    r1, r2 = two_replicas
    bundle = enrolled_on_both(r1, r2, "pi-r1")
    node_id = bundle["node_id"]
    async with StreamClient(r2) as stream:
        async with connected(bundle) as node:
            await async_wait_for(lambda: shown(r2, node_id)["state"] == "online" and shown(r2, node_id)["connected"],
                                 20, "r2 to list r1's node online and connected")
            await node.send(metrics(cpu=77.0))
            await async_wait_for(lambda: shown(r2, node_id)["metrics"].get("cpu") == 77.0, 20,
                                 "r2 to show the node's latest metrics")
            detail = shown(r2, node_id)
            assert detail["facts"]["kernel"] == "6.1.0" and detail["daemon_version"] == "test-0"
            await async_wait_for(lambda: (stream.latest(node_id) or {}).get("metrics", {}).get("cpu") == 77.0, 20,
                                 "r2's stream to carry the node's latest metrics")
        # The session ends on r1: r1 turns the node offline, r2 shows it.
        await async_wait_for(lambda: shown(r2, node_id)["state"] == "offline", 20, "r2 to show the node offline")
        assert not shown(r2, node_id)["connected"]
        await async_wait_for(lambda: ("online", "offline") in [(e["data"]["from"], e["data"]["to"])
                                                               for e in stream.events(node_id, "state")],
                             20, "the offline event on r2's stream")
    # One replica recorded each transition: no duplicate events in the table.
    rows = r1.query("SELECT message FROM events WHERE node_id = ? AND kind = 'state'", (node_id,))
    assert len(rows) == len({r[0] for r in rows}) == 2, rows


async def test_an_event_on_r1s_node_reaches_a_stream_client_on_r2(two_replicas: list[CentralServer]) -> None:
    r1, r2 = two_replicas
    bundle = enrolled_on_both(r1, r2, "pi-event")
    async with StreamClient(r2) as stream, connected(bundle) as node:
        await node.send({"type": "event", "kind": "door_opened", "message": "the hall door opened", "data": {"door": 2}})
        found = await async_wait_for(lambda: stream.events(bundle["node_id"], "door_opened"), 20,
                                     "r1's node event on r2's stream")
    assert found[0]["message"] == "the hall door opened" and found[0]["data"] == {"door": 2}
    assert found[0]["node_name"] == "pi-event"


async def test_a_follow_on_r2_gets_r1s_lines_live_in_order_once(two_replicas: list[CentralServer]) -> None:
    r1, r2 = two_replicas
    bundle = enrolled_on_both(r1, r2, "pi-tail")
    node_id = bundle["node_id"]
    async with StreamClient(r2, logs=[node_id]) as stream, connected(bundle) as node:
        # r1 hears of r2's interest on the bus: a probe line until one shows (then every line flows).
        async def probe_shown() -> bool:
            await node.send({"type": "logs", "lines": [node.line("probe")]})
            return bool(stream.log_seqs(node_id))

        await async_wait_for(probe_shown, 20, "r2's interest to reach r1", interval=0.2)
        first = node.seq + 1
        for start in range(0, 300, 30):
            batch = [node.line(f"line {start + i}") for i in range(30)]
            await node.send({"type": "logs", "lines": batch})
            await node.send({"type": "logs", "lines": batch[:10]})  # a resend: stored and shown once
        await async_wait_for(lambda: stream.log_seqs(node_id)[-1:] == [node.seq], 30, "every line on r2")
    seqs = stream.log_seqs(node_id)
    assert seqs == sorted(set(seqs)), "in order, once"
    assert seqs[-300:] == list(range(first, first + 300))
    assert r2.query("SELECT count(*), count(DISTINCT seq) FROM logs WHERE node_id = ?", (node_id,))[0] == (
        node.seq, node.seq)


@pytest.mark.parametrize("holder", ["r1", "r2"])
async def test_a_line_accepted_just_before_a_subscription_is_in_the_history_read_once_subscribed(
        two_replicas: list[CentralServer], holder: str) -> None:
    """A client told `subscribed` reads history, then follows live (`dvic logs --follow`): a line the
    node's replica accepted just before the client's wish applied there is not sent live, so it must
    be in that history, even while that replica's commit is slow (here a lock holds its insert of
    lines back). The node on r1 (another replica than the client's) or on r2 (the client's own, as
    on one server)."""
    r1, r2 = two_replicas
    bundle = toward(enrolled_on_both(r1, r2, "pi-edge"), r1 if holder == "r1" else r2)
    node_id = bundle["node_id"]
    url = r1.database or ""
    blocker, watcher = await asyncpg.connect(url), await asyncpg.connect(url)
    try:
        async with connected(bundle) as node, StreamClient(r2) as stream:
            await node.send_logs([node.line("stored before")])  # (the ack comes after its commit)
            locked = blocker.transaction()
            await locked.start()
            await blocker.execute("LOCK TABLE logs IN EXCLUSIVE MODE")
            await node.send({"type": "logs", "lines": [node.line("just before")]})
            await async_wait_for(lambda: watcher.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"),
                20, "r1's commit of the line to wait for the lock")

            async def history_once_subscribed() -> list[str]:
                await async_wait_for(lambda: stream.of_type("subscribed"), 20, "subscribed")
                status, body = await asyncio.to_thread(r2.api, "GET", f"/api/v1/logs?node={node_id}&limit=50")
                assert status == 200, body
                return [line["msg"] for line in body["lines"]]

            await stream.subscribe([node_id])
            reading = asyncio.create_task(history_once_subscribed())
            # r1's commit stays held back a second (the scenario: a slow commit), then goes.
            with contextlib.suppress(WaitTimeout):
                await async_wait_for(reading.done, 1.0, "the client to read history")
            await locked.commit()
            history = await reading

            def live() -> list[str]:
                return [line["msg"] for f in stream.of_type("logs") for line in f["lines"] if line["node"] == node_id]

            with contextlib.suppress(WaitTimeout):
                await async_wait_for(lambda: "just before" in history + live(), 10, "the line, stored or live")
            assert "just before" in history + live(), (history, live())
    finally:
        await blocker.close()
        await watcher.close()


async def test_racing_sessions_one_wins_the_other_is_closed_and_no_line_is_doubled(
        two_replicas: list[CentralServer]) -> None:
    r1, r2 = two_replicas
    bundle = enrolled_on_both(r1, r2, "pi-race")
    node_id = bundle["node_id"]
    async with StreamClient(r1, logs=[node_id]) as on_r1, StreamClient(r2, logs=[node_id]) as on_r2:
        async with connected(bundle) as old:
            sent = [old.line(f"old {i}") for i in range(1, 6)]
            await old.send({"type": "logs", "lines": sent})
            await async_wait_for(lambda: on_r1.log_seqs(node_id)[-1:] == [5], 20, "the old session's lines")
            # The node reconnects to r2 while its session on r1 is still open (a balancer's choice).
            async with FakeNode(toward(bundle, r2)) as new:
                await new.connect()
                welcome = await new.hello()
                new.keep_reading()
                assert await old.closed(20) == CLOSE_REPLACED
                new.seq = int(welcome["last_seq"])
                # A daemon resends what was not acked (3-5, as they were), then goes on.
                await new.send({"type": "logs", "lines": sent[2:] + [new.line(f"new {s}", seq=s) for s in range(6, 11)]})
                await async_wait_for(lambda: on_r1.log_seqs(node_id)[-1:] == [10], 20, "the new lines on r1")
                await async_wait_for(lambda: on_r2.log_seqs(node_id)[-1:] == [10], 20, "the new lines on r2")
                await async_wait_for(lambda: shown(r1, node_id)["connected"], 20, "r1 to show the node connected")
                assert shown(r1, node_id)["state"] == shown(r2, node_id)["state"] == "online"
                # The replaced session turned nothing offline: the node was online elsewhere.
                for stream in (on_r1, on_r2):
                    assert not [e for e in stream.events(node_id, "state") if e["data"]["to"] == "offline"]
                    seqs = stream.log_seqs(node_id)
                    assert seqs == sorted(set(seqs)) and seqs[-1] == 10, seqs
    assert "a newer session (2) on replica r2: closing this one (1)" in r1.log()
    assert r1.query("SELECT count(*), count(DISTINCT seq) FROM logs WHERE node_id = ?", (node_id,))[0] == (10, 10)
    await async_wait_for(lambda: r1.query("SELECT epoch, replica FROM node_sessions WHERE node_id = ?",
                                          (node_id,)) == [(2, "")], 20, "the winning session to end")
    await async_wait_for(lambda: r1.query("SELECT count(*) FROM events WHERE node_id = ? AND message LIKE"
                                          " '%-> offline%'", (node_id,)) == [(1,)], 20,
                         "one offline event: when the winning session ended")


async def test_a_hello_takes_the_next_session_epoch_on_sqlite_too(tmp_path: Path) -> None:
    with CentralServer(tmp_path / "data", database="") as server:
        bundle = server.enroll("pi-epochs")
        for _ in range(2):
            async with connected(bundle):
                pass
        assert server.query("SELECT epoch FROM node_sessions WHERE node_id = ?", (bundle["node_id"],)) == [(2,)]


async def test_after_a_gap_on_the_bus_a_replica_reads_presence_again_from_the_tables(
        two_replicas: list[CentralServer]) -> None:
    r1, r2 = two_replicas
    bundle = enrolled_on_both(r1, r2, "pi-gap")
    node_id, database = bundle["node_id"], r2.database or ""
    async with connected(bundle):
        await async_wait_for(lambda: shown(r2, node_id)["state"] == "online", 20, "r2 to show the node online")
        # Something only the tables know (no replica announced it), then r2's listening session is
        # lost: when it listens again, it reads the tables again.
        postgres.query(database, "UPDATE nodes SET maintenance = 1 WHERE id = ?", (node_id,))
        assert postgres.query(database, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                        " WHERE application_name = 'dvic-central bus r2'") == [(True,)]
        await async_wait_for(lambda: shown(r2, node_id)["state"] == "maintenance", 20,
                             "r2 to read the node's state again after the gap")
        assert shown(r2, node_id)["connected"]
    assert "gap (the listening session was opened again)" in r2.log()


async def test_lines_travel_between_replicas_only_while_a_stream_client_wants_them(
        two_replicas: list[CentralServer]) -> None:
    # The node on the replica leading the alerts (the other one then wants every node's lines for
    # the stock log_errors rule), the stream clients on the other.
    leading = await async_wait_for(lambda: job_leader(two_replicas[0], "features"), 30, "the alerts' leader")
    holder, viewer = sorted(two_replicas, key=lambda s: s.name != leading)
    bundle = toward(enrolled_on_both(viewer, holder, "pi-quiet"), holder)
    node_id = bundle["node_id"]
    carried: list[str] = []
    beats: list[float] = []

    def heard(_conn: object, _pid: int, channel: str, payload: str) -> None:
        if channel == "dvic_logs":
            carried.append(payload)
        elif f'"from":"{holder.name}"' in payload and '"beat"' in payload:
            beats.append(time.time())

    listener = await asyncpg.connect(holder.database or "")
    try:
        await listener.add_listener("dvic_logs", heard)
        await listener.add_listener("dvic_events", heard)
        async with StreamClient(viewer), connected(bundle) as node:  # the viewer's client wants no lines
            await node.send_logs([node.line(f"unwanted {i}") for i in range(20)])
            acked = time.time()
            # The holder flushes what it has every 30 ms and beats every second: a beat sent after
            # the ack comes after any lines it would have sent.
            await async_wait_for(lambda: [b for b in beats if b > acked + 0.1], 20, "a heartbeat of the holder")
            assert carried == []
            async with StreamClient(viewer, logs=[node_id]) as stream:
                async def shown_on_viewer() -> bool:
                    await node.send({"type": "logs", "lines": [node.line("wanted")]})
                    return bool(stream.log_seqs(node_id))

                await async_wait_for(shown_on_viewer, 20, "lines to travel once wanted", interval=0.2)
            assert carried and all('"unwanted' not in payload for payload in carried)
    finally:
        await listener.close()


async def test_a_new_connection_that_leaves_before_its_hello_leaves_the_node_offline_as_on_one_server(
        two_replicas: list[CentralServer]) -> None:
    r1, r2 = two_replicas
    bundle = enrolled_on_both(r1, r2, "pi-twice")
    node_id = bundle["node_id"]
    async with connected(bundle) as first:
        await async_wait_for(lambda: shown(r2, node_id)["connected"], 20, "r2 to show the node connected")
        async with FakeNode(bundle) as second:
            await second.connect()  # on the same replica: the first is replaced, then this one leaves
            assert await first.closed(20) == CLOSE_REPLACED
    await async_wait_for(lambda: [shown(s, node_id)["state"] for s in (r1, r2)] == ["offline", "offline"], 20,
                         "both replicas to show the node offline")
    assert not shown(r1, node_id)["connected"] and not shown(r2, node_id)["connected"]


async def test_one_server_on_sqlite_queues_nothing_for_replicas_it_does_not_have(tmp_path: Path) -> None:
    """On SQLite there is no other replica and the outbox never sends: what the fan-out publishes
    must not pile up in it (every event and alert frame of a server's life did)."""
    where = target(tmp_path / db.DB_FILE)
    await db.prepare(where)
    writer = Writer(where)
    await writer.start()
    read_db = await db.open_reads(where)
    try:
        bus = SharedBus()
        presence = Presence(open_cluster("solo", None), Registry(writer, bus, 15.0, 5.0), bus, writer,
                            Queries(read_db))
        client = bus.subscribe()
        for i in range(50):
            bus.publish({"type": "event", "event": {"node": None, "kind": "retention", "message": f"m{i}"}})
            bus.publish({"type": "node", "node": {"id": f"n{i}"}})
        assert client.queue.qsize() == 100  # the one server's own clients get every frame
        assert presence.outbox.waiting == 0
    finally:
        await read_db.close()
        await writer.close()
